"""The operator's stage-config file, read as a ``TrainConfig``.

The operator renders one envelope per stage attempt (``operator/longalign_operator/builders.py:stage_config``)::

    {"stage": "training", "run": "r1", "attempt": 1, "baseModelPath": "/models/m", "outputDir": "/checkpoints/r1",
     "terminationMessagePath": "/dev/termination-log",
     "training": {"datasetPath": "/data/r1/data.jsonl", "maxTokensPerPack": 65536, "batching": "packing",
                  "lossWeighting": true, "globalBatchSize": 8, "epochs": 2, "gradientCheckpointing": true,
                  "checkpointEverySteps": 100, "deepspeed": {"zeroStage": 3, "offloadOptimizer": false},
                  "optimizer": {"learningRate": 2e-05, "weightDecay": 0.0, "warmupRatio": 0.03}, ...}}

``to_train(envelope)`` maps it onto this stage's own settings; what the spec does not say keeps its default.
The group's shape (nodes, GPUs per node) is not a setting here: torchrun's environment says it.
"""

from __future__ import annotations

SIMPLE = {
    "maxTokensPerPack": "max_tokens_per_pack",
    "batching": "strategy",
    "lossWeighting": "loss_weighting",
    "globalBatchSize": "global_batch_size",
    "epochs": "epochs",
    "gradientCheckpointing": "gradient_checkpointing",
    "checkpointEverySteps": "checkpoint_every_steps",
    "sequenceParallelSize": "sequence_parallel_size",
}
NESTED = {
    "deepspeed": {
        "zeroStage": "zero_stage",
        "offloadOptimizer": "offload_optimizer",
        "offloadParams": "offload_params",
    },
    "optimizer": {"learningRate": "learning_rate", "weightDecay": "weight_decay", "warmupRatio": "warmup_ratio"},
}
SHAPE = ("nodes", "gpusPerNode")


def is_envelope(raw: dict) -> bool:
    """Whether a config file is the operator's envelope rather than a plain training config."""
    return raw.get("stage") == "training" and isinstance(raw.get("training"), dict)


def to_train(raw: dict) -> dict:
    """The ``TrainConfig`` mapping for an operator envelope (validated by the caller).

    >>> cfg = to_train({"stage": "training", "baseModelPath": "/models/m", "outputDir": "/ckpt/r",
    ...     "terminationMessagePath": "/dev/termination-log", "training": {"datasetPath": "/data/d.jsonl",
    ...     "nodes": 2, "batching": "sorted", "deepspeed": {"zeroStage": 2}, "optimizer": {"learningRate": 1e-5}}})
    >>> cfg["model_path"], cfg["data"], cfg["strategy"], cfg["zero_stage"], cfg["learning_rate"]
    ('/models/m', [{'path': '/data/d.jsonl'}], 'sorted', 2, 1e-05)
    """
    body = dict(raw["training"])
    cfg: dict = {
        "model_path": raw["baseModelPath"],
        "output_dir": raw["outputDir"],
        "data": [{"path": body.pop("datasetPath")}],
    }
    if raw.get("terminationMessagePath"):
        cfg["termination_message_path"] = raw["terminationMessagePath"]
    for key in SHAPE:
        body.pop(key, None)
    for key, name in SIMPLE.items():
        if key in body:
            cfg[name] = body.pop(key)
    for section, names in NESTED.items():
        values = body.pop(section, None) or {}
        cfg.update({names[k]: v for k, v in values.items() if k in names})
    cfg.update(body)  # the stage's own settings (snake_case), if the operator sends any
    return cfg
