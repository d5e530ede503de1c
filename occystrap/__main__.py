from occystrap.cli import main

# The name users type, so `python -m occystrap` answers _OCCYSTRAP_COMPLETE like the script.
main(prog_name="occystrap")
