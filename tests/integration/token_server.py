"""A minimal Docker token service that the real distribution registry trusts.

It issues RS256 JWTs carrying the signing certificate in `x5c`, which distribution 2.8 verifies
against the `rootcertbundle` we hand it. Every request is recorded so tests can assert how many
token fetches a client made per scope.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.integration.servers import send_json

SERVICE = "test-registry"
ISSUER = "test-issuer"


def libtrust_key_id(public_key) -> str:
    """The key id distribution derives from a public key: base32 of 240 bits of SHA-256(SPKI)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


def _self_signed_signing_cert() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "occystrap test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def parse_scope(scope: str) -> dict | None:
    """`repository:name/with/slashes:pull,push` -> a JWT access entry (None if malformed)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name or not actions:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass
class TokenRequest:
    """One request the token server saw."""

    method: str
    scopes: list[str]
    grant_type: str  # "basic" for GET, else the POST grant_type
    granted: bool
    headers: dict[str, str] = field(default_factory=dict)


class TokenServer:
    """Issues registry tokens to callers presenting `username`/`password` (or a refresh token)."""

    def __init__(
        self, workdir: Path, username: str = "tokenuser", password: str = "tokenpass"
    ) -> None:
        self.username = username
        self.password = password
        self.token_ttl = 300
        # Tests may turn x5c off to prove the registry also finds the key by its libtrust `kid`.
        self.include_x5c = True
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.signing_key, self._cert = _self_signed_signing_cert()
        self.cert_path = self.workdir / "token-signer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._refresh_tokens: set[str] = set()
        # The Azure AD token `/oauth2/exchange` trades for a refresh token, as ACR's does.
        self.exchange_access_token: str | None = None
        self.exchanges = 0
        self._lock = threading.Lock()
        self.requests: list[TokenRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth_config(self) -> dict:
        """The `auth.token` section for the registry config."""
        return {
            "realm": self.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(self.cert_path),
        }

    def start(self) -> TokenServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, scope: str | None = None) -> int:
        """Granted token fetches, optionally only those that asked for `scope`."""
        with self._lock:
            granted = [r for r in self.requests if r.granted]
            return sum(1 for r in granted if scope is None or scope in r.scopes)

    def counts_by_scope(self) -> Counter:
        """Granted fetches per requested scope (a fetch with two scopes counts for both)."""
        with self._lock:
            return Counter(s for r in self.requests if r.granted for s in r.scopes)

    def issue(self, subject: str, scopes: list[str]) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.token_ttl,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [entry for entry in map(parse_scope, scopes) if entry],
        }
        headers = {"kid": libtrust_key_id(self.signing_key.public_key())}
        if self.include_x5c:
            der = self._cert.public_bytes(serialization.Encoding.DER)
            headers["x5c"] = [base64.b64encode(der).decode()]
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers=headers)

    def new_refresh_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens.add(token)
        return token

    def is_refresh_token(self, token: str) -> bool:
        with self._lock:
            return token in self._refresh_tokens

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _make_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class TokenHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - base class name
            """Silence per-request stderr lines; tests read `server.requests` instead."""

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            scopes = query.get("scope", [])
            credentials = _basic_credentials(self.headers.get("Authorization"))
            granted = credentials == (server.username, server.password)
            self._finish("basic", scopes, granted, offline=query.get("offline_token") == ["true"])

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if urlsplit(self.path).path == "/oauth2/exchange":
                self._exchange(form)
                return
            grant_type = form.get("grant_type", [""])[0]
            scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
            if grant_type == "password":
                credentials = (form.get("username", [""])[0], form.get("password", [""])[0])
                granted = credentials == (server.username, server.password)
            elif grant_type == "refresh_token":
                granted = server.is_refresh_token(form.get("refresh_token", [""])[0])
            else:
                granted = False
            offline = grant_type == "password" and form.get("access_type") == ["offline"]
            self._finish(grant_type, scopes, granted, offline=offline)

        def _exchange(self, form: dict[str, list[str]]) -> None:
            expected = server.exchange_access_token
            if expected is None or form.get("access_token") != [expected]:
                self._send_json(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            server.exchanges += 1
            self._send_json(200, {"refresh_token": server.new_refresh_token()})

        def _finish(self, grant_type: str, scopes: list[str], granted: bool, offline: bool) -> None:
            headers = dict(self.headers)
            server.record(TokenRequest(self.command, scopes, grant_type, granted, headers))
            if not granted:
                self._send_json(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            token = server.issue(server.username, scopes)
            body = {
                "token": token,
                "access_token": token,
                "expires_in": server.token_ttl,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
            if offline:
                body["refresh_token"] = server.new_refresh_token()
            self._send_json(200, body)

        def _send_json(self, status: int, body: dict) -> None:
            challenge = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else None
            send_json(self, status, body, challenge)

    return TokenHandler
