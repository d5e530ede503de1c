"""Names of the environment variables that point at configuration files.

Kept apart from the modules that read those files so the CLI can name them in its options
without importing the parsers at start-up.
"""

CONFIG_ENV = "OCCYSTRAP_CONFIG"
REGISTRIES_CONF_ENV = "CONTAINERS_REGISTRIES_CONF"
