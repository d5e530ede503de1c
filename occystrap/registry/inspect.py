"""What `skopeo inspect` reports about a registry image, so scripts written for it read
`info -O json` too; and the single-platform image a reference was picked as."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from occystrap.digests import sha256_digest
from occystrap.errors import RegistryError
from occystrap.image import Image
from occystrap.registry.client import RegistryClient
from occystrap.registry.hosts import DOCKER_HUB_HOST
from occystrap.registry.reference import ImageReference

LOG = logging.getLogger("occystrap.toolbox")


@dataclass(frozen=True)
class PickedImage:
    """One single-platform image a reference names, and the index it was picked from."""

    image: Image
    index_digest: str | None = None

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.image.manifest or b"")


def inspect_keys(client: RegistryClient, reference: ImageReference, picked: PickedImage) -> dict:
    """`skopeo inspect`'s top-level keys, so scripts written for it read `info -O json` too.

    Like skopeo, RepoTags lists the whole repository, and a registry that refuses to list tags
    (401/403) leaves it empty with a warning.
    """
    try:
        repo_tags = client.list_tags(reference.repository)
    except RegistryError as exc:
        if exc.status not in (401, 403):
            raise
        LOG.warning("%s refuses to list tags; RepoTags is empty: %s", reference.registry, exc)
        repo_tags = []
    config = picked.image.config_json
    runtime = config.get("config")
    if not isinstance(runtime, dict):
        runtime = {}
    host = "docker.io" if reference.registry == DOCKER_HUB_HOST else reference.registry
    keys = {
        "Name": f"{host}/{reference.repository}",
        "Digest": picked.index_digest or picked.manifest_digest,
        "RepoTags": repo_tags,
        "Created": config.get("created"),
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Layers": [layer.digest for layer in picked.image.layers],
        "Env": runtime.get("Env"),
        "Labels": runtime.get("Labels"),
    }
    if config.get("variant"):
        keys["Variant"] = config["variant"]
    return keys
