"""The real nodes' image store: a containerd root with the project's images imported, made once per set of
images and kept in the cache; every real node's containerd starts on a hard-linked copy of it.

    python -m localcluster.nodestore [NAMES]   # builds the images and the store if missing, prints its folder

Importing an image unpacks every layer. The trainer image has 7 GB of them: importing it into both nodes of
each new cluster took 6 to 13 minutes on CI's kind of machine, before any of its pods could start. The store is
made once (``hack/setup.sh --images`` makes it beside the Go build), by a containerd of its own that imports
each image's archive (``images.py``) and tags it ``images.local_reference(name)``, then stops. A node's copy
hard-links the store's blobs and unpacked layers (they never change: containers write to layers of their own)
and copies only containerd's databases, so it costs seconds and no disk. The key is the images' keys and
containerd's version; the newest store is kept.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localcluster import images
from localcluster.process import Processes, wait_for
from localcluster.realnode import CONTAINERD_NAMESPACE, UNUSED_SNAPSHOTTERS

STORED = tuple(images.IMAGES)
"""What a store holds unless told otherwise: every image of the project (the tests' pods run each of them)."""


@dataclass(frozen=True)
class Store:
    """A store ready to copy: its containerd ``root`` and the ``references`` of its images, by name."""

    root: Path
    references: dict[str, str]


def cache_dir() -> Path:
    """Where the stores live: beside the image archives (``~/.cache/longalign/node-store``)."""
    return images.cache_dir().parent / "node-store"


def ensure_store(names: Iterable[str] = STORED) -> Store:
    """The store of images ``names`` (each built first when missing), made if missing."""
    built = images.ensure_images(names)
    version = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\n".join([version, *sorted(i.reference for i in built)]).encode()).hexdigest()[:12]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / key
    with open(cache / "store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one import at a time, across processes
        if not (folder / "READY").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a partial store of an import that was killed
            _import(built, folder / "root")
            (folder / "READY").write_text("".join(f"{i.name} {i.reference}\n" for i in built))
        for old in cache.iterdir():
            if old.is_dir() and old != folder:
                shutil.rmtree(old, ignore_errors=True)
    return Store(folder / "root", {i.name: i.reference for i in built})


def _import(built: list[images.BuiltImage], root: Path) -> None:
    """Import ``built`` into a new containerd root ``root`` with a containerd of its own (no CRI, no network)."""
    if os.geteuid() != 0:
        raise RuntimeError("the real nodes' image store is made by a containerd of its own, which needs root")
    with tempfile.TemporaryDirectory(prefix="longalign-store-", dir="/run") as run:
        socket = Path(run) / "containerd.sock"
        config = Path(run) / "config.toml"
        config.write_text(f"""\
version = 2
root = "{root}"
state = "{Path(run) / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri", {UNUSED_SNAPSHOTTERS}]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{Path(run) / "ttrpc.sock"}"
""")
        procs = Processes(Path(run))
        procs.spawn("containerd", ["containerd", "--config", str(config)])
        ctr = ["ctr", "--address", str(socket), "--namespace", CONTAINERD_NAMESPACE]

        def up() -> bool:
            procs.check()
            return subprocess.run([*ctr, "version"], capture_output=True).returncode == 0

        try:
            wait_for(up, 60, "the store's containerd")
            for image in built:
                t0 = time.monotonic()
                for args in (
                    ["images", "import", str(image.archive)],
                    ["images", "tag", "--force", image.reference, images.local_reference(image.name)],
                ):
                    proc = subprocess.run([*ctr, *args], capture_output=True, text=True)
                    if proc.returncode != 0:
                        log = (Path(run) / "containerd.log").read_text()[-2000:]
                        raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}\n{log}")
                print(f"[node-store] {image.reference} imported in {time.monotonic() - t0:.0f} s", flush=True)
        finally:
            procs.stop()


def copy_into(store: Path, root: Path) -> None:
    """Make ``root`` (a node's containerd root, not yet started) a copy of ``store``: hard links, but real copies
    of the files containerd writes in place (its databases, directly in a plugin's folder), so each node changes
    only its own."""
    root.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--link", str(store), str(root)], check=True)
    for folder in [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]:
        for path in folder.iterdir():
            if path.is_file() and not path.is_symlink():
                path.unlink()
                shutil.copy2(store / path.relative_to(root), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.nodestore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"images (default: all): {', '.join(STORED)}")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in images.IMAGES]:
        parser.error(f"unknown image {', '.join(unknown)}: choose from {', '.join(images.IMAGES)}")
    try:
        print(ensure_store(args.names or STORED).root, flush=True)
    except (images.ImageBuildError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
