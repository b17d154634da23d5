"""relstream's offline stage, laid out as the pipeline (docs/byod.md, docs/offline.md):

* ``offline.data`` — the project spec (``spec``), reading its tables (``sources``), dataset
  adapters that write files + spec (``adapters``; generators in ``offline.datasets``);
* ``offline.relgraph`` — the temporal heterogeneous graph of any spec and its leak-free sampler;
* ``offline.tasks`` — targets of the task kinds (entity aggregate, fact label, next item) and the
  in-session ranking protocol (examples, candidate sources, baselines, metrics: ``tasks.ranking``);
* ``offline.models`` — column encoders, the deep GNN, its trainer and the batch-embedding job;
* ``offline.project`` — what every command shares (spec + run directory, manifest, errors);
* stage 2 (docs/distillation.md): distillation, the shallow model and the Triton export, the
  evaluation harness (``offline.evaluate``) and the quality reports (``offline.quality``).
"""
