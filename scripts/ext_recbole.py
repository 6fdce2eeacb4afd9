"""RecBole's GMF on recbench's exact split: an adapter for ``bench_time_to_quality.py --external``.

Why: issue 18 compares recbench's GMF with "the field's standard implementation" measured side by
side. RecBole (https://recbole.io) is not a recbench dependency; install it into a separate
environment that also sees recbench's packages (docs/performance.md, "Time to quality", shows how)
and run::

    python scripts/bench_time_to_quality.py --common "dataset=ml-100k model=gmf" \\
        --variant "recbench=method=full" --external "recbole=ext_recbole:train_gmf"

What the adapter does:

* writes recbench's ``PreparedData`` (train / valid / test after recbench's leave-last-two-out,
  dense ids as tokens) as RecBole's pre-split atomic files (``benchmark_filename``), so RecBole
  neither filters nor re-splits: both evaluate the same users on the same held-out items over the
  same catalogue. Timestamps are written as each event's position in recbench's order (unique, so
  no tie rule of RecBole's can reorder anything);
* builds RecBole's GMF: its ``NeuMF`` model with ``mlp_train=False`` (RecBole has no separate GMF;
  this is the GMF branch of NCF, d = ``mf_embedding_size`` = 64, a linear output layer, BCE on
  logits) with every other setting at RecBole's own defaults: Adam, lr 1e-3, batch 2048, one
  uniform negative per positive, no weight decay, validation every epoch by full ranking with
  training items excluded (``eval_batch_size`` 4096, ``mode: full``);
* trains one epoch per ``next()`` with RecBole's own ``Trainer._train_epoch`` and validates with
  ``Trainer._valid_epoch`` (the two calls ``Trainer.fit`` makes each epoch; its logging, TensorBoard
  scalars and checkpoint writes are left out, which only makes RecBole faster), yielding
  ``(train_seconds, valid_seconds, valid NDCG@k)``.

Before the first epoch it checks that RecBole's validation set is recbench's: the same users, the
same held-out item per user, the same training items excluded per user and the same number of
items; it prints both checksums and raises if they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DATASET = "recbench"


def pairs_checksum(users: np.ndarray, items: np.ndarray) -> str:
    """A short, order-independent checksum of (user, item) pairs (dense recbench ids)."""
    pairs = np.stack([np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)], axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return hashlib.sha256(np.ascontiguousarray(pairs).tobytes()).hexdigest()[:12]


def write_atomic_files(data: Any, folder: Path) -> None:
    """recbench's three parts as RecBole's ``<dataset>.<part>.inter`` files (tab-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    position = 0
    for part in ("train", "valid", "test"):
        inter = getattr(data, part)
        users, items = np.asarray(inter.user), np.asarray(inter.item)
        stamps = np.arange(position, position + len(users))
        position += len(users)
        body = "\n".join(
            f"{u}\t{i}\t{t}" for u, i, t in zip(users.tolist(), items.tolist(), stamps.tolist())
        )
        (folder / f"{DATASET}.{part}.inter").write_text(
            "user_id:token\titem_id:token\ttimestamp:float\n" + body + "\n"
        )


def numpy2_aliases() -> None:
    """RecBole 1.2.1's ``Config`` assigns ``np.float = np.float_`` etc., names NumPy 2 removed;
    define the old names (as the aliases they were) so that its compatibility shim runs."""
    for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if not hasattr(np, old):
            setattr(np, old, getattr(np, new))


def validation_checksums(data: Any, valid_loader: Any, dataset: Any) -> tuple[str, str]:
    """(recbench's, RecBole's) checksum of the validation protocol: each user with their held-out
    item and the training items excluded from their ranking, plus the catalogue size."""
    import torch

    ours = hashlib.sha256()
    indptr, train_items = data.train_csr()
    for user, item in sorted(
        zip(np.asarray(data.valid.user).tolist(), np.asarray(data.valid.item).tolist())
    ):
        seen = sorted(train_items[indptr[user] : indptr[user + 1]].tolist())
        ours.update(f"{user}:{item}:{seen};".encode())
    ours.update(f"items={data.num_items}".encode())

    theirs = hashlib.sha256()
    user_token = dataset.field2id_token[dataset.uid_field]
    item_token = dataset.field2id_token[dataset.iid_field]
    rows = []
    for uid in valid_loader.uid_list.tolist():
        positives = [int(item_token[i]) for i in valid_loader.uid2positive_item[uid].tolist()]
        history = valid_loader.uid2history_item[uid]
        seen = sorted(
            int(item_token[i])
            for i in (history.tolist() if isinstance(history, torch.Tensor) else history)
        )
        rows.append((int(user_token[uid]), positives, seen))
    for user, positives, seen in sorted(rows):
        item = positives[0] if len(positives) == 1 else positives
        theirs.update(f"{user}:{item}:{seen};".encode())
    theirs.update(f"items={dataset.item_num - 1}".encode())  # RecBole's item 0 is [PAD]
    return ours.hexdigest()[:12], theirs.hexdigest()[:12]


def train_gmf(
    data: Any, k: int = 10, seed: int = 0, **overrides: Any
) -> Iterator[tuple[float, float, float]]:
    """Train RecBole's GMF on ``data`` one epoch per ``next()``; yield (train s, valid s, NDCG@k).

    ``overrides`` are RecBole config keys that replace its defaults (none by default)."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender.neumf import NeuMF
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    numpy2_aliases()
    workdir = Path(tempfile.mkdtemp(prefix="recbole_"))
    write_atomic_files(data, workdir / DATASET)
    config_dict = {
        "data_path": str(workdir),
        "checkpoint_dir": str(workdir / "saved"),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "mlp_train": False,  # GMF: the MF branch of RecBole's NCF alone
        "mf_embedding_size": 64,
        "metrics": ["NDCG", "Hit", "MRR"],
        "topk": [k],
        "seed": seed,
        "use_gpu": False,
        "show_progress": False,
        "state": "WARNING",
        **overrides,
    }
    threads = torch.get_num_threads()
    with warnings.catch_warnings():  # pandas 3 / torch deprecation notices from RecBole's loader
        warnings.simplefilter("ignore")
        config = Config(model="NeuMF", dataset=DATASET, config_dict=config_dict)
        logging.getLogger().setLevel(logging.WARNING)
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, _ = data_preparation(config, dataset)
    ours, theirs = validation_checksums(data, valid_data, dataset)
    print(f"  validation protocol checksum: recbench {ours}, recbole {theirs} "
          f"({len(valid_data.uid_list)} users, {dataset.item_num - 1} items)", flush=True)  # fmt: skip
    if ours != theirs:
        raise RuntimeError(
            "RecBole's validation set differs from recbench's (users, held-out items or exclusions)"
        )
    init_seed(config["seed"], config["reproducibility"])
    model = NeuMF(config, train_data._dataset).to(config["device"])
    # the Trainer creates a TensorBoard folder in the working directory: keep it in workdir
    with contextlib.chdir(workdir):
        trainer = Trainer(config, model)
    torch.set_num_threads(threads)  # keep the thread count the benchmark chose
    trainer.eval_collector.data_collect(train_data)
    metric = f"ndcg@{k}"
    for epoch in range(config["epochs"]):
        started = time.perf_counter()
        with warnings.catch_warnings():  # torch.cuda.amp.GradScaler's notice, every epoch
            warnings.simplefilter("ignore", FutureWarning)
            trainer._train_epoch(train_data, epoch)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        _, result = trainer._valid_epoch(valid_data)
        yield train_s, time.perf_counter() - started, float(result[metric])
