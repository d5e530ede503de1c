"""Registry host names: Docker Hub answers to several; credentials and mirrors match any."""

DOCKER_HUB_HOST = "registry-1.docker.io"

DOCKER_HUB_ALIASES = frozenset(
    {
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "registry.hub.docker.com",
    }
)


def canonical_registry_host(host: str) -> str:
    """Lowercase `host[:port]`, folding every Docker Hub alias into the host actually served.

    A port is kept for other registries; an explicit port on a Hub alias is kept too, since it
    then names a different endpoint.
    """
    lowered = host.strip().lower()
    if lowered in DOCKER_HUB_ALIASES:
        return DOCKER_HUB_HOST
    return lowered
