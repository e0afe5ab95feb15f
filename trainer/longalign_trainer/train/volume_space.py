"""A write that fails because its volume is full ends the run with the numbers and the fix, not a traceback.

A full filesystem shows up as ``OSError(ENOSPC)`` from Python's own writes and as less telling errors from
torch's (``inline_container.cc: unexpected pos``): a failed write counts as "volume full" when ENOSPC is in
its chain or the volume has less than ``FULL_BELOW`` bytes free once it failed (or when the partial output is
gone: another rank found the volume full and deleted it). The partial output is deleted, so the space it took
is free again and the last complete checkpoint stays the one ``latest`` names.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FULL_BELOW = 64 * 2**20


class VolumeFull(Exception):
    """A checkpoint or the export did not fit on its volume; the message says how much it needs."""


def human_bytes(n: int) -> str:
    """Bytes for people, in MiB below a GiB.

    >>> human_bytes(38 * 2**20), human_bytes(int(52.34 * 2**30))
    ('38 MiB', '52.3 GiB')
    """
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _no_space(exc: BaseException, volume: Path) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return shutil.disk_usage(volume).free < FULL_BELOW


@contextmanager
def room_for(what: str, partial: Path, like: Path | None, fix: str) -> Iterator[None]:
    """Write ``what`` into ``partial`` inside the block; when its volume fills up, delete ``partial`` and raise
    ``VolumeFull`` naming the volume, its size, what ``what`` needs (as much as ``like``, an earlier output of
    the same kind, when there is one) and ``fix``."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        volume = next(p for p in partial.parents if p.exists())
        # a partial output gone mid-write was deleted by another rank that found the volume full
        if partial.exists() and not _no_space(exc, volume):
            raise
        written = folder_bytes(partial)
        shutil.rmtree(partial, ignore_errors=True)
        usage = shutil.disk_usage(volume)
        needs = folder_bytes(like) if like is not None else 0
        size = f"about {human_bytes(needs)}" if needs else f"more than the {human_bytes(written)} written"
        raise VolumeFull(
            f"{what} did not fit: the volume of {volume} ({human_bytes(usage.total)}) is full; it takes {size} "
            f"(the partial {human_bytes(written)} written is deleted). {fix}"
        ) from exc
