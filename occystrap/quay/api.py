"""The Quay REST API v1, spoken through the run's one client (auth, retry, rate limit apply).

Only discovery lives here: which repositories of an organisation match a glob and carry a
tag. The images themselves are then read over the registry API like any other.
"""

from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from occystrap.errors import OccystrapError
from occystrap.jsondoc import parse_json
from occystrap.middleware.extensions import BUFFER
from occystrap.registry.errors import host_port
from occystrap.registry.reference import ImageReference

if TYPE_CHECKING:
    from occystrap.endpoints.quay import QuayURI

MAX_API_RESPONSE_BYTES = 8 * 1024 * 1024


class QuayAPIError(OccystrapError):
    """The Quay API answered something other than what we asked for."""


@dataclass(frozen=True)
class QuayImage:
    """One repository of the organisation that has the wanted tag."""

    host: str
    org: str
    repository: str
    tag: str

    @property
    def reference(self) -> ImageReference:
        return ImageReference(self.host, f"{self.org}/{self.repository}", self.tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.org}/{self.repository}:{self.tag}"


def api_base(host: str, insecure: bool) -> str:
    """Where a Quay at `host` serves its API (plain HTTP only when asked for)."""
    return f"{'http' if insecure else 'https'}://{host}/api/v1"


def since_timestamp(since: datetime.date | None) -> float | None:
    """The start of `since` (UTC) as a Unix time; Quay reports times as Unix seconds."""
    if since is None:
        return None
    midnight = datetime.datetime.combine(since, datetime.time(), tzinfo=datetime.UTC)
    return midnight.timestamp()


def is_older(timestamp: object, cutoff: float | None) -> bool:
    """Whether Quay's `timestamp` is before `cutoff`; an unknown time is never too old."""
    if cutoff is None or not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return False
    return timestamp < cutoff


def matches_glob(name: str, glob: str) -> bool:
    """Shell-style match of a whole repository name; case matters, as in repository names."""
    return fnmatch.fnmatchcase(name, glob)


class QuayClient:
    """Lists an organisation's repositories and checks their tags over `http`."""

    def __init__(self, http: httpx.Client, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")

    def _get_json(self, path: str, params: dict[str, str], what: str) -> dict | None:
        """The JSON object at `path`, or None on 404; other failures are one-line errors."""
        # Read whole inside the chain's retry loop: a page cut mid-body is fetched again.
        response = self.http.get(
            f"{self.base}{path}", params=params, extensions={BUFFER: MAX_API_RESPONSE_BYTES}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise QuayAPIError(
                f"the Quay API at {host_port(response.url)} answered HTTP {response.status_code}"
                f" for {what}; check the organisation name and try again later"
            )
        try:
            document = parse_json(response.content, what)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise QuayAPIError(
                f"the Quay API answer for {what} is not a JSON object; is {self.base} a Quay API?"
            )
        return document

    def _listed(self, page: dict, key: str, what: str) -> list[dict]:
        """The page's `key` list, each entry an object with a string name; anything else is
        a malformed answer, not an empty one (which would read as "no image matches")."""
        entries = page.get(key)
        if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in entries
        ):
            raise QuayAPIError(
                f"the Quay API answer for {what} has no list of named {key}; is {self.base}"
                " a Quay API?"
            )
        return entries

    def repositories(self, org: str, since: datetime.date | None = None) -> Iterator[str]:
        """Names of `org`'s repositories, page by page; with `since`, only those modified since."""
        cutoff = since_timestamp(since)
        params = {"namespace": org, "public": "true"}
        if cutoff is not None:
            params["last_modified"] = "true"
        what = f"the repositories of {org}"
        pages_seen: set[str] = set()
        while True:
            page = self._get_json("/repository", params, what)
            if page is None:
                raise QuayAPIError(f"Quay has no organisation {org!r}; check the name")
            for entry in self._listed(page, "repositories", what):
                if not is_older(entry.get("last_modified"), cutoff):
                    yield entry["name"]
            next_page = page.get("next_page")
            if not next_page:
                return
            if str(next_page) in pages_seen:
                raise QuayAPIError(f"the Quay API repeated a page of {what}; try again later")
            pages_seen.add(str(next_page))
            params = {**params, "next_page": str(next_page)}

    def has_tag(
        self, org: str, repository: str, tag: str, since: datetime.date | None = None
    ) -> bool:
        """Whether `repository` has an active `tag` (created since `since`, when given)."""
        page = self._get_json(
            f"/repository/{org}/{repository}/tag/",
            {"specificTag": tag, "onlyActiveTags": "true", "limit": "1"},
            f"tag {tag} of {org}/{repository}",
        )
        what = f"tag {tag} of {org}/{repository}"
        tags = [] if page is None else self._listed(page, "tags", what)
        found = [t for t in tags if t["name"] == tag]
        return bool(found) and not is_older(found[0].get("start_ts"), since_timestamp(since))


def find_images(client: QuayClient, uri: QuayURI, parallel: int) -> list[QuayImage]:
    """Every image `uri` names, in the API's repository order; tag checks run `parallel` at once."""
    candidates = [
        name for name in client.repositories(uri.org, uri.since) if matches_glob(name, uri.glob)
    ]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="quay-tags") as pool:
        found = list(
            pool.map(lambda name: client.has_tag(uri.org, name, uri.tag, uri.since), candidates)
        )
    return [
        QuayImage(uri.host, uri.org, name, uri.tag)
        for name, present in zip(candidates, found, strict=True)
        if present
    ]
