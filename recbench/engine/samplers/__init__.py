"""Samplers: a task's training data -> the batches of one epoch (``contracts.Sampler``).

Batches are sliced from tensors built once on the device (no per-sample Python); negatives are
drawn for a whole epoch in one vectorised call. ``negatives``: uniform unseen items;
``pairs``/``ratings``/``sequences``: one sampler per task; ``shared``: the candidates shared by a
batch for ``train.loss=sampled_softmax``.
"""
