"""mounts://PATH: an image's layers laid out for overlayfs, and the command that mounts them.

Each layer is expanded into its own directory, `PATH/layers/<n>-<diff_id hex12>/` (n from 0
for the lowest), in overlayfs form: a whiteout is a 0:0 character device and an opaque
directory carries `trusted.overlay.opaque=y`, so the kernel merges the layers exactly as a
container runtime would. `PATH/lowerdir` holds the `lowerdir=` value (topmost layer first);
`PATH/upper`, `PATH/work` and `PATH/merged` are the empty upper, work and mount directories
that `PATH/mount.sh` (the command, also printed) uses. Everything is staged next to PATH and
renamed into place only once complete; writing whiteouts and trusted attributes needs root.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from occystrap.destinations import check_whole_directory_destination, staged_whole_directory
from occystrap.endpoints import (
    EXPAND_FORM,
    Endpoint,
    Scheme,
    path_and_expand_policy,
)
from occystrap.errors import OccystrapError, UsageError
from occystrap.extract import DEFAULT_POLICY, ExpandPolicy
from occystrap.image import Image, ImageLike
from occystrap.pipeline import RunContext
from occystrap.rootfs import expand_layers

SCHEME_NAME = "mounts"
SCRIPT_NAME = "mount.sh"
MOUNT_OPTIONS_LIMIT = 4095  # the kernel copies mount options into one page, NUL included


@dataclass
class MountsURI(Endpoint):
    path: Path
    policy: ExpandPolicy = DEFAULT_POLICY

    def open_output(self, ctx: RunContext) -> MountsOutput:
        if os.geteuid() != 0:
            raise OccystrapError(
                f"{self.shown} needs root: overlayfs whiteouts are character devices and opaque"
                " directories need trusted.* attributes; run occystrap as root"
            )
        path = Path(os.path.abspath(self.path))
        _overlay_escape(str(path))  # a path mount options cannot carry fails before downloads
        check_whole_directory_destination(path, SCHEME_NAME)
        refuse_if_mounted(path)
        return MountsOutput(path, ctx, self.policy)


class MountsOutput:
    """Writes one image's layers in overlayfs form (see the module docstring)."""

    def __init__(self, path: Path, ctx: RunContext, policy: ExpandPolicy = DEFAULT_POLICY) -> None:
        self.path, self.ctx, self.policy = path, ctx, policy
        self.mount_command: str | None = None  # once written, for library callers

    def write(self, item: ImageLike) -> None:
        if not isinstance(item, Image):
            raise OccystrapError(f"mounts://{self.path} holds one image, not an index")
        if not item.layers:
            raise OccystrapError("the image has no layers, so there is nothing to mount")
        names = [
            f"{position:03d}-{layer.diff_id.partition(':')[2][:12]}"
            for position, layer in enumerate(item.layers)
        ]
        topmost_first = names[::-1]
        lowerdir = _lowerdir([str(self.path / "layers" / name) for name in topmost_first])
        command = mount_command(self.path, topmost_first)
        with staged_whole_directory(self.path, SCHEME_NAME) as staging:
            for name in ("layers", "upper", "work", "merged"):
                (staging / name).mkdir(mode=0o755)
            for name in names:
                (staging / "layers" / name).mkdir(mode=0o755)
            layers = staging / "layers"
            expand_layers(item, self.ctx, self.policy, lambda n: layers / names[n], overlay=True)
            (staging / "lowerdir").write_text(lowerdir + "\n")
            script = staging / SCRIPT_NAME
            script.write_text(
                f"#!/bin/sh\n# Mounts the layers of {item.source} at {self.path / 'merged'}"
                f" (as root); unmount with: umount {shlex.quote(str(self.path / 'merged'))}\n"
                f"{command}\n"
            )
            script.chmod(0o755)
            refuse_if_mounted(self.path)  # the old output is about to be removed
        self.mount_command = command
        sys.stdout.write(command + "\n")
        sys.stdout.flush()


def _overlay_escape(path: str) -> str:
    """A directory for `lowerdir=`: overlayfs reads a backslash-escaped ':' as part of it."""
    if "," in path:
        raise UsageError(
            f"{path} contains ',', which mount options cannot carry; choose a path without it"
        )
    return path.replace("\\", "\\\\").replace(":", "\\:")


def _lowerdir(directories: list[str]) -> str:
    return ":".join(_overlay_escape(directory) for directory in directories)


def _mount_options(lower: list[str], upper: str, work: str) -> str:
    return (
        f"lowerdir={_lowerdir(lower)},upperdir={_overlay_escape(upper)},"
        f"workdir={_overlay_escape(work)}"
    )


def mount_command(path: Path, layers_topmost_first: list[str]) -> str:
    """The shell command that merges the layers (directory names under `path/layers`) at
    `path/merged`: with absolute paths when they fit in the one page the kernel takes mount
    options in, else run from `path/layers` with the short names."""
    layers = path / "layers"
    options = _mount_options(
        [str(layers / name) for name in layers_topmost_first],
        str(path / "upper"),
        str(path / "work"),
    )
    if len(options) <= MOUNT_OPTIONS_LIMIT:
        return shlex.join(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(path / "merged")]
        )
    options = _mount_options(layers_topmost_first, "../upper", "../work")
    if len(options) > MOUNT_OPTIONS_LIMIT:
        raise OccystrapError(
            f"the image has {len(layers_topmost_first)} layers, more than one overlay mount"
            " can name; flatten the image first"
        )
    mount = shlex.join(["mount", "-t", "overlay", "overlay", "-o", options, "../merged"])
    return f"cd {shlex.quote(str(layers))} && {mount}"


def _unescape_mountinfo(field: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def refuse_if_mounted(path: Path) -> None:
    """Refuse to replace layers an overlay mount still uses, or a directory mounted upon."""
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            lines = mountinfo.read().splitlines()
    except OSError:
        return
    inside = os.path.realpath(path) + "/"  # mountinfo names real paths
    for line in lines:
        fields, _, filesystem = line.partition(" - ")
        mount_point = _unescape_mountinfo(fields.split(" ")[4])
        if (mount_point + "/").startswith(inside) or inside in _unescape_mountinfo(filesystem):
            raise OccystrapError(
                f"{path} is in use by the mount at {mount_point}; unmount it first"
                f" (umount {shlex.quote(mount_point)})"
            )


def _parse(text: str, rest: str) -> MountsURI:
    return MountsURI(*path_and_expand_policy(text, rest))


SCHEME = Scheme(
    SCHEME_NAME,
    f"mounts://PATH[?{EXPAND_FORM}]",
    _parse,
    source=False,
)
