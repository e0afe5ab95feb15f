"""Tiny stand-ins for the inputs a spec names, so that any spec can run end to end on a laptop.

``longalign run RUN.yaml --prepare-tiny`` creates whatever the spec refers to that does not exist yet: a tiny
random Llama (``longalign tiny-model``) in every model folder it names, short documents made of Python's own
docstrings in the documents folder, and the LongBench-Chat sample that ships with the evaluation stage.
Existing files are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from longalign_operator.local.runfile import RunFile
from longalign_operator.local.volumes import Volumes

DOCUMENTS = 24
DOCUMENT_CHARS = 4000


def prepare_tiny(run_file: RunFile, volumes: Volumes) -> list[Path]:
    """Create the missing inputs of a run with tiny stand-ins; return what was created."""
    spec = run_file.run.spec
    created = []
    models = [spec.base_model_path, run_file.options.judge_model_path]
    if spec.data_generation.enabled:
        models.append(spec.data_generation.required_teacher().model_path)
    built: Path | None = None
    for folder in dict.fromkeys(Path(volumes.local(m)) for m in models if m):
        if not (folder / "config.json").is_file():
            built = _tiny_model(folder, built)
            created.append(folder)
    if spec.data_generation.enabled:
        documents = Path(volumes.local(spec.data_generation.documents_path))
        if not documents.is_dir() or not any(documents.iterdir()):
            created.append(_documents(documents))
    lbc = spec.evaluation.long_bench_chat
    if spec.evaluation.enabled and lbc is not None:
        from longalign_trainer.evaluate.config import DATA_DIR

        data_dir = f"/data/{run_file.run.name}"  # where the stage looks for relative benchmark paths
        for pod_path, sample in (
            (lbc.path, "longbench_chat_sample.jsonl"),
            (lbc.few_shot_path, "longbench_chat_sample_few_shots.json"),
        ):
            target = Path(volumes.local(str(Path(data_dir) / pod_path))) if pod_path else None
            if target and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                created.append(Path(shutil.copy(DATA_DIR / sample, target)))
    return created


def _tiny_model(folder: Path, built: Path | None) -> Path:
    from longalign_trainer.tiny_model import build_tiny_model

    if built is None:
        return build_tiny_model(folder)
    shutil.copytree(built, folder, dirs_exist_ok=True)
    return built


def _documents(folder: Path) -> Path:
    """``DOCUMENTS`` text files of about ``DOCUMENT_CHARS`` characters, paragraphs of stdlib docstrings."""
    from longalign_trainer.tiny_model import local_corpus

    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [p.strip() for text in local_corpus() for p in text.split("\n\n") if len(p.strip()) > 80]
    doc, n, i = [], 0, 0
    while n < DOCUMENTS:
        doc.append(paragraphs[i % len(paragraphs)])
        i += 1
        if sum(map(len, doc)) >= DOCUMENT_CHARS:
            (folder / f"doc-{n:03d}.txt").write_text("\n\n".join(doc) + "\n")
            doc, n = [], n + 1
    return folder
