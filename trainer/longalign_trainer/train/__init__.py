"""The training stage: packed long-context SFT with LongAlign's loss weighting and sorted batching, on DeepSpeed.

Read ``recipe.py`` first (the straight-line loop); the pieces it uses are small modules beside it:
``config`` (the typed settings), ``data`` (JSONL → tokenized examples), ``packing`` (bin packing and pack
tensors), ``batching`` (which sequences each rank runs in each step), ``attention`` (kernels that keep packed
sequences apart), ``loss`` (LongAlign's Eq. 2-4) and ``cli`` (``longalign train --config FILE``).
"""
