import sys

from whisperlite.trainer.cli import main

sys.exit(main())
