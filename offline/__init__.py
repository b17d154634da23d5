"""relstream's offline stage.

Stage 1 (see docs/offline.md): datasets (``offline.datasets``), the temporal graph
(``offline.graph``) and its leak-free sampler (``offline.sampler``), the deep temporal GNN
(``offline.deep_model``, ``offline.train_deep``, ``offline.train_recsys``), batch embeddings
(``offline.embed``) and the evaluation harness shared with stage 2 (``offline.evaluate``).
Stage 2 (docs/distillation.md): distillation, the shallow model and the Triton export.
"""
