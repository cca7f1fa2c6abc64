"""The DTRB LMDB format: ``num-samples`` plus 1-based ``image-%09d`` (raw encoded image bytes) and
``label-%09d`` (UTF-8) keys, as DTRB's ``create_lmdb_dataset.py`` writes it.

Environments are opened lazily and read-only without locks, once per process, so that a reader pickled into a
DataLoader worker opens its own (DTRB opened it in the parent, which breaks on Windows and with fork-unsafe state).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

NUM_SAMPLES_KEY = b"num-samples"
_WRITE_BATCH = 1000  # samples per write transaction, as DTRB


class LmdbFormatError(ValueError):
    """An LMDB that is not (or no longer) in DTRB's format: no ``num-samples``, or a missing sample key."""


def image_key(index: int) -> bytes:
    """``image-000000001`` for the 1-based ``index``."""
    return b"image-%09d" % index


def label_key(index: int) -> bytes:
    return b"label-%09d" % index


def is_lmdb(path: str | os.PathLike) -> bool:
    return (Path(path) / "data.mdb").is_file()


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Open an LMDB read-only, without locks or readahead (DTRB's and parseq's settings)."""
    if not is_lmdb(path):
        raise FileNotFoundError(f"No LMDB at {os.fspath(path)!r}: it has no data.mdb.")
    return lmdb.open(os.fspath(path), max_readers=126, readonly=True, lock=False, readahead=False, meminit=False)


# py-lmdb refuses to open one data file twice in a process, so readers of the same LMDB (a training source and an
# audit's reader, say) share one environment per process, closed when the last of them closes. Keyed by the data
# file's device and inode: a symlinked path shares, an LMDB rewritten at the same path gets a fresh environment.
_SHARED: dict[tuple[int, int], list] = {}  # (st_dev, st_ino) -> [environment, open readers, pid]


def _acquire(path: Path) -> tuple[tuple[int, int], lmdb.Environment]:
    if not is_lmdb(path):
        raise FileNotFoundError(f"No LMDB at {os.fspath(path)!r}: it has no data.mdb.")
    stat = (Path(path) / "data.mdb").stat()
    key, pid = (stat.st_dev, stat.st_ino), os.getpid()
    entry = _SHARED.get(key)
    if entry is not None and entry[2] != pid:  # inherited through fork: unusable here
        entry[0].close()
        entry = None
    if entry is None:
        entry = _SHARED[key] = [open_lmdb(path), 0, pid]
    entry[1] += 1
    return key, entry[0]


def _release(key: tuple[int, int]) -> None:
    entry = _SHARED.get(key)
    if entry is not None and entry[2] == os.getpid():
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _SHARED[key]


def _map_size(estimate: int) -> int:
    # A generous map (sparse on Linux/macOS), but not DTRB's fixed 1 TiB that Windows pre-allocates or refuses.
    return max(1 << 30, 4 * estimate)


def write_lmdb(samples: Iterable[tuple[bytes, str]], path: str | os.PathLike, map_size: int | None = None) -> int:
    """Write ``(encoded image bytes, label)`` pairs to a new DTRB-format LMDB at ``path``; returns the count.

    Image bytes are stored as given (no re-encoding). The map grows as needed, so ``map_size`` is only a hint.

    Raises:
        FileExistsError: if ``path`` already holds an LMDB (nothing is overwritten).
    """
    path = Path(path)
    if is_lmdb(path):
        raise FileExistsError(f"{str(path)!r} already holds an LMDB; choose another output path or delete it.")
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(os.fspath(path), map_size=map_size or _map_size(0))
    count = 0
    cache: dict[bytes, bytes] = {}

    def flush(extra: dict[bytes, bytes] | None = None) -> None:
        items = {**cache, **(extra or {})}
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in items.items():
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                env.set_mapsize(env.info()["map_size"] * 2)

    try:
        for image, label in samples:
            if not isinstance(image, (bytes, bytearray, memoryview)):
                raise TypeError(f"Sample {count + 1}: image must be encoded bytes, got {type(image).__name__}.")
            count += 1
            cache[image_key(count)] = bytes(image)
            cache[label_key(count)] = label.encode("utf-8")
            if count % _WRITE_BATCH == 0:
                flush()
                cache.clear()
        flush({NUM_SAMPLES_KEY: str(count).encode()})
    finally:
        env.close()
    return count


class LmdbReader:
    """Random access to a DTRB LMDB, opening the environment lazily in each process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._env: lmdb.Environment | None = None
        self._pid: int | None = None
        self._key: tuple[int, int] | None = None
        key, env = _acquire(self.path)
        try:
            with env.begin() as txn:
                raw = txn.get(NUM_SAMPLES_KEY)
        finally:
            _release(key)
        if raw is None:
            raise LmdbFormatError(
                f"The LMDB at {str(self.path)!r} has no 'num-samples' key, so it is not in DTRB's format (written by "
                f"create_lmdb_dataset.py), or it was not closed properly while being written."
            )
        try:
            self.num_samples = int(raw)
        except ValueError:
            raise LmdbFormatError(
                f"The LMDB at {str(self.path)!r} has a malformed 'num-samples' value {raw!r}; it must be the number "
                f"of samples. Rewrite it with scripts/create_lmdb_dataset.py."
            ) from None
        if self.num_samples < 0:
            raise LmdbFormatError(
                f"The LMDB at {str(self.path)!r} has a negative 'num-samples' ({self.num_samples}); it must be the "
                f"number of samples. Rewrite it with scripts/create_lmdb_dataset.py."
            )

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None, "_pid": None}  # each worker opens its own environment

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():  # first use, or inherited through fork
            self._key, self._env = _acquire(self.path)
            self._pid = os.getpid()
        return self._env

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            _release(self._key)
        self._env = None

    def __enter__(self) -> LmdbReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, index: int) -> tuple[bytes, str]:
        """Sample ``index`` (1-based, as stored): (image bytes, label)."""
        with self.env.begin() as txn:
            return self._read(txn, index)

    def _read(self, txn: lmdb.Transaction, index: int) -> tuple[bytes, str]:
        image, label = txn.get(image_key(index)), txn.get(label_key(index))
        if image is None or label is None:
            missing = "image" if image is None else "label"
            raise LmdbFormatError(
                f"The LMDB at {str(self.path)!r} has no {missing} for sample {index} of {self.num_samples} "
                f"(key {(image_key if image is None else label_key)(index).decode()}): it is truncated or corrupt. "
                f"Rewrite it with scripts/create_lmdb_dataset.py."
            )
        try:
            return image, label.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LmdbFormatError(
                f"The LMDB at {str(self.path)!r} has a label that is not UTF-8 at key {label_key(index).decode()} "
                f"({error.reason}: {label[:40]!r}). Rewrite it with scripts/create_lmdb_dataset.py."
            ) from None

    def labels(self) -> Iterator[str]:
        """Every label in order, without reading images."""
        with self.env.begin() as txn:
            for index in range(1, self.num_samples + 1):
                label = txn.get(label_key(index))
                if label is None:
                    raise LmdbFormatError(f"The LMDB at {str(self.path)!r} has no label for sample {index}.")
                yield label.decode("utf-8")

    def __iter__(self) -> Iterator[tuple[bytes, str]]:
        """Every (image bytes, label) in order, in one read transaction."""
        with self.env.begin(buffers=False) as txn:
            for index in range(1, self.num_samples + 1):
                yield self._read(txn, index)


def find_sources(root: str | os.PathLike, is_source=is_lmdb) -> dict[str, Path]:
    """Every source under ``root`` as ``{relative name: path}``, sorted by name, like DTRB's hierarchical_dataset.

    The relative name is the POSIX path below ``root`` (``"MJ/MJ_train"``); a source at ``root`` itself is named
    after the root folder. Sources are not searched inside other sources.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Data folder not found: {str(root)!r}")
    if is_source(root):
        return {root.resolve().name: root}
    found: dict[str, Path] = {}
    seen: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):  # a symlinked source folder is a source too
        current = Path(dirpath)
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree: do not loop
            dirnames.clear()
            continue
        seen.add(real)
        if current != root and is_source(current):
            found[current.relative_to(root).as_posix()] = current
            dirnames.clear()
        dirnames.sort()
    return dict(sorted(found.items()))


def select_sources(sources: dict[str, Path], select_data: str) -> dict[str, Path]:
    """The sources whose relative name starts with ``select_data`` (``"/"`` selects all), as DTRB's selection of
    leaf folders by name, but matched on the path below the data root only (DTRB matched anywhere in the full path,
    so a root containing the token selected everything)."""
    if select_data in ("/", ""):
        return dict(sources)
    token = select_data.strip("/")
    return {name: path for name, path in sources.items() if name.startswith(token)}


def lmdb_fingerprint(path: str | os.PathLike) -> str:
    """Changes whenever the LMDB is rewritten: its resolved path, sample count, size and modification time."""
    path = Path(path).resolve()
    stat = (path / "data.mdb").stat()
    num_samples = len(LmdbReader(path))
    key = f"{path}|{num_samples}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]
