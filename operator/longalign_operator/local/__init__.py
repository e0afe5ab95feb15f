"""``longalign run RUN.yaml``: a LongAlignRun's stages on this machine, without a cluster.

The same spec model validates the file, the operator's planner decides what runs next (attempts, retries,
status, results), the operator's builder renders each stage's config envelope, and the stages run as the same
commands their pods run; only the world differs: volumes are local folders, vLLM serves on the CPU, and each
stage attempt is a local process.

    runfile   the RUN.yaml file: spec and local options, with messages naming the field
    volumes   the run's volumes as local folders; pod paths rewritten at the edge
    stages    one stage attempt as a local process: its config, command, servers and environment
    progress  a stage's output: progress bars, a log file
    runner    the loop: plan, run the attempt the plan starts, observe it, plan again
    table     the final table, with the CRD's printer columns (``kubectl get lar -o wide``)
    report    the report folder: status.json and PNG plots of what the run produced
    tiny      tiny stand-ins for the inputs a spec names (models, documents, benchmark)
    command   the ``longalign run`` command
"""
