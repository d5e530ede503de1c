"""Cloud emulators for the cloud tests, each a real server process on loopback: moto's server
mode (AWS, checking SigV4 signatures) and a GCS emulator; and the installed cloud plug-ins."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.integration.servers import free_port, send_json
from tests.unit.plugin_install import REPO_ROOT, install_distributions

CLOUD_PLUGINS = [
    REPO_ROOT / "plugins" / name for name in ("occystrap-aws", "occystrap-gcp", "occystrap-azure")
]
AWS_REGION = "eu-west-1"


def install_cloud_plugins(tmp_path: Path) -> Path:
    """The plug-in distributions installed as a user would (entry points and all)."""
    return install_distributions(tmp_path, [p for p in CLOUD_PLUGINS if p.exists()])


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


class ServerProcess:
    """A server started as a process on a free loopback port, stopped by its PID."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
        try:
            httpx.get(self.url + self.probe_path, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    probe_path = "/"

    def start_process(self, argv: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=self.workdir,
                start_new_session=True,
            )
        wait_for(self._up, self.name)

    def stop(self) -> None:
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            self._process = None


class MotoServer(ServerProcess):
    """moto in server mode with IAM authentication on: every request must carry a valid SigV4
    signature of an access key the server knows (created here, before auth is enforced)."""

    probe_path = "/moto-api/"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "moto")
        self.access_key = ""
        self.secret_key = ""

    def start(self) -> MotoServer:
        binary = shutil.which("moto_server")
        if binary is None:
            raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
        self.start_process(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            {"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        )
        self._create_user()
        return self

    def _create_user(self) -> None:
        """Let exactly the three IAM calls that create an all-powerful user through unsigned,
        then every request is checked again."""
        import boto3

        httpx.post(self.url + "/moto-api/reset-auth", content=b"3").raise_for_status()
        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="occystrap-test")
        iam.put_user_policy(
            UserName="occystrap-test",
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
            '"Action":"*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="occystrap-test")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def env(self) -> dict[str, str]:
        """What a user's shell would hold: credentials, region, the endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=AWS_REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class OAuthTokenEndpoint:
    """A cloud's OAuth2 token endpoint in miniature (Google's token_uri, Azure AD's v2.0
    token endpoint and its OpenID configuration): hands out `access_token` to callers whose
    grant `accepts` approves, and records each grant."""

    def __init__(self, access_token: str, accepts, ssl_context=None) -> None:
        self.access_token = access_token
        self.accepts = accepts
        self.grants: list[dict[str, str]] = []
        self._ssl_context = ssl_context
        self._httpd = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> OAuthTokenEndpoint:
        import threading
        from http.server import ThreadingHTTPServer

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _oauth_handler(self))
        self._httpd.daemon_threads = True
        if self._ssl_context is not None:
            self._httpd.socket = self._ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OAuthTokenEndpoint:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _oauth_handler(endpoint: OAuthTokenEndpoint):
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import parse_qs, urlsplit

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # noqa: A002
            """Tests read `endpoint.grants` instead."""

        def do_GET(self) -> None:  # Azure AD's OpenID configuration of a tenant
            tenant = urlsplit(self.path).path.strip("/").split("/")[0]
            base = f"{endpoint.url}/{tenant}"
            send_json(
                self,
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"{base}/v2.0",
                },
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            endpoint.grants.append(form)
            if not endpoint.accepts(form):
                send_json(self, 400, {"error": "invalid_grant"})
                return
            send_json(
                self,
                200,
                {"access_token": endpoint.access_token, "expires_in": 3600, "token_type": "Bearer"},
            )

    return Handler


class GoogleServiceAccount:
    """A service account key (as `gcloud iam service-accounts keys create` writes it) whose
    token_uri is a test endpoint; the endpoint checks the signed JWT grant with its key."""

    EMAIL = "occystrap-test@test-project.iam.gserviceaccount.com"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_key = key.public_key()

    def accepts(self, form: dict[str, str]) -> bool:
        import jwt

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return False
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.public_key,
                algorithms=["RS256"],
                options={"verify_aud": False},
            )
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.EMAIL

    def key_file(self, path: Path, token_uri: str) -> Path:
        import json

        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": "test-key",
                    "private_key": self.private_pem,
                    "client_email": self.EMAIL,
                    "client_id": "1234567890",
                    "token_uri": token_uri,
                }
            )
        )
        return path


class GcsEmulator(ServerProcess):
    """gcp-storage-emulator (Cloud Storage's JSON API), in memory."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "gcs-emulator")

    def start(self) -> GcsEmulator:
        binary = shutil.which("gcp-storage-emulator")
        if binary is None:
            raise RuntimeError("gcp-storage-emulator is not installed: pip install it")
        self.start_process(
            [binary, "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"],
            {},
        )
        return self

    def create_bucket(self, name: str) -> None:
        httpx.post(
            f"{self.url}/storage/v1/b", params={"project": "test"}, json={"name": name}
        ).raise_for_status()

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix`, read straight from the emulator."""
        listing = httpx.get(f"{self.url}/storage/v1/b/{bucket}/o", params={"prefix": prefix}).json()
        found = {}
        for item in listing.get("items", []):
            name = item["name"]
            found[name] = httpx.get(
                f"{self.url}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
                params={"alt": "media"},
            ).content
        return found

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
