"""Loaders on small files written in each official format (ML-1M's '::' included), their malformed
variants, the pinned-checksum download from a local file:// archive, k-core filtering, and the
synthetic generator's learnable structure."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recbench.data import download
from recbench.data.filters import kcore
from recbench.data.interactions import Interactions
from recbench.data.movielens import load_ml_1m, load_ml_100k, load_ml_latest_small
from recbench.data.sequence_file import load_sequence_file
from recbench.data.synthetic import generate
from recbench.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ml_100k_tab_format(tmp_path: Path) -> None:
    write(tmp_path / "ml-100k" / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    inter = load_ml_100k(tmp_path)
    assert inter.user.tolist() == [196, 186] and inter.item.tolist() == [242, 302]
    assert inter.rating.tolist() == [3.0, 3.0] and inter.timestamp.tolist() == [
        881250949,
        891717742,
    ]


def test_ml_1m_double_colon_format(tmp_path: Path) -> None:
    write(
        tmp_path / "ml-1m" / "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n",
    )
    inter = load_ml_1m(tmp_path)
    assert inter.user.tolist() == [1, 1, 2] and inter.item.tolist() == [1193, 661, 1357]
    assert inter.rating.tolist() == [5.0, 3.0, 5.0] and inter.timestamp[2] == 978298709


def test_ml_latest_small_csv_with_half_stars(tmp_path: Path) -> None:
    write(tmp_path / "ml-latest-small" / "ratings.csv",
          "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n")  # fmt: skip
    inter = load_ml_latest_small(tmp_path)
    assert inter.rating.tolist() == [4.0, 0.5] and inter.item.tolist() == [1, 3]


@pytest.mark.parametrize(
    ("loader", "relative", "text", "expected"),
    [
        (load_ml_1m, "ml-1m/ratings.dat", "1::1193::5::978300760\n1::661::3\n", "line 2"),
        (
            load_ml_1m,
            "ml-1m/ratings.dat",
            "1::1193::5::978300760\n1::661::9::978302109\n",
            "line 2",
        ),
        (load_ml_100k, "ml-100k/u.data", "1\t2\t3\t4\n1\tx\t3\t4\n", "line 2"),
        (load_ml_latest_small, "ml-latest-small/ratings.csv", "user,movie\n1,2\n", "ratings.csv"),
    ],
    ids=["1m-short-line", "1m-rating-out-of-range", "100k-not-a-number", "csv-wrong-header"],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, loader, relative: str, text: str, expected: str
) -> None:  # noqa: ANN001
    write(tmp_path / relative, text)
    with pytest.raises(DataError) as err:
        loader(tmp_path)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_missing_file_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="put MovieLens 1M's ratings.dat there"):
        load_ml_1m(tmp_path)


def test_sequence_file(tmp_path: Path) -> None:
    path = write(tmp_path / "seq.txt", "1 10\n1 11\n2 10\n1 12\n")
    inter = load_sequence_file(path)
    assert inter.user.tolist() == [1, 1, 2, 1] and inter.item.tolist() == [10, 11, 10, 12]
    order = inter.time_order()  # file order is time order within each user
    assert inter.item[order].tolist() == [10, 11, 12, 10]
    write(tmp_path / "bad.txt", "1 10\n1 eleven\n")
    with pytest.raises(DataError, match="line 2"):
        load_sequence_file(tmp_path / "bad.txt")


def test_download_checks_the_pinned_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/README", "readme")
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
        zf.writestr("ml-1m/ratings.dat", "1::1::5::978300760\n")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    good = dataclasses.replace(download.ARCHIVES["ml-1m"], url=archive.as_uri(), sha256=digest)
    monkeypatch.setitem(download.ARCHIVES, "ml-1m", good)
    root = tmp_path / "data"
    assert load_ml_1m(root, download=True).user.tolist() == [1]

    bad = dataclasses.replace(good, sha256="0" * 64)
    monkeypatch.setitem(download.ARCHIVES, "ml-1m", bad)
    other = tmp_path / "other"
    with pytest.raises(DataError, match="is pinned"):
        load_ml_1m(other, download=True)
    assert not (other / "ml-1m" / "ratings.dat").exists()  # nothing extracted on a mismatch


def test_kcore_is_iterated_to_a_fixed_point() -> None:
    # Users 1 and 4 x items 5 and 6 form the 2-core. Item 9 and user 3 have one event each; once
    # item 9 is gone, user 2 is left with one event and must go in a second pass.
    inter = Interactions(user=np.array([1, 1, 4, 4, 2, 2, 3]), item=np.array([5, 6, 5, 6, 5, 9, 6]))
    kept, report = kcore(inter, min_user_count=2, min_item_count=2)
    assert kept.user.tolist() == [1, 1, 4, 4] and kept.item.tolist() == [5, 6, 5, 6]
    assert report.rounds == 3 and report.users_removed == 2 and report.events_removed == 3
    with pytest.raises(ConfigError, match="min_user_count=-1"):
        kcore(inter, -1, 0)


def test_synthetic_is_seeded_and_structured() -> None:
    a, b = (
        generate(num_users=200, num_items=100, seed=3),
        generate(num_users=200, num_items=100, seed=3),
    )
    assert np.array_equal(a.item, b.item) and np.array_equal(a.rating, b.rating)
    assert not np.array_equal(a.item, generate(num_users=200, num_items=100, seed=4).item)
    counts = np.sort(np.bincount(a.item))[::-1]
    assert counts[:10].sum() > 3 * counts[-10:].sum()  # power-law-like popularity
    assert set(np.unique(a.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pairs = a.user * 1000 + a.item
    assert len(np.unique(pairs)) == len(pairs)  # no repeated (user, item)
    with pytest.raises(ConfigError, match="num_items=3"):
        generate(num_items=3)
