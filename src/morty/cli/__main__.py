from morty.cli.main import main

main()
