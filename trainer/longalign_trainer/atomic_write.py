"""Atomic file replacement: readers, and a crash, see either the old file or the new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: written to a temporary file beside it, fsynced, renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_readable(folder: Path) -> None:
    """Give every file below ``folder`` the permissions a plainly written file gets (0666 minus the umask):
    libraries that write through private temporary files (transformers' ``model.safetensors``: 0600) would
    otherwise leave a model only its writer can read, and a server running as another user cannot load it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
