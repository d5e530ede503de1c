"""The network settings' defaults, in a module that imports nothing: the command line shows
them in --help, and `occystrap --version` or a file-to-file copy must not load httpx for it."""

DEFAULT_CONNECT_TIMEOUT = 10.0
# The longest silence tolerated while waiting for or reading an answer, or sending a body.
DEFAULT_READ_TIMEOUT = 30.0
# The most time one request may take, its retries included.
DEFAULT_DEADLINE = 300.0
DEFAULT_QUAY_API = "https://quay.io/api/v1"

# httpcore imports its HTTP/2 connection (h2 and hpack, about a tenth of the HTTP stack's
# import time) with itself, though HTTP/2 is only ever negotiated on a TLS connection (ALPN).
# The occystrap program keeps this module out until a request goes out over TLS with HTTP/2
# on (middleware/transport.py); its async twin the program never uses at all.
DEFERRED_HTTP2_MODULE = "httpcore._sync.http2"
UNUSED_HTTP2_MODULE = "httpcore._async.http2"
