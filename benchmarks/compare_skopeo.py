"""Time occystrap against skopeo on one loopback registry: pull to tar, push from tar, copy.

A script, not a test: wall-clock figures depend on the machine. Runs alternate between the two
tools so that disk cache and CPU frequency drift hit both alike; the median of N runs is kept.
Peak RSS comes from /usr/bin/time (Debian package `time`), one fresh process per run.
occystrap is timed as users run it: the checkout (--code) and its cloud plug-ins installed,
not editable, into a virtual environment of their own (--editable: the source tree on
PYTHONPATH of this interpreter instead, its editable installs' import finders loading too).

    python3 benchmarks/compare_skopeo.py [--size-mb 300] [--layers 6] [--runs 3] [--tls|--plain]
    python3 benchmarks/compare_skopeo.py --image real       # layers of this machine's files
    python3 benchmarks/compare_skopeo.py --image huge --huge-mb 3072 --runs 1   # minutes
    python3 benchmarks/compare_skopeo.py --toolbox --only none   # --version, digest, tags
    python3 benchmarks/compare_skopeo.py --image real --markdown table.md   # for the docs

Beside each tool's own CPU seconds it reports the CPU seconds the registries spent serving the
run and the tool's CPU seconds per GB moved: what bounds an operation, the tool or the registry.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.integration.images import build_oci_layout, push_with_skopeo  # noqa: E402
from tests.integration.servers import SKOPEO_BINARY, RegistryServer, require_binary  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TIME_BINARY = "/usr/bin/time"
RUN_TIMEOUT_SECONDS = 900
# Layer content: random bytes drawn from 16 symbols, so gzip shrinks it about 2x and inflating
# it costs real Huffman decoding, like a typical layer (pure random data would be stored as-is).
SYMBOLS = b"0123456789abcdef"
COMPRESSION_RATIO = 0.5


# The "real files" image: one layer per tree, as found on this machine (missing ones skipped).
REAL_TREES = ("/usr/lib/python3.11", "/usr/bin", "/usr/share/doc")
TOOLBOX_RUNS = 10
TRANSFER_OPERATIONS = ("pull to tar", "push from tar", "registry to registry", "repeat push")
GB = 1e9  # CPU seconds per GB: per 10^9 bytes of blobs moved


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0  # user + system, all threads
    # CPU seconds each registry ("source", "destination") spent during the run
    registry_cpu_seconds: dict[str, float] = field(default_factory=dict)
    moved_bytes: int = 0  # blobs the run moved (config and layers); 0: not a transfer

    @property
    def cpu_seconds_per_gb(self) -> float | None:
        return self.cpu_seconds / (self.moved_bytes / GB) if self.moved_bytes else None


@dataclass
class Row:
    transport: str
    operation: str
    tool: str
    runs: list[Measurement] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        return max(run.peak_rss_mb for run in self.runs)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(run.cpu_seconds for run in self.runs)

    @property
    def median_registry_cpu_seconds(self) -> float:
        return statistics.median(sum(run.registry_cpu_seconds.values()) for run in self.runs)

    @property
    def median_cpu_seconds_per_gb(self) -> float | None:
        per_gb = [run.cpu_seconds_per_gb for run in self.runs]
        return statistics.median(per_gb) if None not in per_gb else None


def layer_content(size: int, seed: int) -> bytes:
    """Seeded bytes over 16 symbols. Made in 64 MiB pieces (randbytes overflows past ~256 MB);
    the pieces join into exactly the bytes one call would give."""
    table = bytes(SYMBOLS[i % len(SYMBOLS)] for i in range(256))
    rng = random.Random(seed)
    piece = 64 * 1024 * 1024
    return b"".join(
        rng.randbytes(min(piece, size - done)).translate(table) for done in range(0, size, piece)
    )


def cached_layout(size_mb: int, layers: int) -> Path:
    """The test image as an OCI layout, built once per (size, layers) and kept in results/."""
    path = RESULTS_DIR / f"layout-{size_mb}mb-{layers}layers"
    if (path / "index.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    layer_bytes = int(size_mb * 1024 * 1024 / COMPRESSION_RATIO / layers)
    print(f"building a {size_mb} MB image of {layers} gzip layers in {path} ...", flush=True)
    contents = [{"data.bin": layer_content(layer_bytes, seed)} for seed in range(layers)]
    build_oci_layout(path, contents)
    return path


class _Generated(io.RawIOBase):
    """`size` bytes made on demand by `piece(n)`, never held whole."""

    def __init__(self, size: int, piece) -> None:
        self.left, self.piece = size, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left, 4 * 1024 * 1024)
        buffer[:count] = self.piece(count)
        self.left -= count
        return count


def _huge_file(size: int) -> _Generated:
    """Two thirds seeded random bytes (incompressible), then text (compresses well), as a
    model or SDK layer mixes them."""
    rng = random.Random(21)
    random_part = size * 2 // 3
    words = [b"layer", b"model", b"weights", b"tensor", b"config", b"0.125", b"\n"]
    line = b" ".join(rng.choice(words) for _ in range(4096))
    done = 0

    def piece(count: int) -> bytes:
        nonlocal done
        if done < random_part:
            count = min(count, random_part - done)
            data = rng.randbytes(count)
        else:
            start = (done - random_part) % len(line)
            data = (line[start:] + line * (count // len(line) + 1))[:count]
        done += len(data)
        return data

    return _Generated(size, piece)


def _docker_archive(path: Path, layers: list) -> None:
    """A `docker save` tarball of uncompressed layers, each written by `add(tar)`, streamed."""
    work = path.with_suffix(".parts")
    work.mkdir(parents=True, exist_ok=True)
    diff_ids = []
    for position, add in enumerate(layers):
        layer = work / f"layer{position}.tar"
        with open(layer, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
            add(tar)
        digest = hashlib.sha256()
        with open(layer, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        diff_ids.append("sha256:" + digest.hexdigest())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = [f"{diff_id[7:]}/layer.tar" for diff_id in diff_ids]
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["bench:src"], "Layers": names}]
    ).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for position, name in enumerate(names):
            archive.add(work / f"layer{position}.tar", arcname=name)
    shutil.rmtree(work)


def cached_archive(image: str, huge_mb: int) -> Path:
    """The "real" or "huge" image as a docker-save tarball, built once into results/."""
    path = RESULTS_DIR / (
        f"archive-huge-{huge_mb}mb.tar" if image == "huge" else "archive-real.tar"
    )
    if path.exists():
        return path
    print(f"building the {image} image in {path} ...", flush=True)
    if image == "huge":

        def add_huge(tar: tarfile.TarFile) -> None:
            info = tarfile.TarInfo("data/model.bin")
            info.size = huge_mb * 1024 * 1024
            tar.addfile(info, _huge_file(info.size))

        _docker_archive(path, [add_huge])
    else:

        def adder(tree: str):
            def add(tar: tarfile.TarFile) -> None:
                def plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
                    return info if info.isfile() or info.isdir() or info.issym() else None

                tar.add(tree, arcname=tree.lstrip("/"), filter=plain)

            return add

        _docker_archive(path, [adder(tree) for tree in REAL_TREES if Path(tree).is_dir()])
    return path


@dataclass(frozen=True)
class Occystrap:
    """The occystrap under test: the interpreter it is installed in, or (`source`) a tree put
    on PYTHONPATH for the running interpreter, whose editable installs then load too."""

    python: str
    source: Path | None = None

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "occystrap", *args]


def install(code: Path, work: Path) -> Occystrap:
    """`code` and its cloud plug-ins installed as users install them (a wheel's files, not an
    editable install and its import finder, which every start of the program would pay) into
    a virtual environment of their own; the dependencies are the running environment's."""
    venv = work / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    sources = []  # copies: building in place would leave build/ and *.egg-info in `code`
    for tree in [code, *sorted((code / "plugins").iterdir())]:
        copy = work / "sources" / tree.name
        copy.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", *(p.name for p in tree.glob("occystrap*"))):
            if (tree / name).is_dir():
                shutil.copytree(
                    tree / name, copy / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            elif (tree / name).is_file():
                shutil.copy(tree / name, copy / name)
        sources.append(str(copy))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--target", str(site_packages), *sources],
        check=True,
    )
    return Occystrap(str(venv / "bin" / "python"))


def occystrap_command(
    occystrap: Occystrap, ca_bundle: Path | None, *args: str, http2: bool = True
) -> list[str]:
    flags = ["--ca-cert", str(ca_bundle)] if ca_bundle else ["--insecure"]
    if not http2:
        flags.append("--no-http2")
    return occystrap.command(*flags, *args)


def skopeo_command(source: str, dest: str, src_args=(), dest_args=()) -> list[str]:
    return [require_binary(SKOPEO_BINARY), "copy", "--quiet", *src_args, *dest_args, source, dest]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc/PID/stat (utime, stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    command: list[str],
    scratch: Path,
    occystrap: Occystrap,
    cache: Path,
    registries: dict[str, RegistryServer],
) -> Measurement:
    """Run `command` under /usr/bin/time (occystrap's blob cache in `cache`); wall time, CPU
    and peak RSS, and the CPU the `registries` spent meanwhile (the source one is shared
    between runs, so it is the difference around this one)."""
    rss_file = scratch / "rss.txt"  # peak RSS KB, user s, system s
    env = {**os.environ, "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(cache)}
    if occystrap.source is not None:
        env["PYTHONPATH"] = str(occystrap.source)
    registry_start = {name: process_cpu_seconds(r.pid) for name, r in registries.items()}
    started = time.monotonic()
    result = subprocess.run(
        [TIME_BINARY, "-f", "%M %U %S", "-o", str(rss_file), *command],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        env=env,
        cwd=scratch,  # not the checkout: `python -m` would import occystrap from the cwd
        check=False,
    )
    elapsed = time.monotonic() - started
    registry_cpu = {
        name: round(process_cpu_seconds(r.pid) - registry_start[name], 2)
        for name, r in registries.items()
    }
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    peak_kb, user, system = rss_file.read_text().split()[-3:]
    return Measurement(
        round(elapsed, 3),
        round(int(peak_kb) / 1024, 1),
        round(float(user) + float(system), 2),
        registry_cpu,
    )


def blob_bytes(registry: RegistryServer, reference: str) -> int:
    """Bytes of the blobs (config and layers) the manifest of `reference` lists: what a run
    that pulled, copied or pushed that image moved."""
    raw = subprocess.run(
        [require_binary(SKOPEO_BINARY), "inspect", "--raw", *registry.skopeo_args()]
        + [f"docker://{reference}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = json.loads(raw)
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def ca_bundle(work: Path, *registries: RegistryServer) -> Path | None:
    """One PEM file trusting every TLS registry of the run (occystrap takes one --ca-cert)."""
    pems = [r.ca_cert.read_text() for r in registries if r.ca_cert is not None]
    if not pems:
        return None
    bundle = work / "ca-bundle.pem"
    bundle.write_text("".join(pems))
    return bundle


def operations(
    occystrap: Occystrap,
    source: RegistryServer,
    dest: RegistryServer,
    work: Path,
    archive: Path,
    tls: bool,
):
    """(operation, tool, command, moved) for one round; every write goes to the fresh `dest`.

    `moved` is (registry, image) whose manifest lists the blobs the run moves: the source image
    for a pull, the image the run writes for a push or copy (a push uploads its own
    compression), None for the repeat push, which is to move nothing.
    """
    src_ref = f"{source.host}/bench:src"
    out_tar = work / "out.tar"
    bundle = ca_bundle(work, source, dest)
    variants = [("occystrap", True)] + ([("occystrap --no-http2", False)] if tls else [])
    for tool, http2 in variants:
        repo = tool.replace(" ", "").replace("-", "")
        yield (
            "pull to tar",
            tool,
            occystrap_command(
                occystrap,
                bundle,
                "process",
                f"registry://{src_ref}",
                f"tar://{out_tar}",
                http2=http2,
            ),
            (source, src_ref),
        )
        yield (
            "push from tar",
            tool,
            occystrap_command(
                occystrap,
                bundle,
                "process",
                f"tar://{archive}",
                f"registry://{dest.host}/push-{repo}:t",
                http2=http2,
            ),
            (dest, f"{dest.host}/push-{repo}:t"),
        )
        yield (
            "registry to registry",
            tool,
            occystrap_command(
                occystrap,
                bundle,
                "process",
                f"registry://{src_ref}",
                f"registry://{dest.host}/copy-{repo}:t",
                http2=http2,
            ),
            (dest, f"{dest.host}/copy-{repo}:t"),
        )
        yield (
            "repeat push",
            tool,
            occystrap_command(
                occystrap,
                bundle,
                "process",
                f"tar://{archive}",
                f"registry://{dest.host}/again-{repo}:t",
                http2=http2,
            ),
            None,
        )
    src_args, dest_args = source.skopeo_src_args(), dest.skopeo_dest_args()
    yield (
        "pull to tar",
        "skopeo",
        skopeo_command(f"docker://{src_ref}", f"docker-archive:{out_tar}", src_args),
        (source, src_ref),
    )
    yield (
        "push from tar",
        "skopeo",
        skopeo_command(
            f"docker-archive:{archive}", f"docker://{dest.host}/push-sk:t", dest_args=dest_args
        ),
        (dest, f"{dest.host}/push-sk:t"),
    )
    yield (
        "registry to registry",
        "skopeo",
        skopeo_command(
            f"docker://{src_ref}", f"docker://{dest.host}/copy-sk:t", src_args, dest_args
        ),
        (dest, f"{dest.host}/copy-sk:t"),
    )
    yield (
        "repeat push",
        "skopeo",
        skopeo_command(
            f"docker-archive:{archive}", f"docker://{dest.host}/again-sk:t", dest_args=dest_args
        ),
        None,
    )


def toolbox_rounds(source: RegistryServer, work: Path, occystrap: Occystrap, tls: bool):
    """Start-up-bound commands scripts call in loops: occystrap's against skopeo's."""
    bundle = ca_bundle(work, source)
    image, repository = f"{source.host}/bench:src", f"{source.host}/bench"
    src_args = source.skopeo_args()  # inspect and list-tags take no --src- prefix
    skopeo = require_binary(SKOPEO_BINARY)
    pairs = [
        ("--version", occystrap.command("--version"), [skopeo, "--version"]),
        (
            "digest",
            occystrap_command(occystrap, bundle, "digest", f"registry://{image}"),
            [skopeo, "inspect", *src_args, "--format", "{{.Digest}}", f"docker://{image}"],
        ),
        (
            "tags",
            occystrap_command(occystrap, bundle, "tags", f"registry://{repository}"),
            [skopeo, "list-tags", *src_args, f"docker://{repository}"],
        ),
    ]
    for run in range(TOOLBOX_RUNS):
        for operation, occystrap_command_line, skopeo_command_line in pairs:
            tools = [("occystrap", occystrap_command_line), ("skopeo", skopeo_command_line)]
            for tool, command in tools if run % 2 else reversed(tools):
                yield (
                    operation,
                    tool,
                    measure(command, work, occystrap, work / "cache-toolbox", {"source": source}),
                )


def bench_transport(
    image: Path, tls: bool, runs: int, only: set[str], occystrap: Occystrap, toolbox: bool
) -> list[Row]:
    """All runs against one source registry; each run writes to a fresh destination registry.

    A fresh destination (new port, empty storage) per run keeps skopeo's blob-info cache and
    the registry's existing blobs from turning a push into a cross-repository mount.
    """
    name = "https (TLS)" if tls else "http"
    rows: dict[tuple[str, str], Row] = {}
    with tempfile.TemporaryDirectory(prefix="occystrap-bench-", dir=RESULTS_DIR) as tmp:
        work = Path(tmp)
        with RegistryServer(work / "source", tls=tls) as source:
            if image.suffix == ".tar":  # a docker-save tarball: the push source as it is
                archive = image
                subprocess.run(
                    skopeo_command(
                        f"docker-archive:{archive}",
                        f"docker://{source.host}/bench:src",
                        dest_args=source.skopeo_dest_args(),
                    ),
                    check=True,
                )
            else:
                push_with_skopeo(image, source, "bench", "src")
                archive = work / "source.tar"
                subprocess.run(
                    skopeo_command(
                        f"docker://{source.host}/bench:src",
                        f"docker-archive:{archive}",
                        source.skopeo_src_args(),
                    ),
                    check=True,
                )
            if toolbox:
                for operation, tool, result in toolbox_rounds(source, work, occystrap, tls):
                    row = rows.setdefault((operation, tool), Row(name, operation, tool))
                    row.runs.append(result)
            for run in range(runs):
                for operation, tool, result in _one_round(
                    source, work, archive, run, tls, only, occystrap
                ):
                    row = rows.setdefault((operation, tool), Row(name, operation, tool))
                    row.runs.append(result)
                    print(
                        f"  {name:11} {operation:20} {tool:22} run {run + 1}: "
                        f"{result.seconds:7.2f} s {result.cpu_seconds:7.2f} CPU-s"
                        f" {sum(result.registry_cpu_seconds.values()):7.2f} registry CPU-s"
                        f" {result.peak_rss_mb:7.1f} MB",
                        flush=True,
                    )
    rank = {operation: position for position, operation in enumerate(TRANSFER_OPERATIONS)}
    return sorted(
        rows.values(),
        key=lambda r: (
            r.transport,
            rank.get(r.operation, len(rank)),  # transfers first, then the toolbox
            r.operation,
            r.tool != "skopeo",
            r.tool,
        ),
    )


def _one_round(
    source: RegistryServer,
    work: Path,
    archive: Path,
    run: int,
    tls: bool,
    only,
    occystrap: Occystrap,
):
    """Each operation writes to its own fresh registry, so no tool finds blobs already there,
    and each tool has its own blob cache, so no occystrap variant mounts what another uploaded.

    "repeat push" is the push again into another repository of the same registry, right after
    each tool's own (untimed) first push: what each tool's blob cache remembers is the point.
    """
    for operation in TRANSFER_OPERATIONS:
        if only and operation.split()[0] not in only:
            continue
        dest_dir = work / "dest"
        with RegistryServer(dest_dir, tls=tls) as dest:
            every = list(operations(occystrap, source, dest, work, archive, tls))
            ops = [op for op in every if op[0] == operation]
            if run % 2:  # alternate who goes first
                ops.reverse()
            registries = {"source": source, "destination": dest}
            for _, tool, command, moved in ops:
                cache = work / f"cache-{run}-{operation}-{tool}".replace(" ", "-")
                if operation == "repeat push":
                    first = next(c for o, t, c, _ in every if o == "push from tar" and t == tool)
                    measure(first, work, occystrap, cache, registries)
                (work / "out.tar").unlink(missing_ok=True)
                result = measure(command, work, occystrap, cache, registries)
                if moved is not None:
                    result.moved_bytes = blob_bytes(*moved)
                shutil.rmtree(cache, ignore_errors=True)
                yield operation, tool, result
        shutil.rmtree(dest_dir, ignore_errors=True)


def ratio(value: float, reference: float | None) -> str:
    """`value` as a multiple of skopeo's ("-" where skopeo's is missing or zero)."""
    return f"{value / reference:.2f}x" if reference else "-"


def print_table(rows: list[Row]) -> None:
    skopeo = {(r.transport, r.operation): r for r in rows if r.tool == "skopeo"}
    header = (
        f"{'transport':12} {'operation':21} {'tool':22} {'median s':>9} {'vs skopeo':>10}"
        f" {'CPU s':>7} {'CPU vs':>7} {'CPU s/GB':>9} {'reg CPU s':>10} {'peak RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        reference = skopeo.get((row.transport, row.operation))
        per_gb = row.median_cpu_seconds_per_gb
        print(
            f"{row.transport:12} {row.operation:21} {row.tool:22} {row.median_seconds:9.2f}"
            f" {ratio(row.median_seconds, reference and reference.median_seconds):>10}"
            f" {row.median_cpu_seconds:7.2f}"
            f" {ratio(row.median_cpu_seconds, reference and reference.median_cpu_seconds):>7}"
            f" {'-' if per_gb is None else f'{per_gb:.2f}':>9}"
            f" {row.median_registry_cpu_seconds:10.2f} {row.peak_rss_mb:12.1f}"
        )


MARKDOWN_HEADER = (
    "| operation | skopeo s | occystrap s | vs skopeo (wall) | skopeo CPU s | occystrap CPU s"
    " | vs skopeo (CPU) | CPU s per GB (occystrap / skopeo)"
    " | registry CPU s (occystrap's run / skopeo's run) | peak RSS MB (occystrap / skopeo) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def markdown_table(rows: list[Row], heading: str) -> str:
    """The summary as docs/performance.md's tables show it: one line per occystrap variant
    against skopeo, under `heading` (what was run, where and when)."""
    skopeo = {(r.transport, r.operation): r for r in rows if r.tool == "skopeo"}
    several_transports = len({r.transport for r in rows}) > 1
    lines = [heading, "", MARKDOWN_HEADER]
    for row in rows:
        reference = skopeo.get((row.transport, row.operation))
        if row.tool == "skopeo" or reference is None:
            continue
        label = row.operation if row.operation in TRANSFER_OPERATIONS else f"`{row.operation}`"
        if row.tool != "occystrap":
            label += f" (`{row.tool.removeprefix('occystrap ')}`)"
        if several_transports:
            label += f", {row.transport}"
        per_gb = (row.median_cpu_seconds_per_gb, reference.median_cpu_seconds_per_gb)
        cells = [
            label,
            f"{reference.median_seconds:.2f}",
            f"{row.median_seconds:.2f}",
            ratio(row.median_seconds, reference.median_seconds),
            f"{reference.median_cpu_seconds:.2f}",
            f"{row.median_cpu_seconds:.2f}",
            ratio(row.median_cpu_seconds, reference.median_cpu_seconds),
            "" if None in per_gb else f"{per_gb[0]:.2f} / {per_gb[1]:.2f}",
            f"{row.median_registry_cpu_seconds:.2f} / {reference.median_registry_cpu_seconds:.2f}",
            f"{row.peak_rss_mb:.1f} / {reference.peak_rss_mb:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def commit_of(code: Path) -> tuple[str, bool]:
    """The short commit of the occystrap timed, and whether its tree has uncommitted edits."""
    git = ["git", "-C", str(code)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    edited = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return commit, bool(edited)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="compressed image size")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--tls", action="store_true", help="only the TLS registry (HTTP/2)")
    which.add_argument("--plain", action="store_true", help="only the plain HTTP registry")
    parser.add_argument(
        "--only",
        action="append",
        choices=["pull", "push", "registry", "repeat", "none"],
        help="operations to time (none: only --toolbox)",
    )
    parser.add_argument(
        "--image",
        choices=["synthetic", "real", "huge"],
        default="synthetic",
        help="synthetic: --layers of 16-symbol random bytes; real: a layer per tree of this"
        " machine's files; huge: one layer of --huge-mb (2/3 random, 1/3 text; takes minutes)",
    )
    parser.add_argument("--huge-mb", type=int, default=3072)
    parser.add_argument(
        "--toolbox",
        action="store_true",
        help=f"also time --version, digest and tags ({TOOLBOX_RUNS} runs each)",
    )
    parser.add_argument(
        "--code", type=Path, default=REPO_ROOT, help="occystrap source tree to time (default: here)"
    )
    parser.add_argument(
        "--editable",
        action="store_true",
        help="time --code on PYTHONPATH with this interpreter (its editable installs' import"
        " finders included) instead of installing it, as users do, into a venv of its own",
    )
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the summary to FILE as a Markdown table for docs/performance.md,"
        " headed by the command line, commit, time and load average",
    )
    args = parser.parse_args()
    started, load_at_start = datetime.datetime.now(datetime.UTC), os.getloadavg()
    code = args.code.resolve()
    require_binary(TIME_BINARY)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="occystrap-install-", dir=RESULTS_DIR) as work:
        occystrap = Occystrap(sys.executable, code) if args.editable else install(code, Path(work))
        run_benchmark(args, code, occystrap, started, load_at_start)


def run_benchmark(
    args: argparse.Namespace,
    code: Path,
    occystrap: Occystrap,
    started: datetime.datetime,
    load_at_start: tuple[float, float, float],
) -> None:
    if args.image == "synthetic":
        image = cached_layout(args.size_mb, args.layers)
    else:
        image = cached_archive(args.image, args.huge_mb)
    modes = [True] if args.tls else [False] if args.plain else [False, True]
    rows: list[Row] = []
    for tls in modes:
        rows += bench_transport(
            image, tls, args.runs, set(args.only or ()), occystrap, args.toolbox
        )
    finished, load_at_end = datetime.datetime.now(datetime.UTC), os.getloadavg()
    print()
    print_table(rows)
    commit, uncommitted = commit_of(code)
    result_file = RESULTS_DIR / f"compare-{finished:%Y%m%dT%H%M%SZ}.json"
    result_file.write_text(
        json.dumps(
            {
                "arguments": {**vars(args), "code": str(code)},
                "commit": commit,
                "uncommitted_changes": uncommitted,
                "started": started.isoformat(),
                "finished": finished.isoformat(),
                "load_average": {"start": load_at_start, "end": load_at_end},
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "skopeo": subprocess.run(
                        [require_binary(SKOPEO_BINARY), "--version"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout.strip(),
                },
                "rows": [
                    {
                        **asdict(row),
                        "median_seconds": row.median_seconds,
                        "median_cpu_seconds": row.median_cpu_seconds,
                        "median_registry_cpu_seconds": row.median_registry_cpu_seconds,
                        "median_cpu_seconds_per_gb": row.median_cpu_seconds_per_gb,
                        "peak_rss_mb": row.peak_rss_mb,
                    }
                    for row in rows
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten {result_file}")
    if args.markdown:
        medians = ("one run" if args.runs == 1 else f"median of {args.runs} runs") + (
            f"; toolbox rows median of {TOOLBOX_RUNS}" if args.toolbox else ""
        )
        heading = (
            f"`python3 benchmarks/compare_skopeo.py {shlex.join(sys.argv[1:])}` at `{commit}`"
            f"{' with uncommitted changes' if uncommitted else ''},"
            f" {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC, load average (1 min)"
            f" {load_at_start[0]:.2f} at the start and {load_at_end[0]:.2f} at the end"
            f" ({medians}; raw data `{result_file.name}`):"
        )
        Path(args.markdown).write_text(markdown_table(rows, heading))
        print(f"written {args.markdown}")


if __name__ == "__main__":
    main()
