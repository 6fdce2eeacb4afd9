"""Evaluators and the evaluation protocols (docs/design.md, README "Evaluation protocol").

``metrics``: ranks and the metrics computed from them (names from ``recbench.record``); ``full``:
full ranking with the user's training items excluded; ``sampled``: the held-out item against saved
sampled negatives; ``rating``: RMSE/MAE; ``sequences``: the sequential task's contexts. Every
evaluator is a ``contracts.Evaluator``; the two ranking protocols are
``contracts.RankingEvaluation``.
"""
