"""SASRec-style sequence files: one ``user item`` pair per line, each user's items in time order.

This is the format Kang & McAuley released their preprocessed data in (e.g. ``Video.txt``, the
Amazon Video Games reviews): whitespace-separated integer ids, no header, no timestamps and no
ratings. File order *is* time order, so the returned ``Interactions`` has ``timestamp=None`` (the
splits then order each user's events by file position) and ``rating=None`` (implicit feedback).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from recbench.data.interactions import Interactions, parse_int64
from recbench.errors import DataError

_EXPECTED = "2 whitespace-separated integer fields 'user item'"


def load_sequence_file(path: str | Path, name: str | None = None) -> Interactions:
    """Read ``path``; ``name`` (default: the file's stem) labels the dataset in messages."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise DataError(
            f"sequence file {path} is a folder, not a file; put the SASRec-format file there"
        )
    if not path.is_file():
        raise DataError(
            f"sequence file not found: {path}; put the SASRec-format file there (one 'user item' "
            "pair per line, each user's items in time order) or set dataset.root (or "
            "RECBENCH_DATA) to the folder that holds it"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path}: {exc.strerror or exc}; check its permissions"
        ) from exc
    if not data.strip():
        raise DataError(f"{path} is empty; expected {_EXPECTED} per line")
    columns = _parse_fast(data)
    if columns is None:
        columns = _parse_lines(data, path)
    user, item = columns
    return Interactions(user=user, item=item, name=name or path.stem)


def _parse_fast(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse; None when anything is off (the line scan then names the bad line)."""
    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=r"\s+", header=None, dtype=np.int64, engine="c", comment=None
        )
    except (ValueError, OverflowError, pd.errors.EmptyDataError):
        return None
    if frame.shape[1] != 2:
        return None
    return frame[0].to_numpy(), frame[1].to_numpy()


def _parse_lines(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line-by-line parse that stops at the first bad line, naming it (1-based)."""
    users: list[int] = []
    items: list[int] = []
    for number, line in enumerate(data.decode("latin-1").split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        pair = [parse_int64(f) for f in fields] if len(fields) == 2 else [None]
        if any(v is None for v in pair):
            shown = line.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise DataError(f"{path} line {number}: expected {_EXPECTED}, got {shown!r}")
        users.append(pair[0])
        items.append(pair[1])
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)
