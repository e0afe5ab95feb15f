"""The run's volumes as local folders.

In a pod every volume is mounted at a fixed place (``/models``, ``/data``, ...; ``builders.MOUNTS``) and the
spec's paths point there. Locally each mount becomes a folder: the one given with ``--volume NAME=DIR``, else
``WORKDIR/<claimName>[/<subPath>]``. Mounts of the same claim and subPath share a folder, as they share the
volume in a pod (``documents`` and ``results`` default to the data and checkpoints claims). Paths are rewritten
only at the edge, in the config file a stage reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from longalign_operator.spec import MOUNTS, LongAlignRunSpec


class VolumeError(ValueError):
    """A ``--volume`` argument that names no mount or is malformed."""


def parse_volume_args(args: list[str]) -> dict[str, Path]:
    """``["models=/srv/models"]`` as ``{"models": Path("/srv/models")}``; names must be mounts.

    >>> parse_volume_args(["models=/srv/m"])
    {'models': PosixPath('/srv/m')}
    """
    out = {}
    for arg in args:
        name, sep, folder = arg.partition("=")
        if not sep or not folder:
            raise VolumeError(f"--volume {arg}: expected NAME=DIR")
        if name not in MOUNTS:
            raise VolumeError(f"--volume {arg}: NAME must be one of {', '.join(MOUNTS)}")
        out[name] = Path(folder).expanduser().resolve()
    return out


@dataclass(frozen=True)
class Volumes:
    """Where each mount of the run's pods lives on this machine."""

    folders: dict[str, Path]
    """Mount name (models, data, ...) to local folder."""

    @classmethod
    def for_spec(cls, spec: LongAlignRunSpec, workdir: Path, explicit: dict[str, Path] | None = None) -> Volumes:
        """The local folders of a spec's volumes (see the module docstring)."""
        sources = spec.storage.mounts()
        explicit = explicit or {}
        shared = {(sources[m].claim_name, sources[m].sub_path): folder for m, folder in explicit.items()}
        folders = {}
        for mount, src in sources.items():
            default = workdir.resolve() / src.claim_name / (src.sub_path or "")
            folders[mount] = explicit.get(mount) or shared.get((src.claim_name, src.sub_path)) or default
        return cls(folders)

    def local(self, pod_path: str) -> str:
        """A path as a pod sees it, as a local path; other strings unchanged.

        >>> Volumes({"data": Path("/w/data")}).local("/data/r1/data.jsonl"), Volumes({}).local("http://x/v1")
        ('/w/data/r1/data.jsonl', 'http://x/v1')
        """
        path = PurePosixPath(pod_path)
        for mount, folder in self.folders.items():
            root = PurePosixPath(MOUNTS[mount])
            if path == root or root in path.parents:
                return str(folder / path.relative_to(root))
        return pod_path

    def localize(self, value: Any) -> Any:
        """Every pod path inside a JSON-like value (e.g. a stage-config envelope), as a local path."""
        if isinstance(value, dict):
            return {k: self.localize(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.localize(v) for v in value]
        if isinstance(value, str) and value.startswith("/"):
            return self.local(value)
        return value

    def create(self) -> None:
        """Make every folder (a fresh workdir starts empty)."""
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
