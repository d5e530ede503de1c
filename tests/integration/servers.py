"""Launch the real CNCF distribution registry on loopback for integration tests.

Tests need a registry that behaves exactly like production ones (auth challenges, Range, upload
sessions), so we run the packaged binary rather than a fake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import httpx
import trustme

REGISTRY_BINARY = "/usr/bin/docker-registry"
SKOPEO_BINARY = "/usr/bin/skopeo"
MISSING_BINARY_HINT = (
    "{binary} is missing: integration tests need the CNCF registry and skopeo; "
    "run the test command from README.md (it installs docker-registry and skopeo)"
)
START_DEADLINE_SECONDS = 20.0


class RegistryStartError(RuntimeError):
    """The registry process exited or never answered /v2/."""


def free_port() -> int:
    """Ask the kernel for an unused loopback port (it stays free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_binary(path: str) -> str:
    """Return `path` if executable, else fail loudly: a missing tool must never skip tests."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        resolved = shutil.which(os.path.basename(path))
        if resolved is None:
            raise RuntimeError(MISSING_BINARY_HINT.format(binary=path))
        return resolved
    return path


class RegistryServer:
    """One docker-registry process with its own storage, port and auth mode.

    `auth` is None, "basic" or "token"; `tls` serves HTTPS (and HTTP/2) with a trustme CA;
    `client_certs` (with `tls`) refuses clients without a certificate from a second CA
    (`http.tls.clientcas`), whose client pair is in `client_cert_files`.
    Token mode needs `token_server` (a running `TokenServer`) for realm and signing cert.
    `deletes` turns storage.delete on (the default) or off (DELETE answers 405 UNSUPPORTED).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: str | None = None,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        token_server=None,
        client_certs: bool = False,
        deletes: bool = True,
    ) -> None:
        if auth not in (None, "basic", "token"):
            raise ValueError(f"unknown auth mode {auth!r}")
        if auth == "basic" and not (username and password):
            raise ValueError("basic auth needs username and password")
        if auth == "token" and token_server is None:
            raise ValueError("token auth needs a token_server")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.scheme = "https" if tls else "http"
        self.token_server = token_server
        self.deletes = deletes
        if auth == "token":
            username, password = token_server.username, token_server.password
        self.username = username
        self.password = password
        self.storage = self.workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.ca_cert: Path | None = None
        self.cert_dir: Path | None = None
        self._tls_files: tuple[Path, Path] | None = None
        self.client_cert_files: tuple[Path, Path] | None = None
        self._client_ca: Path | None = None
        if client_certs and not tls:
            raise ValueError("client certificates need tls")
        self._wants_client_certs = client_certs
        if tls:
            self._make_tls_material()
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log_path = self.workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int:
        """The running docker-registry's process id (benchmarks read its CPU time)."""
        if self._process is None:
            raise RuntimeError("the registry is not running")
        return self._process.pid

    def _make_tls_material(self) -> None:
        """A fresh CA per server, so tests prove our client trusts only what it is told to."""
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_cert = self.workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_cert))
        cert_path = self.workdir / "server.pem"
        key_path = self.workdir / "server.key"
        server_cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for intermediate in server_cert.cert_chain_pems[1:]:
            intermediate.write_to_path(str(cert_path), append=True)
        server_cert.private_key_pem.write_to_path(str(key_path))
        self._tls_files = (cert_path, key_path)
        # skopeo reads every *.crt in --cert-dir as a trusted CA, and *.cert/*.key pairs as
        # client certificates.
        self.cert_dir = self.workdir / "skopeo-certs"
        self.cert_dir.mkdir(exist_ok=True)
        ca.cert_pem.write_to_path(str(self.cert_dir / "ca.crt"))
        if self._wants_client_certs:
            client_ca = trustme.CA()
            self._client_ca = self.workdir / "client-ca.pem"
            client_ca.cert_pem.write_to_path(str(self._client_ca))
            client = client_ca.issue_cert("occystrap-test-client@example.com")
            cert, key = self.cert_dir / "client.cert", self.cert_dir / "client.key"
            client.cert_chain_pems[0].write_to_path(str(cert))
            client.private_key_pem.write_to_path(str(key))
            self.client_cert_files = (cert, key)

    def _config(self) -> dict:
        """The registry config; JSON is valid YAML, so no YAML library is needed."""
        http: dict = {
            "addr": self.host,
            "secret": "integration-test-secret",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self._tls_files:
            http["tls"] = {
                "certificate": str(self._tls_files[0]),
                "key": str(self._tls_files[1]),
            }
            if self._client_ca is not None:
                http["tls"]["clientcas"] = [str(self._client_ca)]
        config: dict = {
            "version": "0.1",
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": self.deletes},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.auth == "basic":
            htpasswd = self.workdir / "htpasswd"
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd.write_text(f"{self.username}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
        elif self.auth == "token":
            config["auth"] = {"token": self.token_server.registry_auth_config()}
        return config

    def start(self) -> RegistryServer:
        """Start on a free port; retry a couple of times in case another process grabbed it."""
        binary = require_binary(REGISTRY_BINARY)
        last_error: Exception | None = None
        for _ in range(3):
            self.port = free_port()
            config_path = self.workdir / "config.yml"
            config_path.write_text(json.dumps(self._config(), indent=2))
            with open(self._log_path, "wb") as log:
                self._process = subprocess.Popen(
                    [binary, "serve", str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except RegistryStartError as error:
                last_error = error
                self.stop()
        raise last_error

    def _wait_ready(self) -> None:
        """Poll /v2/ until any HTTP answer arrives (401 counts: the server is up)."""
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        with httpx.Client(verify=self.ssl_context() if self.ca_cert else True) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RegistryStartError(
                        f"docker-registry exited with {self._process.returncode}: {self.log_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    client.get(f"{self.url}/v2/", timeout=1.0)
                    return
                time.sleep(0.05)
        raise RegistryStartError(
            f"docker-registry did not answer within {START_DEADLINE_SECONDS}s: {self.log_text()}"
        )

    def log_text(self) -> str:
        """The registry's output, trimmed to the end, where the reason it failed is."""
        if not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting only this server's CA, presenting the client certificate
        when the server wants one (None for plain HTTP)."""
        if self.ca_cert is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if self.client_cert_files is not None:
            context.load_cert_chain(*map(str, self.client_cert_files))
        return context

    def client(self, **kwargs) -> httpx.Client:
        """A plain httpx client that trusts this server, for checks outside occystrap."""
        if self.ca_cert is not None:
            kwargs.setdefault("verify", self.ssl_context())
        return httpx.Client(base_url=self.url, **kwargs)

    def _skopeo_flags(self, prefix: str) -> list[str]:
        flags: list[str] = []
        if self.username is not None:
            flags.append(f"--{prefix}creds={self.username}:{self.password}")
        else:
            flags.append(f"--{prefix}no-creds")
        if self.scheme == "http":
            flags.append(f"--{prefix}tls-verify=false")
        else:
            flags += [f"--{prefix}tls-verify=true", f"--{prefix}cert-dir={self.cert_dir}"]
        return flags

    def skopeo_args(self) -> list[str]:
        """Flags for single-image skopeo commands (inspect, delete)."""
        return self._skopeo_flags("")

    def skopeo_src_args(self) -> list[str]:
        return self._skopeo_flags("src-")

    def skopeo_dest_args(self) -> list[str]:
        return self._skopeo_flags("dest-")

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def send_json(handler, status: int, document: dict, headers: dict[str, str] | None = None) -> None:
    """Answer a test server's request (`http.server` handler) with `document` as JSON."""
    payload = json.dumps(document).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
