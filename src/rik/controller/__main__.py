from rik.controller.main import main

main()
