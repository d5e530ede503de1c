"""The network settings' defaults, in a module that imports nothing: the command line shows
them in --help, and `occystrap --version` or a file-to-file copy must not load httpx for it."""

DEFAULT_CONNECT_TIMEOUT = 10.0
# The longest silence tolerated while waiting for or reading an answer, or sending a body.
DEFAULT_READ_TIMEOUT = 30.0
# The most time one request may take, its retries included.
DEFAULT_DEADLINE = 300.0
DEFAULT_QUAY_API = "https://quay.io/api/v1"
