"""Cloud emulators for the cloud tests, each a real server process on loopback: moto's server
mode (AWS, checking SigV4 signatures) and a GCS emulator; and the installed cloud plug-ins."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.integration.servers import free_port
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
