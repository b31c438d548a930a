from whisperlite.shell.cli import main

main()
