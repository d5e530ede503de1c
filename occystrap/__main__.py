from occystrap.cli import main

main()
