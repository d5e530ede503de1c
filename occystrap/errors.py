"""Errors a user can act on: the CLI prints their message on one line and exits non-zero."""


class OccystrapError(Exception):
    """A failure the user can fix; its message says what is wrong and what to do."""


class UsageError(OccystrapError):
    """Bad input on the command line: a malformed URI, an unknown option value."""


class RegistryError(OccystrapError):
    """A registry answered with an error we cannot recover from.

    Library callers can tell failures apart without parsing the message: `status` is the
    HTTP status (None when no answer was involved), `codes` the OCI error codes the body
    named (e.g. MANIFEST_UNKNOWN), `advice` what the user can do.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: tuple[str, ...] = (),
        advice: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.codes, self.advice = status, codes, advice


class DigestMismatchError(OccystrapError):
    """Bytes received do not hash to the digest that names them."""


class QuayAuthError(OccystrapError):
    """The Quay API refused our token (or we had none)."""
