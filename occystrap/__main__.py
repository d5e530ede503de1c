"""`python -m occystrap` and the `occystrap` script: the command line (importing this module
runs nothing).

`occystrap --version` alone is answered here, before click and the command line load: scripts
call it to check what is installed, and it then costs little more than the interpreter.
"""

import gc
import sys

from occystrap import __version__

# What the command line's --version prints (click's version_option; test_startup compares).
VERSION_LINE = f"occystrap, version {__version__}"


def main() -> None:
    """The program: the command line, named as users type it."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(VERSION_LINE + "\n")
        return
    # Start-up makes modules, classes and functions that live as long as the process: the
    # collector's passes over them find nothing (about 9 ms of CPU in `digest`). cli.py
    # freezes them and turns the collector back on before the command runs.
    gc.disable()
    from occystrap.cli import main as command_line

    try:
        # The name users type, so `python -m occystrap` answers _OCCYSTRAP_COMPLETE like the
        # script.
        command_line(prog_name="occystrap")
    finally:
        # The process ends here. The collector's passes at interpreter exit would walk every
        # object the run made, modules and all (about 20 ms of CPU: a sixth of `digest`); frozen,
        # they are left to the exit, as objects still alive then always may be. Commands close
        # their files, caches and connections themselves, not through finalizers.
        gc.freeze()


if __name__ == "__main__":
    main()
