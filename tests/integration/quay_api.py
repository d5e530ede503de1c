"""A fake self-hosted Quay: the REST API v1 endpoints occystrap uses, served on loopback,
with every `/v2/` request passed through to a real registry.

So `host=127.0.0.1:PORT` names both the API and the registry, as with a real Quay. Tests
describe organisations in `organisations`; the images themselves must be in the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.integration.fault_proxy import ForwardingServer
from tests.integration.servers import send_json

API_PREFIX = "/api/v1/"


@dataclass
class FakeRepository:
    """A repository as the API describes it: Unix times, and tag name -> start_ts."""

    tags: dict[str, int] = field(default_factory=dict)
    last_modified: int | None = None


class FakeQuay(ForwardingServer):
    """Serves `/api/v1/repository` (paged) and `/api/v1/repository/ORG/REPO/tag/`."""

    def __init__(self, registry_url: str, page_size: int = 2) -> None:
        super().__init__(registry_url)
        self.organisations: dict[str, dict[str, FakeRepository]] = {}
        self.page_size = page_size
        self.token: str | None = None  # when set, every API call needs "Bearer <token>"
        self.tag_check_delay = 0.0
        self.max_tag_checks_at_once = 0
        self._tag_checks_now = 0

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.max_tag_checks_at_once = 0

    def api_requests(self, endpoint: str = "") -> list[tuple[str, dict[str, list[str]]]]:
        """(path, query) of each API call whose path starts with API_PREFIX + `endpoint`."""
        calls = []
        for request in self.requests_matching("^" + API_PREFIX + endpoint):
            parts = urlsplit(request.path)
            calls.append((parts.path, parse_qs(parts.query)))
        return calls

    def handle(self, handler) -> None:
        parts = urlsplit(handler.path)
        if not parts.path.startswith(API_PREFIX):
            super().handle(handler)
            return
        self._record(handler, "api")
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            send_json(handler, 401, {"error": "invalid_token"})
            return
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        route = parts.path.removeprefix(API_PREFIX).rstrip("/").split("/")
        if route == ["repository"]:
            send_json(handler, *self._list_repositories(query))
        elif len(route) == 4 and route[0] == "repository" and route[3] == "tag":
            send_json(handler, *self._check_tag(route[1], route[2], query))
        else:
            send_json(handler, 404, {"error": "not found"})

    def _list_repositories(self, query: dict[str, str]) -> tuple[int, dict]:
        repositories = self.organisations.get(query.get("namespace", ""))
        if repositories is None:
            return 404, {"error": "no such namespace"}
        start = int(query.get("next_page", "page-0").removeprefix("page-"))
        names = list(repositories)[start : start + self.page_size]
        page = []
        for name in names:
            entry = {"namespace": query["namespace"], "name": name, "is_public": True}
            if query.get("last_modified") == "true":
                entry["last_modified"] = repositories[name].last_modified
            page.append(entry)
        document: dict = {"repositories": page}
        if start + self.page_size < len(repositories):
            document["next_page"] = f"page-{start + self.page_size}"
        return 200, document

    def _check_tag(self, org: str, name: str, query: dict[str, str]) -> tuple[int, dict]:
        with self._lock:
            self._tag_checks_now += 1
            self.max_tag_checks_at_once = max(self.max_tag_checks_at_once, self._tag_checks_now)
        try:
            time.sleep(self.tag_check_delay)
            repository = self.organisations.get(org, {}).get(name)
            if repository is None:
                return 404, {"error": "no such repository"}
            wanted = query.get("specificTag")
            tags = [
                {"name": tag, "start_ts": start_ts, "reversion": False}
                for tag, start_ts in repository.tags.items()
                if wanted is None or tag == wanted
            ]
            return 200, {"tags": tags[: int(query.get("limit", "50"))], "page": 1}
        finally:
            with self._lock:
                self._tag_checks_now -= 1
