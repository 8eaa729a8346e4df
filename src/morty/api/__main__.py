from morty.api.main import main

main()
