from rik.riklet.main import main

main()
