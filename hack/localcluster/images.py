"""The project's container images, built here with podman (no Docker engine, no registry) and cached.

    python -m localcluster.images [NAMES]   # builds what is missing (default: all), prints reference and archive

Images (``IMAGES``):
  debian       a Debian bookworm base from Debian's packages (mmdebstrap): python3, venv, pip, ca-certificates
  pause        the pod sandbox: image-sources/pause.c, compiled static, FROM scratch
  busybox      for test pods: Debian's static busybox (sh, wget, nc, nslookup, ...), FROM scratch
  operator     Dockerfile.operator on the Debian base
  trainer-cpu  Dockerfile.trainer with ACCELERATOR=cpu on the Debian base

Each image is keyed by a hash of exactly what goes into it: its Dockerfile, build arguments (a base image by its
own key), and every file its COPY instructions take from the build context (for Debian, the mmdebstrap command).
It is kept in ``${LONGALIGN_CACHE:-~/.cache/longalign}/images/`` as a docker-archive tar that a node's containerd
imports (``ctr -n k8s.io images import``) and skopeo copies to a registry, and in podman's own store (what
``podman run`` uses), under ``localhost/longalign-<name>:<12 hex of the key>``. A change to any input builds a
new image; the two newest of each name are kept.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = Path(__file__).resolve().parent / "image-sources"
# This host trusts an extra certificate authority for registry traffic (PyPI): builds mount its bundle read-only,
# never COPY it into an image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEBIAN_CONFIG = ('CMD ["/bin/bash"]', "ENV LANG=C.UTF-8")  # `podman import --change`s of the Debian base
KEEP = 2  # archives (and podman images) kept per image name


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the image, the failing step and its log."""


@dataclass(frozen=True)
class BuiltImage:
    """An image ready to use: ``reference`` in podman's store and ``archive`` (docker-archive) on disk."""

    name: str
    reference: str
    archive: Path


@dataclass(frozen=True)
class Recipe:
    """How one image is built: a Dockerfile and its context, or (``dockerfile=None``) the Debian root filesystem."""

    dockerfile: Path | None
    context: Path = REPO
    base: str | None = None  # another image of IMAGES, passed as build argument BASE_IMAGE
    build_args: dict[str, str] = field(default_factory=dict)
    prepare: str | None = None  # a file this module puts into a scratch context first: "pause" or "busybox"


IMAGES: dict[str, Recipe] = {
    "debian": Recipe(dockerfile=None),
    "pause": Recipe(SOURCES / "pause.Dockerfile", prepare="pause"),
    "busybox": Recipe(SOURCES / "busybox.Dockerfile", prepare="busybox"),
    "operator": Recipe(REPO / "Dockerfile.operator", base="debian"),
    "trainer-cpu": Recipe(REPO / "Dockerfile.trainer", base="debian", build_args={"ACCELERATOR": "cpu"}),
}


def local_reference(name: str) -> str:
    """The stable name under which the local cluster's nodes also know image ``name``, whatever its key
    (the nodes' store tags it: nodestore.py): what the shipped examples name, e.g. tiny-cluster.yaml's image."""
    return f"localhost/longalign-{name}:local"


def cache_dir() -> Path:
    """Where the image archives live: ``$LONGALIGN_CACHE/images`` (default ``~/.cache/longalign/images``)."""
    root = os.environ.get("LONGALIGN_CACHE")
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longalign"
    return (Path(root) if root else default) / "images"


def ensure_images(names: Iterable[str] = tuple(IMAGES)) -> list[BuiltImage]:
    """``ensure_image`` for each name, in order."""
    return [ensure_image(name) for name in names]


def ensure_image(name: str) -> BuiltImage:
    """The image ``name`` (a key of ``IMAGES``), built first if its key has no archive yet, and in podman's store."""
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}: choose from {', '.join(IMAGES)}")
    if shutil.which("podman") is None:
        raise ImageBuildError("podman is not installed (hack/host-packages.sh installs it)")
    recipe = IMAGES[name]
    base = ensure_image(recipe.base) if recipe.base else None
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f"longalign-image-{name}-") as scratch,
        open(cache / f"{name}.lock", "w") as lock,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per name at a time, across processes
        if recipe.dockerfile is not None:  # built from a copy too, like the context
            copy = Path(scratch) / recipe.dockerfile.name
            recipe = replace(recipe, dockerfile=Path(shutil.copy(recipe.dockerfile, copy)))
        context = _prepare_context(recipe, Path(scratch))
        build_args = {**({"BASE_IMAGE": base.reference} if base else {}), **recipe.build_args}
        key = content_key(recipe, context, build_args)
        image = BuiltImage(name, f"localhost/longalign-{name}:{key[:12]}", cache / f"{name}-{key[:12]}.tar")
        have_archive, in_store = image.archive.exists(), _podman_has(image.reference)
        if have_archive and not in_store:
            _run(["podman", "load", "-i", str(image.archive)], image, "podman load")
        elif not have_archive:
            if not in_store:
                _build(image, recipe, context, build_args, Path(scratch))
            partial = image.archive.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            try:
                _run(
                    ["podman", "save", "--format", "docker-archive", "-o", str(partial), image.reference],
                    image,
                    "podman save",
                )
                partial.replace(image.archive)
            finally:
                partial.unlink(missing_ok=True)
            _prune(name, cache)
    return image


def _prepare_context(recipe: Recipe, scratch: Path) -> Path:
    """The build context, a scratch folder: a copy of the files the Dockerfile copies (so the build sees exactly
    what the key hashed, even if the repository changes meanwhile), or the one file the image is made of."""
    context = scratch / "context"
    context.mkdir()
    if recipe.prepare == "pause":
        cc = ["gcc", "-static", "-Os", "-s", "-Wall", "-Werror", "-o", str(context / "pause"), str(SOURCES / "pause.c")]
        out = subprocess.run(cc, capture_output=True, text=True)
        if out.returncode != 0:
            raise ImageBuildError(
                f"pause: {shlex.join(cc)} failed (install gcc and libc6-dev: "
                f"hack/host-packages.sh):\n{out.stdout}{out.stderr}"
            )
    elif recipe.prepare == "busybox":
        busybox = shutil.which("busybox") or "/bin/busybox"
        if subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:  # ldd fails on static binaries
            raise ImageBuildError(
                f"busybox: {busybox} is not a static binary (install Debian's busybox-static: hack/host-packages.sh)"
            )
        shutil.copy2(busybox, context / "busybox")
    elif recipe.dockerfile is not None:
        for path in _copied_files(recipe.dockerfile, recipe.context):
            target = context / path.relative_to(recipe.context)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return context


def content_key(recipe: Recipe, context: Path, build_args: dict[str, str]) -> str:
    """The image's key: a hash of its Dockerfile, build arguments and every file COPY takes from ``context``."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode() + data)

    if recipe.dockerfile is None:
        add("mmdebstrap", shlex.join(_mmdebstrap_command(Path("rootfs.tar"))).encode())
        add("config", "\n".join(DEBIAN_CONFIG).encode())
        return digest.hexdigest()
    add("Dockerfile", recipe.dockerfile.read_bytes())
    for arg, value in sorted(build_args.items()):
        add(f"arg {arg}", value.encode())
    for path in _copied_files(recipe.dockerfile, context):
        add(f"file {path.relative_to(context)} {path.stat().st_mode & 0o777:o}", path.read_bytes())
    return digest.hexdigest()


def _copied_files(dockerfile: Path, context: Path) -> list[Path]:
    """Every file the Dockerfile's COPY instructions take from ``context``, minus .dockerignore's ``**/`` patterns."""
    ignore_file = context / ".dockerignore"
    ignored = [
        line[3:]
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.startswith("**/")
    ]
    sources: list[Path] = []
    for line in _instructions(dockerfile):
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "ADD":
            raise ImageBuildError(f"{dockerfile}: use COPY, not ADD (the image's key covers COPY sources only)")
        if instruction.upper() == "COPY":
            words = json.loads(rest) if rest.lstrip().startswith("[") else shlex.split(rest)
            for word in [w for w in words if not w.startswith("--")][:-1]:
                if not (matches := sorted(context.glob(word.strip("/")))):
                    raise ImageBuildError(f"{dockerfile}: COPY source {word} is not in {context}")
                sources += matches
    files = []
    for source in sources:
        for path in sorted([source] if source.is_file() else source.rglob("*")):
            parts = path.relative_to(context).parts
            if path.is_file() and not any(fnmatch.fnmatch(p, pattern) for p in parts for pattern in ignored):
                files.append(path)
    return files


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, comments dropped and continuation lines joined."""
    out, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


def _mmdebstrap_command(target: Path) -> list[str]:
    return ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES), DEBIAN_SUITE, str(target)]


def _build(image: BuiltImage, recipe: Recipe, context: Path, build_args: dict[str, str], scratch: Path) -> None:
    t0 = time.monotonic()
    print(f"[images] building {image.reference} (log: {_log(image)})", file=sys.stderr, flush=True)
    if recipe.dockerfile is None:
        rootfs = scratch / "rootfs.tar"
        _run(_mmdebstrap_command(rootfs), image, "mmdebstrap")
        changes = [option for change in DEBIAN_CONFIG for option in ("--change", change)]
        _run(["podman", "import", *changes, str(rootfs), image.reference], image, "podman import")
    else:
        command = ["podman", "build", "--pull=never", "-f", str(recipe.dockerfile), "-t", image.reference]
        if HOST_CA_BUNDLE.exists():
            command += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        for arg, value in build_args.items():
            command += ["--build-arg", f"{arg}={value}"]
        _run(command + [str(context)], image, "podman build")
    print(f"[images] built {image.reference} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def _log(image: BuiltImage) -> Path:
    return image.archive.with_suffix(".log")


def _run(command: list[str], image: BuiltImage, step: str) -> None:
    """Run one build step, its output appended to the image's log; a failure names the step and the log's end."""
    log = _log(image)
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        try:
            returncode = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        except FileNotFoundError:
            raise ImageBuildError(
                f"{image.name}: {command[0]} is not installed (hack/host-packages.sh installs it)"
            ) from None
    if returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise ImageBuildError(f"{image.name}: {step} failed (exit {returncode}); log {log} ends:\n{tail}")


def _podman_has(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], capture_output=True).returncode == 0


def _prune(name: str, cache: Path) -> None:
    """Keep the KEEP newest archives of ``name``; older ones go, with their logs and podman images."""
    archives = sorted(cache.glob(f"{name}-????????????.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[KEEP:]:
        subprocess.run(
            ["podman", "rmi", "--ignore", f"localhost/longalign-{name}:{old.stem.rsplit('-', 1)[1]}"],
            capture_output=True,
        )
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"images to build (default: all): {', '.join(IMAGES)}")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in IMAGES]:
        parser.error(f"unknown image {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    try:
        for name in args.names or IMAGES:
            t0 = time.monotonic()
            image = ensure_image(name)
            size = image.archive.stat().st_size / 2**20
            print(
                f"{name:12} {image.reference:48} {image.archive} ({size:,.0f} MiB, {time.monotonic() - t0:.1f} s)",
                flush=True,
            )
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
