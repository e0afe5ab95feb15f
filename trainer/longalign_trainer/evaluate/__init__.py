"""The evaluation stage: does the trained model follow instructions over long inputs?

    longalign eval --config eval.yaml

* ``config``: the stage's settings (or the operator's envelope);
* ``longbench``: LongBench-Chat, answers from the served checkpoint graded 1-10 by an LLM judge (``judge``);
* ``needle``: needle in a haystack over a grid of context lengths x depths, graded by exact match;
* ``run``: serves the checkpoint with vLLM, runs both, writes results.json, plots and the stage summary.
"""
