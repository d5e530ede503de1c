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


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0  # user + system, all threads


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


def measure(command: list[str], scratch: Path, occystrap: Occystrap, cache: Path) -> Measurement:
    """Run `command` under /usr/bin/time (occystrap's blob cache in `cache`); wall time and
    peak RSS."""
    rss_file = scratch / "rss.txt"  # peak RSS KB, user s, system s
    env = {**os.environ, "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(cache)}
    if occystrap.source is not None:
        env["PYTHONPATH"] = str(occystrap.source)
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
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    peak_kb, user, system = rss_file.read_text().split()[-3:]
    return Measurement(
        round(elapsed, 3), round(int(peak_kb) / 1024, 1), round(float(user) + float(system), 2)
    )


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
    """(operation, tool, command) for one round; every write goes to the fresh `dest`."""
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
        )
    src_args, dest_args = source.skopeo_src_args(), dest.skopeo_dest_args()
    yield (
        "pull to tar",
        "skopeo",
        skopeo_command(f"docker://{src_ref}", f"docker-archive:{out_tar}", src_args),
    )
    yield (
        "push from tar",
        "skopeo",
        skopeo_command(
            f"docker-archive:{archive}", f"docker://{dest.host}/push-sk:t", dest_args=dest_args
        ),
    )
    yield (
        "registry to registry",
        "skopeo",
        skopeo_command(
            f"docker://{src_ref}", f"docker://{dest.host}/copy-sk:t", src_args, dest_args
        ),
    )
    yield (
        "repeat push",
        "skopeo",
        skopeo_command(
            f"docker-archive:{archive}", f"docker://{dest.host}/again-sk:t", dest_args=dest_args
        ),
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
                yield operation, tool, measure(command, work, occystrap, work / "cache-toolbox")


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
                        f" {result.peak_rss_mb:7.1f} MB",
                        flush=True,
                    )
    return sorted(rows.values(), key=lambda r: (r.transport, r.operation, r.tool != "skopeo"))


def _one_round(
    source: RegistryServer,
    work: Path,
    archive: Path,
    run: int,
    tls: bool,
    only,
    occystrap: Occystrap,
):
    """Each operation writes to its own fresh registry, so no tool finds blobs already there.

    "repeat push" is the push again into another repository of the same registry, right after
    each tool's own (untimed) first push: what each tool's blob cache remembers is the point.
    """
    for operation in ("pull to tar", "push from tar", "registry to registry", "repeat push"):
        if only and operation.split()[0] not in only:
            continue
        dest_dir = work / "dest"
        cache = work / f"cache-{run}-{operation.replace(' ', '-')}"
        with RegistryServer(dest_dir, tls=tls) as dest:
            every = list(operations(occystrap, source, dest, work, archive, tls))
            ops = [op for op in every if op[0] == operation]
            if run % 2:  # alternate who goes first
                ops.reverse()
            for _, tool, command in ops:
                if operation == "repeat push":
                    first = next(c for o, t, c in every if o == "push from tar" and t == tool)
                    measure(first, work, occystrap, cache)
                (work / "out.tar").unlink(missing_ok=True)
                yield operation, tool, measure(command, work, occystrap, cache)
        shutil.rmtree(dest_dir, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def print_table(rows: list[Row]) -> None:
    skopeo = {(r.transport, r.operation): r for r in rows if r.tool == "skopeo"}
    header = (
        f"{'transport':12} {'operation':21} {'tool':22} {'median s':>9} {'vs skopeo':>10}"
        f" {'CPU s':>7} {'CPU vs':>7} {'peak RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        reference = skopeo.get((row.transport, row.operation))
        ratio = f"{row.median_seconds / reference.median_seconds:.2f}x" if reference else "-"
        cpu_ratio = (
            f"{row.median_cpu_seconds / reference.median_cpu_seconds:.2f}x"
            if reference and reference.median_cpu_seconds
            else "-"
        )
        print(
            f"{row.transport:12} {row.operation:21} {row.tool:22} {row.median_seconds:9.2f}"
            f" {ratio:>10} {row.median_cpu_seconds:7.2f} {cpu_ratio:>7} {row.peak_rss_mb:12.1f}"
        )


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
    args = parser.parse_args()
    code = args.code.resolve()
    require_binary(TIME_BINARY)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="occystrap-install-", dir=RESULTS_DIR) as work:
        occystrap = Occystrap(sys.executable, code) if args.editable else install(code, Path(work))
        run_benchmark(args, code, occystrap)


def run_benchmark(args: argparse.Namespace, code: Path, occystrap: Occystrap) -> None:
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
    print()
    print_table(rows)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result_file = RESULTS_DIR / f"compare-{stamp}.json"
    result_file.write_text(
        json.dumps(
            {
                "arguments": {**vars(args), "code": str(code)},
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
                        "peak_rss_mb": row.peak_rss_mb,
                    }
                    for row in rows
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten {result_file}")


if __name__ == "__main__":
    main()
