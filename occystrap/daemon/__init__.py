"""The Docker (and Podman) Engine API, spoken over the daemon's Unix socket with httpx,
outside the registry chain: where the socket is (`sockets`) and what the daemon is asked and
answers (`client`). The docker:// endpoint (endpoints/docker.py) builds on it.
"""
