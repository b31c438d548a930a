from whisperlite.cli import main

main()
