"""Output shards and their manifest: what makes data generation resumable without loss or duplicates.

The unit of work is a document. A finished document (its samples, or the reasons it gave none) waits in a
buffer; a flush writes the buffer as a new shard file and then a new manifest that lists it, each written to a
temporary file, fsynced and renamed into place (``atomic_write``)::

    out/shards/shard-00000.jsonl   samples of documents d1, d2, d3
    out/shards/shard-00001.jsonl   samples of documents d4, d5
    out/manifest.json              {"fingerprint": ..., "shards": [{"file": ..., "documents": {"d1": 1, ...}}]}

The manifest is the only truth: a document is finished exactly when a shard listed in it names the document.
Killed before the manifest rename, the new shard is an orphan that the next start deletes, and its documents are
simply done again; killed after it, they are done for good. Either way no sample is lost or written twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from longalign_trainer.atomic_write import write_atomic

MANIFEST = "manifest.json"
SHARDS = "shards"


class ResumeMismatch(RuntimeError):
    """The output folder holds a run with different generation settings."""


class ShardStore:
    """The shards and manifest under ``out_dir`` for one run (identified by its settings' fingerprint)."""

    def __init__(
        self,
        out_dir: Path,
        fingerprint: str,
        shard_max_samples: int,
        meta: dict | None = None,
        flush_interval_s: float = 60.0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.shard_dir = self.out_dir / SHARDS
        self.fingerprint = fingerprint
        self.shard_max_samples = shard_max_samples
        self.manifest: dict = {"fingerprint": fingerprint, **(meta or {}), "shards": []}
        self.buffer_samples: list[dict] = []
        self.buffer_docs: dict[str, int] = {}
        self.buffer_skips: Counter = Counter()
        self.orphans_removed = 0
        self.flush_interval_s = flush_interval_s  # bounds the work a kill can lose
        self.last_flush = time.monotonic()

    def open(self) -> ShardStore:
        """Load the manifest if there is one (checking the settings match) and delete orphan shards."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / MANIFEST
        if path.exists():
            manifest = json.loads(path.read_text())
            if manifest.get("fingerprint") != self.fingerprint:
                raise ResumeMismatch(
                    f"{self.out_dir} holds output generated with other settings (fingerprint "
                    f"{manifest.get('fingerprint')}, now {self.fingerprint}); use a new output_dir or "
                    "restore the settings"
                )
            self.manifest["shards"] = manifest["shards"]
        listed = {s["file"] for s in self.manifest["shards"]}
        for f in self.shard_dir.iterdir():
            if f.name not in listed:  # written after the last manifest: its documents will be done again
                f.unlink()
                self.orphans_removed += 1
        return self

    def done_documents(self) -> dict[str, int]:
        """Finished document id → samples it gave."""
        return {d: n for s in self.manifest["shards"] for d, n in s["documents"].items()}

    def skips(self) -> Counter:
        """Sample-level skip reasons over all finished documents."""
        total: Counter = Counter()
        for s in self.manifest["shards"]:
            total.update(s.get("skipped", {}))
        return total

    def shard_paths(self) -> list[Path]:
        return [self.shard_dir / s["file"] for s in self.manifest["shards"]]

    def add(self, doc_id: str, samples: list[dict], skipped: Counter) -> None:
        """Buffer a finished document; flush when the buffer holds a full shard or has waited too long."""
        self.buffer_samples.extend(samples)
        self.buffer_docs[doc_id] = len(samples)
        self.buffer_skips.update(skipped)
        if (
            len(self.buffer_samples) >= self.shard_max_samples
            or time.monotonic() - self.last_flush >= self.flush_interval_s
        ):
            self.flush()

    def pending(self) -> int:
        return len(self.buffer_docs)

    def flush(self) -> None:
        """Commit the buffered documents: a new shard, then a manifest listing it."""
        self.last_flush = time.monotonic()
        if not self.buffer_docs:
            return
        name = f"shard-{len(self.manifest['shards']):05d}.jsonl"
        data = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.buffer_samples).encode()
        write_atomic(self.shard_dir / name, data)
        self.manifest["shards"].append(
            {
                "file": name,
                "samples": len(self.buffer_samples),
                "documents": self.buffer_docs,
                "skipped": dict(self.buffer_skips),
            }
        )
        write_atomic(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=1).encode())
        self.buffer_samples, self.buffer_docs, self.buffer_skips = [], {}, Counter()
