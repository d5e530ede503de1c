"""Content digests (`algorithm:hex`): the one place blobs, manifests and configs are hashed."""

from __future__ import annotations

import hashlib
from typing import Any

from occystrap.errors import DigestMismatchError, OccystrapError


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def new_hasher(digest: str) -> Any:
    """A hashlib object for the algorithm `digest` names (sha256 or sha512)."""
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise OccystrapError(f"unsupported digest algorithm in {digest!r}: only sha256 and sha512")
    return hashlib.new(algorithm)


def hash_of(hasher: Any) -> str:
    """`algorithm:hex`, the form digests take in manifests."""
    return f"{hasher.name}:{hasher.hexdigest()}"


def check_digest(data: bytes, digest: str, what: str) -> None:
    """Verify bytes held in memory (a manifest, a config) against the digest naming them."""
    hasher = new_hasher(digest)
    hasher.update(data)
    if (actual := hash_of(hasher)) != digest:
        raise DigestMismatchError(f"{what}: content hashes to {actual}, expected {digest}")
