"""`python -m occystrap` and the `occystrap` script: the command line (importing this module
runs nothing).

`occystrap --version` alone is answered here, before click and the command line load: scripts
call it to check what is installed, and it then costs little more than the interpreter.
"""

import sys

from occystrap import __version__

# What the command line's --version prints (click's version_option; test_startup compares).
VERSION_LINE = f"occystrap, version {__version__}"


def main() -> None:
    """The program: the command line, named as users type it."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(VERSION_LINE + "\n")
        return
    from occystrap.cli import main as command_line

    # The name users type, so `python -m occystrap` answers _OCCYSTRAP_COMPLETE like the script.
    command_line(prog_name="occystrap")


if __name__ == "__main__":
    main()
