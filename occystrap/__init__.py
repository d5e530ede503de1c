"""occystrap: move container images between registries, tarballs and directories."""

__version__ = "0.1.0"
