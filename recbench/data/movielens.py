"""MovieLens loaders (GroupLens): ratings as ``Interactions`` and item -> genre lists.

Each loader reads one official file format exactly as GroupLens ships it and returns raw ids as they
appear in the file (``int64``), ratings as ``float32`` and timestamps as ``int64``, in file order.

Parsing is vectorised (pandas' C parser) so that MovieLens 1M's million lines load in well under a
second. Only when that fast path rejects the file, or a value falls outside the format's rating
scale, is the file scanned line by line, to name the first bad line in a one-line ``DataError``.

With ``download=True`` a missing file is fetched from GroupLens by ``recbench.data.download`` (the
archive's sha256 is checked against a pinned value before anything is extracted).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recbench.data.interactions import Interactions, parse_int64
from recbench.errors import DataError

__all__ = [
    "GENRE_LOADERS",
    "ML_100K_GENRES",
    "load_ml_100k",
    "load_ml_100k_genres",
    "load_ml_1m",
    "load_ml_1m_genres",
    "load_ml_latest_small",
    "load_ml_latest_small_genres",
]


@dataclass(frozen=True)
class RatingFormat:
    """What one MovieLens ratings file looks like, and how to talk about it in messages."""

    dataset: str  # folder and dataset name, e.g. "ml-100k"
    title: str  # human name, e.g. "MovieLens 100K"
    filename: str  # file inside <root>/<dataset>/
    sep: str  # field separator as written in the file
    header: str | None  # exact first line, or None when the file has no header
    expected: str  # how a good line looks, for messages
    allowed: tuple[float, ...]  # every valid rating value
    scale: str  # the rating scale in words, for messages


ML_100K = RatingFormat(
    dataset="ml-100k",
    title="MovieLens 100K",
    filename="u.data",
    sep="\t",
    header=None,
    expected="4 tab-separated integer fields 'user item rating timestamp'",
    allowed=(1.0, 2.0, 3.0, 4.0, 5.0),
    scale="1..5 (whole stars)",
)
ML_1M = RatingFormat(
    dataset="ml-1m",
    title="MovieLens 1M",
    filename="ratings.dat",
    sep="::",
    header=None,
    expected="4 '::'-separated integer fields 'UserID::MovieID::Rating::Timestamp'",
    allowed=(1.0, 2.0, 3.0, 4.0, 5.0),
    scale="1..5 (whole stars)",
)
ML_LATEST_SMALL = RatingFormat(
    dataset="ml-latest-small",
    title="MovieLens latest-small",
    filename="ratings.csv",
    sep=",",
    header="userId,movieId,rating,timestamp",
    expected="4 comma-separated fields 'userId,movieId,rating,timestamp' (integers, rating a number)",
    allowed=tuple(np.arange(1, 11) / 2.0),
    scale="0.5..5.0 in steps of 0.5",
)

# The 19 genre flags of ml-100k's u.item, in column order (as listed in the archive's u.genre).
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip


# ------------------------------------------------------------------------------------ loaders
def load_ml_100k(root: str | Path, download: bool = False) -> Interactions:
    """MovieLens 100K ratings from ``<root>/ml-100k/u.data`` (100,000 ratings, 943 x 1,682)."""
    return _load_ratings(ML_100K, root, download)


def load_ml_1m(root: str | Path, download: bool = False) -> Interactions:
    """MovieLens 1M ratings from ``<root>/ml-1m/ratings.dat`` (1,000,209 ratings, 6,040 users)."""
    return _load_ratings(ML_1M, root, download)


def load_ml_latest_small(root: str | Path, download: bool = False) -> Interactions:
    """MovieLens latest-small ratings from ``<root>/ml-latest-small/ratings.csv`` (half stars)."""
    return _load_ratings(ML_LATEST_SMALL, root, download)


def _load_ratings(fmt: RatingFormat, root: str | Path, download: bool) -> Interactions:
    path = locate(fmt.dataset, fmt.title, fmt.filename, "ratings file", root, download)
    user, item, rating, timestamp = parse_ratings(read_bytes(path), fmt, path)
    return Interactions(
        user=user,
        item=item,
        rating=rating.astype(np.float32),
        timestamp=timestamp,
        name=fmt.dataset,
    )


# ------------------------------------------------------------------------------- file access
def locate(
    dataset: str, title: str, filename: str, kind: str, root: str | Path, download: bool
) -> Path:
    """``<root>/<dataset>/<filename>``, fetched first when missing and ``download`` is set."""
    base = Path(root).expanduser().absolute()
    path = base / dataset / filename
    if path.is_dir():
        raise DataError(
            f"{dataset} {kind} {path} is a folder, not a file; put {title}'s {filename} file there "
            "(not the folder that holds it)"
        )
    if not path.is_file() and download:
        from recbench.data.download import fetch

        fetch(dataset, base)
        if not path.is_file():
            raise DataError(
                f"the {title} archive was extracted into {base} but {path} is still missing; "
                f"put {title}'s {filename} there by hand"
            )
    if not path.is_file():
        raise DataError(
            f"{dataset} {kind} not found: {path}; put {title}'s {filename} there, set "
            f"dataset.root (or RECBENCH_DATA) to the folder holding {dataset}/, or pass "
            "dataset.download=true"
        )
    return path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, with an unreadable file reported as a DataError."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path}: {exc.strerror or exc}; check its permissions"
        ) from exc


def _show(text: str, limit: int = 60) -> str:
    """A bad line as it appears in a message: escaped and shortened."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _lines(data: bytes, first_number: int) -> list[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line; latin-1 never fails to decode."""
    out = []
    for offset, line in enumerate(data.decode("latin-1").split("\n")):
        text = line.rstrip("\r")
        if text.strip():
            out.append((first_number + offset, text))
    return out


# ------------------------------------------------------------------------------------ parsing
def parse_ratings(
    data: bytes, fmt: RatingFormat, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rating, timestamp) arrays of a ratings file's bytes; DataError when malformed."""
    if not data.strip():
        raise DataError(f"{path} is empty; expected {fmt.title} ratings ({fmt.expected})")
    body, first_number = data, 1
    if fmt.header is not None:
        head, _, body = data.partition(b"\n")
        got = head.decode("latin-1").strip().lstrip("\ufeff")
        if got != fmt.header:
            raise DataError(f"{path} line 1: expected the header '{fmt.header}', got {_show(got)}")
        first_number = 2
        if not body.strip():
            raise DataError(f"{path} has a header but no ratings; expected {fmt.expected}")
    columns = _parse_fast(body, fmt)
    if columns is None or not np.isin(columns[2], fmt.allowed).all():
        columns = _parse_lines(body, fmt, path, first_number)
    return columns


def _parse_fast(data: bytes, fmt: RatingFormat) -> tuple[np.ndarray, ...] | None:
    """Vectorised parse; None when the C parser rejects the data (the slow scan then explains)."""
    sep = fmt.sep
    if len(sep) > 1:  # the C parser takes one-character separators only
        data, sep = data.replace(sep.encode(), b"\t"), "\t"
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            header=None,
            dtype={0: np.int64, 1: np.int64, 2: np.float64, 3: np.int64},
            engine="c",
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=True,
        )
    except (ValueError, OverflowError, pd.errors.EmptyDataError):
        return None
    if frame.shape[1] != 4:
        return None
    return tuple(frame[c].to_numpy() for c in range(4))


def _parse_lines(
    data: bytes, fmt: RatingFormat, path: Path, first_number: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line parse that stops at the first bad line with its number (slow, exact)."""
    allowed = set(fmt.allowed)
    rows = []
    for number, text in _lines(data, first_number):
        fields = text.split(fmt.sep)
        values = _numbers(fields) if len(fields) == 4 else None
        if values is None:
            raise DataError(f"{path} line {number}: expected {fmt.expected}, got {_show(text)}")
        if values[2] not in allowed:
            raise DataError(
                f"{path} line {number}: rating {fields[2].strip()} is outside {fmt.title}'s scale "
                f"{fmt.scale}; fix or remove that line"
            )
        rows.append(values)
    if not rows:
        raise DataError(f"{path} has no ratings; expected {fmt.expected}")
    user, item, rating, timestamp = zip(*rows)
    return (
        np.array(user, dtype=np.int64),
        np.array(item, dtype=np.int64),
        np.array(rating, dtype=np.float64),
        np.array(timestamp, dtype=np.int64),
    )


def _numbers(fields: list[str]) -> tuple[int, int, float, int] | None:
    """user, item and timestamp as int64-range integers and the rating as a float, or None."""
    ints = [parse_int64(fields[k]) for k in (0, 1, 3)]
    try:
        rating = float(fields[2])
    except ValueError:
        return None
    if any(v is None for v in ints):
        return None
    return ints[0], ints[1], rating, ints[2]


# ------------------------------------------------------------------------------------- genres
def load_ml_100k_genres(root: str | Path, download: bool = False) -> dict[int, list[str]]:
    """Raw item id -> genre names from ``<root>/ml-100k/u.item`` (``|``-separated, latin-1)."""
    path = locate("ml-100k", "MovieLens 100K", "u.item", "item file", root, download)
    expected = (
        "24 '|'-separated fields 'movie id|title|release date|video release date|IMDb URL' "
        "followed by 19 genre flags (0 or 1)"
    )
    genres: dict[int, list[str]] = {}
    for number, text in _lines(read_bytes(path), 1):
        fields = text.split("|")
        flags = fields[5:]
        item = parse_int64(fields[0])
        if len(fields) != 24 or item is None or any(f not in ("0", "1") for f in flags):
            raise DataError(f"{path} line {number}: expected {expected}, got {_show(text)}")
        genres[item] = [name for name, flag in zip(ML_100K_GENRES, flags) if flag == "1"]
    return _nonempty(genres, path)


def load_ml_1m_genres(root: str | Path, download: bool = False) -> dict[int, list[str]]:
    """Raw item id -> genre names from ``<root>/ml-1m/movies.dat`` (``MovieID::Title::Genres``)."""
    path = locate("ml-1m", "MovieLens 1M", "movies.dat", "movie file", root, download)
    genres: dict[int, list[str]] = {}
    for number, text in _lines(read_bytes(path), 1):
        fields = text.split("::")
        item = parse_int64(fields[0])
        if len(fields) < 3 or item is None:
            raise DataError(
                f"{path} line {number}: expected 'MovieID::Title::Genres' with '|'-separated "
                f"genres, got {_show(text)}"
            )
        genres[item] = _genre_list(fields[-1])
    return _nonempty(genres, path)


def load_ml_latest_small_genres(root: str | Path, download: bool = False) -> dict[int, list[str]]:
    """Raw item id -> genre names from ``<root>/ml-latest-small/movies.csv`` (quoted CSV, UTF-8)."""
    path = locate(
        "ml-latest-small", "MovieLens latest-small", "movies.csv", "movie file", root, download
    )
    text = read_bytes(path).decode("utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{path} is empty; expected the header 'movieId,title,genres' and movies")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lstrip("\ufeff") for h in header] != [
        "movieId",
        "title",
        "genres",
    ]:
        raise DataError(f"{path} line 1: expected the header 'movieId,title,genres', got {header}")
    genres: dict[int, list[str]] = {}
    for row in reader:
        if not row:
            continue
        item = parse_int64(row[0]) if len(row) == 3 else None
        if item is None:
            raise DataError(
                f"{path} line {reader.line_num}: expected 3 comma-separated fields "
                f"'movieId,title,genres' (quote titles holding commas), got {row}"
            )
        genres[item] = _genre_list(row[2])
    return _nonempty(genres, path)


def _genre_list(field: str) -> list[str]:
    """``Comedy|Drama`` -> ["Comedy", "Drama"]; GroupLens' "(no genres listed)" -> []."""
    names = [g.strip() for g in field.strip().split("|")]
    return [g for g in names if g and g != "(no genres listed)"]


def _nonempty(genres: dict[int, list[str]], path: Path) -> dict[int, list[str]]:
    if not genres:
        raise DataError(f"{path} is empty; expected one movie per line")
    return genres


GENRE_LOADERS = {
    "ml-100k": load_ml_100k_genres,
    "ml-1m": load_ml_1m_genres,
    "ml-latest-small": load_ml_latest_small_genres,
}
