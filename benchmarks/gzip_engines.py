"""Time and size of occystrap's gzip at every level and thread count, against zlib level 6.

A script, not a test. Two inputs, both held in memory so the disk does not take part:
the benchmark image's layer content (seeded random bytes over 16 symbols, as in
compare_skopeo.py) and a tar of this Python's standard library (text, bytecode and shared
objects, like a real layer). Prints one row per engine, level and thread count: median of
--runs, MB/s of uncompressed input, and output size as a share of the input; then inflate
speed through occystrap's Decompressor (ISA-L and zlib).

    python3 benchmarks/gzip_engines.py [--size-mb 64] [--runs 3] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import sysconfig
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.compare_skopeo import layer_content  # noqa: E402
from occystrap import compression  # noqa: E402


def stdlib_tar(limit: int) -> bytes:
    """A tar of the Python standard library, cut at `limit` bytes (a prefix of a tar is
    still realistic layer data)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for root, _dirs, files in sorted(os.walk(sysconfig.get_paths()["stdlib"])):
            for name in sorted(files):
                tar.add(os.path.join(root, name))
                if out.tell() >= limit:
                    return out.getvalue()[:limit]
    return out.getvalue()[:limit]


def median_seconds(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds (all threads). On a shared machine CPU time shows the
    work itself; wall time shows what threads gain, and suffers from other load."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def zlib6_single_stream(data: bytes) -> bytes:
    """What occystrap did before ISA-L: one zlib level-6 stream over the whole layer."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, 31)
    return deflater.compress(data) + deflater.flush()


def occystrap_gzip(data: bytes, level: int, threads: int) -> bytes:
    out = io.BytesIO()
    compression.compress_stream(io.BytesIO(data), out, compression.GZIP, level, threads)
    return out.getvalue()


def inflate(blob: bytes) -> None:
    with compression.decompressing_reader(io.BytesIO(blob), compression.GZIP) as reader:
        while reader.read(compression.CHUNK_SIZE):
            pass


def report(label: str, data: bytes, seconds: tuple[float, float], blob: bytes) -> None:
    wall, cpu = seconds
    megabytes = len(data) / 1e6
    print(
        f"  {label:34} wall {wall:6.3f} s {megabytes / wall:6.1f} MB/s"
        f"  CPU {cpu:6.3f} s {megabytes / cpu:6.1f} MB/CPU-s"
        f"  size {100 * len(blob) / len(data):5.1f} % ({len(blob)} B)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    thread_counts = [int(part) for part in args.threads.split(",")]
    inputs = {"16-symbol random (benchmark layer)": layer_content(size, 0)}
    inputs["tar of the Python stdlib"] = stdlib_tar(size)
    installed = compression.GZIP_ENGINE
    sys.modules["isal"] = None  # type: ignore[assignment]  # load the fallback engine too
    fallback = compression.load_gzip_engine()
    del sys.modules["isal"]
    print(f"{os.cpu_count()} CPUs, engines: {installed.name}, {fallback.name}")
    for name, data in inputs.items():
        print(f"{name}: {len(data) / 1e6:.1f} MB")
        blob = zlib6_single_stream(data)
        seconds = median_seconds(lambda data=data: zlib6_single_stream(data), args.runs)
        report("zlib 6, one stream (before)", data, seconds, blob)
        for engine in (installed, fallback):
            compression.GZIP_ENGINE = engine
            levels = engine.levels if engine is installed else (1, 6)
            for level in levels:
                for threads in thread_counts:
                    blob = occystrap_gzip(data, level, threads)
                    seconds = median_seconds(
                        lambda d=data, lv=level, t=threads: occystrap_gzip(d, lv, t), args.runs
                    )
                    report(f"{engine.name} level {level}, {threads} thread(s)", data, seconds, blob)
        blob = zlib6_single_stream(data)
        for engine in (installed, fallback):
            compression.GZIP_ENGINE = engine
            wall, cpu = median_seconds(lambda blob=blob: inflate(blob), args.runs)
            print(
                f"  inflate via Decompressor, {engine.name:14} wall {wall:6.3f} s"
                f" {len(blob) / 1e6 / wall:6.1f} MB/s compressed in"
                f" ({len(blob) / 1e6 / cpu:6.1f} per CPU-s),"
                f" {len(data) / 1e6 / wall:6.1f} MB/s out",
                flush=True,
            )
        compression.GZIP_ENGINE = installed


if __name__ == "__main__":
    main()
