"""`python -m occystrap`: the command line (importing this module runs nothing)."""

from occystrap.cli import main

if __name__ == "__main__":
    # The name users type, so `python -m occystrap` answers _OCCYSTRAP_COMPLETE like the script.
    main(prog_name="occystrap")
