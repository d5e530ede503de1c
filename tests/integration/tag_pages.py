"""A proxy that pages the real registry's tag lists the way newer registries do.

The CNCF registry 2.8 on the test machine ignores `?n=` and answers every tags/list in one
page; registries such as distribution 3, Docker Hub, GHCR and Quay page it. This proxy fetches
the real list from the registry behind it and serves it as the distribution spec describes:
tags in lexical order, `n` per page (a default page size when the client gives none), the rest
behind `Link: <...?last=TAG&n=N>; rel="next"`. Everything else passes through untouched.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, quote, urlsplit

from tests.integration.fault_proxy import HOP_BY_HOP, ForwardingServer

TAGS_PATH = re.compile(r"^/v2/(?P<name>.+)/tags/list$")


class TagPagingProxy(ForwardingServer):
    """Serves tags/list in pages of `n` (or `default_page_size`); forwards everything else."""

    def __init__(self, upstream_url: str, default_page_size: int = 3) -> None:
        super().__init__(upstream_url)
        self.default_page_size = default_page_size

    def handle(self, handler) -> None:
        parts = urlsplit(handler.path)
        match = TAGS_PATH.match(parts.path)
        if handler.command != "GET" or match is None:
            super().handle(handler)
            return
        self._record(handler, "paged")
        status, body = self._upstream_tags(handler, parts.path)
        if status != 200:
            _send(handler, status, body)
            return
        query = parse_qs(parts.query)
        page_size = int(query.get("n", [self.default_page_size])[0])
        last = query.get("last", [""])[0]
        tags = sorted(tag for tag in json.loads(body).get("tags") or [] if tag > last)
        page = tags[:page_size]
        link = None
        if len(tags) > page_size:
            link = f'<{parts.path}?last={quote(page[-1])}&n={page_size}>; rel="next"'
        document = {"name": match.group("name"), "tags": page}
        _send(handler, 200, json.dumps(document).encode(), link)

    def _upstream_tags(self, handler, path: str) -> tuple[int, bytes]:
        """The registry's whole tag list, asked with the client's own headers (its auth)."""
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = self.upstream_connection()
        try:
            upstream.request("GET", path, headers=headers)
            response = upstream.getresponse()
            return response.status, response.read()
        finally:
            upstream.close()


def _send(handler, status: int, body: bytes, link: str | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    if link:
        handler.send_header("Link", link)
    handler.end_headers()
    handler.wfile.write(body)
