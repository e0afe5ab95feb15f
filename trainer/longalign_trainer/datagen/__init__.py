"""Data generation: Self-Instruct long-instruction data from long documents, with a teacher served by vLLM.

The stage behind ``longalign datagen --config FILE``, in small modules, in the order data flows:

* ``config``    the typed settings (``DatagenConfig``), loaded from YAML/JSON;
* ``stage_config`` the operator's stage-config envelope mapped onto those settings;
* ``documents`` read, tag, measure with the teacher's tokenizer, split or skip long documents;
* ``tasks``     the pure Self-Instruct steps: prompts, JSON schema, parsing, deduplication, answer filters;
* ``store``     shards and manifest, written atomically: the basis of resuming without loss or duplicates;
* ``mix``       the short-chat mix and the length histogram;
* ``generate``  the pipeline that ties them together, with progress lines and the final summary;
* ``cli``       the command line.

The teacher is reached through the shared ``longalign_trainer.chat_client`` (bounded concurrency, retries,
failover, context-overflow detection), as evaluation reaches its model and judge.

Prompt texts per task type live in ``prompts/<type>.txt`` (``{n}`` is the number of tasks asked for).
"""
