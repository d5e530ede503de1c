"""oci://PATH: an OCI runtime bundle, `rootfs/` and `config.json`, that `runc run` starts.

The root filesystem is every layer applied in order through the same safe extraction as
`dir://...?expand=true`. `config.json` follows the OCI runtime spec 1.0: the process comes
from the image config (Entrypoint + Cmd, Env, WorkingDir, User); the rest are the defaults
`runc spec` and `docker run` share (namespaces, mounts, masked paths, capabilities). The
bundle is staged next to PATH and renamed into place only once complete.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occystrap.destinations import check_whole_directory_destination, staged_whole_directory
from occystrap.endpoints import (
    EXPAND_FORM,
    Endpoint,
    Scheme,
    path_and_expand_policy,
)
from occystrap.errors import OccystrapError
from occystrap.extract import DEFAULT_POLICY, ExpandPolicy, read_file_in_root
from occystrap.image import Image, ImageLike
from occystrap.jsondoc import parse_json
from occystrap.pipeline import RunContext
from occystrap.rootfs import expand_layers

SCHEME_NAME = "oci"
RUNTIME_SPEC_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What docker grants a container by default; a non-root user gets them only as a bound.
DEFAULT_CAPABILITIES = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]


def _mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    mount: dict[str, Any] = {"destination": destination, "type": kind, "source": source}
    return {**mount, "options": list(options)} if options else mount


_NO_SUID_EXEC_DEV = ("nosuid", "noexec", "nodev")
DEFAULT_MOUNTS = [
    _mount("/proc", "proc", "proc"),
    _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    _mount(
        "/dev/pts", "devpts", "devpts",
        "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5",
    ),
    _mount("/dev/shm", "tmpfs", "shm", *_NO_SUID_EXEC_DEV, "mode=1777", "size=65536k"),
    _mount("/dev/mqueue", "mqueue", "mqueue", *_NO_SUID_EXEC_DEV),
    _mount("/sys", "sysfs", "sysfs", *_NO_SUID_EXEC_DEV, "ro"),
    _mount("/sys/fs/cgroup", "cgroup", "cgroup", *_NO_SUID_EXEC_DEV, "relatime", "ro"),
]  # fmt: skip
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NAMESPACES = ["pid", "ipc", "uts", "mount", "network"]
OPEN_FILES_LIMIT = 1024
ACCOUNT_FILE_LIMIT = 16 * 1024 * 1024  # /etc/passwd and /etc/group are read up to this size


@dataclass
class OciURI(Endpoint):
    path: Path
    policy: ExpandPolicy = DEFAULT_POLICY

    def open_output(self, ctx: RunContext) -> BundleOutput:
        check_whole_directory_destination(self.path, SCHEME_NAME)
        return BundleOutput(self.path, ctx, self.policy)


class BundleOutput:
    """Writes one image as an OCI runtime bundle (see the module docstring)."""

    def __init__(self, path: Path, ctx: RunContext, policy: ExpandPolicy = DEFAULT_POLICY) -> None:
        self.path, self.ctx, self.policy = Path(path), ctx, policy

    def write(self, item: ImageLike) -> None:
        if not isinstance(item, Image):
            raise OccystrapError(f"oci://{self.path} holds one image, not an index")
        settings = container_settings(item.config)
        args = process_args(settings)  # before any download: a bundle without a process is no use
        with staged_whole_directory(self.path, SCHEME_NAME) as bundle:
            rootfs = bundle / "rootfs"
            rootfs.mkdir(mode=0o755)
            expand_layers(item, self.ctx, self.policy, lambda _: rootfs)
            user = resolve_user(str(settings.get("User") or ""), rootfs)
            hostname = hostname_for(settings, item.source.repository)
            spec = runtime_spec(settings, args, user, hostname)
            (bundle / "config.json").write_text(json.dumps(spec, indent=2) + "\n")


def container_settings(config: bytes) -> dict[str, Any]:
    """The `config` section of an image config (Env, Cmd, User...), for a Linux image."""
    document = parse_json(config, "the image config")
    if not isinstance(document, dict):
        raise _malformed("document", document, "an object")
    operating_system = document.get("os", "linux")
    if operating_system != "linux":
        raise OccystrapError(
            f"the image is for {operating_system!r}; an OCI runtime bundle needs a Linux image"
            " (choose one with --platform linux/ARCH)"
        )
    settings = document.get("config") or {}
    if not isinstance(settings, dict):
        raise _malformed("config", settings, "an object")
    for key in ("Entrypoint", "Cmd", "Env"):
        value = settings.get(key)
        if value is not None and not _strings(value):
            raise _malformed(key, value, "a list of strings")
    for key in ("User", "WorkingDir", "Hostname"):
        value = settings.get(key)
        if value is not None and not isinstance(value, str):
            raise _malformed(key, value, "a string")
    labels = settings.get("Labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise _malformed("Labels", labels, "an object of strings")
    if any("\0" in item for item in settings.get("Env") or []):
        raise _malformed("Env", settings["Env"], "a list of strings without NUL")
    return settings


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _malformed(key: str, value: object, expected: str) -> OccystrapError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    where = "the image config" if key == "document" else f"the image config's {key}"
    return OccystrapError(
        f"{where} is {shown}, not {expected}; the image is malformed, so no"
        " bundle is written (rebuild or fix the image)"
    )


def process_args(settings: dict[str, Any]) -> list[str]:
    """What the container runs: Entrypoint followed by Cmd, as `docker run` does."""
    args = [*(settings.get("Entrypoint") or []), *(settings.get("Cmd") or [])]
    if not args:
        raise OccystrapError(
            "the image config has neither Entrypoint nor Cmd, so the bundle would have no"
            " process to run; use an image that names its command"
        )
    return args


def hostname_for(settings: dict[str, Any], repository: str) -> str:
    """The image's Hostname, else the last part of its name as a valid host name."""
    name = settings.get("Hostname") or re.sub(r"[^a-z0-9-]+", "-", repository.rsplit("/", 1)[-1])
    return name.strip("-")[:63] or "container"


@dataclass(frozen=True)
class ProcessUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def _account_entries(rootfs: Path, name: str, fields: int) -> list[list[str]]:
    """The records of the rootfs's /etc/passwd or /etc/group with a numeric id (3rd field)."""
    data = read_file_in_root(rootfs, f"etc/{name}", ACCOUNT_FILE_LIMIT) or b""
    records = [line.split(":") for line in data.decode("utf-8", "replace").splitlines()]
    return [record for record in records if len(record) >= fields and record[2].isdigit()]


def _unknown(kind: str, name: str, where: str) -> OccystrapError:
    return OccystrapError(
        f"the image config's user names {kind} {name!r}, which the image's {where} does not"
        f" list; use an image that defines it, or a numeric id"
    )


def resolve_user(user: str, rootfs: Path) -> ProcessUser:
    """The uid, gid and supplementary groups of the image's User (`name|uid[:group|gid]`).

    Names are looked up in the rootfs's /etc/passwd and /etc/group, never the host's; a
    user without a group takes the primary group /etc/passwd gives it (else 0), and the
    groups /etc/group lists it in, as `docker run` does.
    """
    name, _, group = (user or "0").partition(":")
    passwd = _account_entries(rootfs, "passwd", 4)
    if name.isdigit():
        account = next((entry for entry in passwd if int(entry[2]) == int(name)), None)
    else:
        account = next((entry for entry in passwd if entry[0] == name), None)
        if account is None:
            raise _unknown("user", name, "/etc/passwd")
    uid = int(account[2]) if account is not None else int(name)
    groups = _account_entries(rootfs, "group", 3)
    if group.isdigit():
        gid = int(group)
    elif group:
        named = next((entry for entry in groups if entry[0] == group), None)
        if named is None:
            raise _unknown("group", group, "/etc/group")
        gid = int(named[2])
    else:
        gid = int(account[3]) if account is not None and account[3].isdigit() else 0
    login = account[0] if account is not None else None
    additional = {
        int(entry[2]) for entry in groups if len(entry) >= 4 and login in entry[3].split(",")
    }
    return ProcessUser(uid, gid, tuple(sorted(additional - {gid})))


def runtime_spec(
    settings: dict[str, Any], args: list[str], user: ProcessUser, hostname: str
) -> dict[str, Any]:
    """The bundle's config.json for an image's `config` section."""
    env = list(settings.get("Env") or [])
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, DEFAULT_PATH)
    cwd = "/" + str(settings.get("WorkingDir") or "").lstrip("/")
    process_user: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        process_user["additionalGids"] = list(user.additional_gids)
    granted = DEFAULT_CAPABILITIES if user.uid == 0 else []
    labels = settings.get("Labels")
    return copy.deepcopy(
        {  # the defaults are shared: callers may change what they get
            "ociVersion": RUNTIME_SPEC_VERSION,
            "process": {
                "terminal": False,
                "user": process_user,
                "args": args,
                "env": env,
                "cwd": cwd,
                "capabilities": {
                    "bounding": DEFAULT_CAPABILITIES,
                    "effective": granted,
                    "permitted": granted,
                },
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "hard": OPEN_FILES_LIMIT, "soft": OPEN_FILES_LIMIT}
                ],
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs", "readonly": False},
            "hostname": hostname,
            "mounts": DEFAULT_MOUNTS,
            "linux": {
                "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                "namespaces": [{"type": kind} for kind in NAMESPACES],
                "maskedPaths": MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS,
            },
            "annotations": dict(labels) if isinstance(labels, dict) else {},
        }
    )


def _parse(text: str, rest: str) -> OciURI:
    return OciURI(*path_and_expand_policy(text, rest))


SCHEME = Scheme(
    SCHEME_NAME,
    f"oci://PATH[?{EXPAND_FORM}]",
    _parse,
    source=False,
)
