"""The middle layer: everything between an assembled (data, model) pair and its metrics.

``contracts`` (the batch and the ``Sampler`` / ``Evaluator`` protocols where the parts meet),
``samplers/`` (one per task, negatives, the sampled-softmax candidates), ``losses/`` (by name),
``optim`` and ``device``, ``loop`` (``fit`` with its ``FitOptions``) and ``evaluators/`` (the full
and the sampled ranking protocols, rating error, the sequential contexts). It reads the record's
names (``recbench.record``) and the libraries below it (data, models, embeddings); it never imports
the entry point, tracking, tuning or the report (docs/design.md, tests/test_imports.py).
"""
