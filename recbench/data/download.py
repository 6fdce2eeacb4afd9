"""Fetch an official GroupLens MovieLens archive, verify its pinned sha256, extract what is needed.

Why pinned checksums: GroupLens serves the archives over plain URLs and ``ml-latest-small`` is a
*rolling* release; a run must never silently train on different data than the paper tables it is
compared with. So an archive is downloaded to a temporary file, its sha256 is compared with the
value pinned in ``ARCHIVES``, and only then are the listed members extracted, each written to a
temporary file and moved into place atomically (the ratings file last, so its presence means the
extraction finished). The archive itself is deleted afterwards. An archive without a pinned
checksum is never downloaded.

Where the checksums come from: TensorFlow Datasets pins the three archives (URL, size, sha256) in
``tensorflow_datasets/url_checksums/movielens.txt``; independent projects pin the same values
(e.g. the Keras-RS SASRec example for ml-1m). For ml-latest-small this is the September 2018
release (978,202 bytes; its ratings.csv has 100,836 rows and sha256 aa289ca8...352646, matching the
copy described in ``/work/shared/data/PROVENANCE.md``).

``ARCHIVES`` is a plain module-level table so that tests (or a local mirror) can point a name at
another URL, e.g. a ``file://`` zip, with ``dataclasses.replace``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # seconds without progress before a download is abandoned
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: where it is, its pinned sha256, and which members to extract."""

    url: str
    sha256: str | None  # lower-case hex; None = no trustworthy checksum, so never downloaded
    members: tuple[str, ...]  # zip paths, extracted to <root>/<path>, in this order
    size: int | None = None  # bytes, for the log only


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"

ARCHIVES: dict[str, Archive] = {
    # sha256 and size: tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt.
    "ml-100k": Archive(
        url=f"{_GROUPLENS}/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        members=("ml-100k/README", "ml-100k/u.genre", "ml-100k/u.item", "ml-100k/u.data"),
        size=4_924_029,
    ),
    # sha256 and size: tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt;
    # the same value is pinned by the Keras-RS SASRec example (MOVIELENS_ZIP_HASH).
    "ml-1m": Archive(
        url=f"{_GROUPLENS}/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        members=("ml-1m/README", "ml-1m/movies.dat", "ml-1m/ratings.dat"),
        size=5_917_549,
    ),
    # The September 2018 release (ratings.csv: 100,836 rows). sha256 and size: tensorflow/datasets,
    # tensorflow_datasets/url_checksums/movielens.txt. If GroupLens replaces the file, the download
    # fails the check rather than changing the benchmark's data.
    "ml-latest-small": Archive(
        url=f"{_GROUPLENS}/ml-latest-small.zip",
        sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        members=(
            "ml-latest-small/README.txt",
            "ml-latest-small/movies.csv",
            "ml-latest-small/ratings.csv",
        ),
        size=978_202,
    ),
}


def fetch(name: str, root: str | Path, *, timeout: float = TIMEOUT_S) -> Path:
    """Download archive ``name``, check its sha256 and extract its members under ``root``.

    Returns ``root / name``. Raises DataError (one line) when the download fails, the checksum
    differs (nothing is extracted then) or the archive lacks a member.
    """
    archive = _archive(name)
    root = Path(root).expanduser().absolute()
    if archive.sha256 is None:
        raise DataError(
            f"recbench has no pinned sha256 for the {name} archive and will not use an unverified "
            f"download; fetch {archive.url} yourself and unzip {', '.join(archive.members)} into {root}"
        )
    _check_members(archive)
    _make_dir(root)
    size = f" ({archive.size:,} bytes)" if archive.size else ""
    log.info("downloading %s from %s%s", name, archive.url, size)
    part, digest = _download(name, archive, root, timeout)
    try:
        if digest != archive.sha256.lower():
            raise DataError(
                f"the {name} archive from {archive.url} has sha256 {digest} but {archive.sha256} "
                "is pinned; the download is corrupt or the file changed upstream, so nothing was "
                f"extracted; try again, or unzip a verified copy's {', '.join(archive.members)} "
                f"into {root}"
            )
        _extract(name, part, archive, root)
    finally:
        part.unlink(missing_ok=True)
    log.info("extracted %s into %s", name, root)
    return root / name


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        raise ConfigError(
            f"no download is known for dataset '{name}'; downloadable: {', '.join(sorted(ARCHIVES))} "
            "(put other datasets' files under dataset.root yourself)"
        )
    return ARCHIVES[name]


def _check_members(archive: Archive) -> None:
    """Members must be plain relative paths, so extraction cannot escape ``root``."""
    for member in archive.members:
        parts = PurePosixPath(member).parts
        if not parts or member.startswith("/") or ".." in parts or "\\" in member:
            raise ConfigError(
                f"archive member {member!r} of {archive.url} is not a plain relative path"
            )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {path}: {exc.strerror or exc}; set dataset.root "
            "(or RECBENCH_DATA) to a writable folder"
        ) from exc


def _download(name: str, archive: Archive, root: Path, timeout: float) -> tuple[Path, str]:
    """Stream the URL into a temporary file in ``root``; return it with its sha256."""
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}-", suffix=".zip.part")
    part = Path(tmp)
    digest = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(archive.url, timeout=timeout) as src,
        ):
            for block in iter(lambda: src.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {name} from {archive.url}: {reason}; check the network "
            f"connection (or proxy), or download it yourself and unzip "
            f"{', '.join(archive.members)} into {root}"
        ) from exc
    return part, digest.hexdigest()


def _extract(name: str, zip_path: Path, archive: Archive, root: Path) -> None:
    """Extract the listed members only, each atomically; check they all exist first."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            missing = [m for m in archive.members if m not in set(zf.namelist())]
            if missing:
                raise DataError(
                    f"the {name} archive from {archive.url} has no {', '.join(missing)}; "
                    "nothing was extracted; check the URL in recbench.data.download.ARCHIVES"
                )
            for member in archive.members:
                _extract_one(zf, member, root / member)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(
            f"the {name} archive from {archive.url} is not a readable zip ({exc}); delete any "
            "partial files and try again"
        ) from exc


def _extract_one(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
    _make_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, zf.open(member) as src:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"cannot write {dest}: {exc.strerror or exc}; free disk space or set dataset.root "
            "(or RECBENCH_DATA) to a writable folder"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
