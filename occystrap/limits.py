"""How much of a small document occystrap reads into memory before refusing it: one constant
per kind, shared by every reader (registries, layouts, archives, daemons)."""

# An error answer (a registry's, a daemon's): enough for any message, never a whole body.
ERROR_BODY_LIMIT = 64 * 1024
# Manifests, indexes, configs, a page of tags or referrers: small JSON documents.
METADATA_LIMIT = 16 * 1024 * 1024
