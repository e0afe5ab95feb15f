"""Run a LongAlignRun's stages on this machine, without a cluster.

    longalign run RUN.yaml [--workdir DIR] [--volume NAME=DIR ...] [--prepare-tiny]

The spec is validated by the operator's model; each stage runs as the command its pod runs, in order:
data generation against a local vLLM teacher, training under torchrun (DeepSpeed; CPU without GPUs),
evaluation with the judge at the spec's endpoint (key in $LONGALIGN_JUDGE_API_KEY) or a local vLLM one.
The volumes are local folders (WORKDIR/<claimName>, or --volume models=DIR etc.). At the end: a table like
`kubectl get lar -o wide`, and WORKDIR/report/ with status.json and PNG plots.

Exit codes: 0 the run succeeded, 1 it failed, 2 the run file or the arguments cannot be used, 130 interrupted.
"""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path


def add_arguments(parser) -> None:
    """Arguments of ``longalign run``."""
    parser.add_argument("run_file", metavar="RUN.yaml", type=Path, help="a LongAlignRun resource")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="holds the volumes' folders, each attempt's config and log, and the report "
        "(default: ./longalign-runs/<run name>)",
    )
    parser.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="local folder of the volume mounted at /NAME (models, data, checkpoints, results, documents); repeatable",
    )
    parser.add_argument(
        "--prepare-tiny",
        action="store_true",
        help="first create missing inputs with tiny stand-ins (a tiny random model, short "
        "documents, the LongBench-Chat sample)",
    )
    parser.add_argument(
        "--train-processes",
        type=int,
        default=2,
        metavar="N",
        help="training processes (torchrun --nproc-per-node; default 2)",
    )


def run(args) -> int:
    """``longalign run RUN.yaml``."""
    from datetime import datetime

    from longalign_operator.local import report, runfile, table
    from longalign_operator.local.runner import run_stages
    from longalign_operator.local.stages import LocalStages, MissingJudgeKey
    from longalign_operator.local.tiny import prepare_tiny
    from longalign_operator.local.volumes import VolumeError, Volumes, parse_volume_args
    from longalign_operator.spec import GROUP, KIND, VERSION

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        loaded = runfile.load(args.run_file)
        workdir = (args.workdir or Path("longalign-runs") / loaded.run.name).resolve()
        volumes = Volumes.for_spec(loaded.run.spec, workdir, parse_volume_args(args.volume))
        stages = LocalStages(loaded.run, loaded.options, volumes, workdir, args.train_processes)
        stages.check_ready()
    except (runfile.RunFileError, VolumeError, MissingJudgeKey) as e:
        print(f"longalign run: {e}", file=sys.stderr)
        return 2
    volumes.create()
    if args.prepare_tiny:
        for path in prepare_tiny(loaded, volumes):
            print(f"prepared {path}", flush=True)
    report_dir = workdir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    print(f"run {loaded.run.name}: working in {workdir}", flush=True)
    try:
        status = run_stages(stages, report_dir / "status.json")
    except KeyboardInterrupt:
        print("\nlongalign run: interrupted; the same command continues where the stages left off", file=sys.stderr)
        return 130
    plots = report.write_report(stages, status, report_dir)
    resource = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": loaded.run.name, "creationTimestamp": started},
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    print("\n" + table.render(resource, wide=True))
    print(f"\nreport: {report_dir} (status.json{''.join(', ' + p.name for p in plots)})")
    return 0 if status.phase == "Succeeded" else 1
