"""Keys of per-request options carried in `request.extensions` / `response.extensions`.

Callers set the request keys; middlewares read them. Nothing is global.
"""

# Request: the body may be sent again (bytes, or a stream that re-opens its source).
REPLAYABLE = "occystrap.replayable"
# Request: a POST/PATCH that is safe to send twice.
RETRY_UNSAFE = "occystrap.retry_unsafe"
# Request: never retry this one (the caller handles failure itself).
NO_RETRY = "occystrap.no_retry"
# Request: extra registry token scopes, e.g. ["repository:other/repo:pull"] for a mount.
SCOPE = "occystrap.scope"
# Request: read the whole body (at most this many bytes) inside Retry's loop, so a body cut or
# stalled mid-read is retried like a failed connection. Larger bodies are refused.
BUFFER = "occystrap.buffer"
# Request: mirror base URLs not to use for this read (they served bytes failing the digest).
SKIP_MIRRORS = "occystrap.skip_mirrors"
# Request, set by a credential plug-in (`ProvidedCredentials`): a `HostCredential`, used by
# RegistryAuth ahead of the auth files, for requests to that very host only.
PROVIDED_CREDENTIAL = "occystrap.provided_credential"
# Request, set by a credential plug-in probing a registry: RegistryAuth neither authenticates
# it nor answers its challenge, so the plug-in sees the registry's 401 as it was sent.
NO_AUTH = "occystrap.no_auth"
# Request, set by Retry: 1-based number of this network attempt.
ATTEMPT = "occystrap.attempt"
# Request, set by Mirror: the mirror base URL serving this attempt.
MIRROR = "occystrap.mirror"
# Response, set by Retry: how many attempts the response took.
ATTEMPTS = "occystrap.attempts"
# Response, set by Mirror: the mirror base URL that served it (absent for the origin).
SERVED_BY = "occystrap.served_by"
