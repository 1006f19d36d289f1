"""JSONL audit store keyed by instance token: atomic appends, resumable after kill -9 (docs/visa.md §8).

One record per line. :meth:`AuditStore.append` writes a whole line with a single ``write(2)`` on
an ``O_APPEND`` descriptor and ``fsync``s it, so a killed writer leaves at most one partial last
line; :meth:`AuditStore.open` truncates such a tail (the record was never complete, so it is
redone) and loads the keys already present, so a resumed job neither loses nor duplicates a
record. Shards write their own files; :func:`merge_stores` combines them atomically
(temp file + ``os.replace``).

A store is written by one process at a time: :class:`AuditStore` holds an exclusive
``fcntl.flock`` on its file while open (released by the kernel when the process dies, even by
``kill -9``), so a second writer on the same output refuses with :class:`StoreLocked` instead of
doing all the work twice; :func:`check_unlocked` lets a reader (the merge) refuse a store that is
still being written.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from occ_audit_ros.atomic import write_bytes_atomic


class StoreCorrupt(RuntimeError):
    """A store line other than a torn last line is not valid JSON or has no key."""


class StoreLocked(RuntimeError):
    """Another process has the store open for writing (its exclusive lock is held)."""


def _lock_or_raise(fd: int, path: Path, mode: int) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{path} is being written by another process (its lock is held): run one generator "
                          "per output and shard, or wait for the other to finish") from None


def check_unlocked(path) -> None:
    """Raise :class:`StoreLocked` when a writer holds ``path``'s lock (a missing file is unlocked)."""
    path = Path(path)
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    _lock_or_raise(fd, path, fcntl.LOCK_SH)
    os.close(fd)


def _read_lines(path: Path, key: str) -> tuple[dict[str, dict], int, int]:
    """(records by key, byte length of the complete part, duplicates skipped)."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1  # complete part; a torn tail has no newline
    records: dict[str, dict] = {}
    dup = 0
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise StoreCorrupt(f"{path}:{n}: invalid JSON ({err.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
            raise StoreCorrupt(f"{path}:{n}: record without a string {key!r}")
        if rec[key] in records:
            dup += 1
            continue
        records[rec[key]] = rec
    return records, end, dup


def read_store(path, key: str = "instance_token") -> dict[str, dict]:
    """All complete records of a store file by key (a torn last line is ignored; first copy wins).

    Raises:
        StoreCorrupt: for an invalid complete line.
    """
    return _read_lines(Path(path), key)[0]


class AuditStore:
    """Append-only JSONL store of one process.

    Args:
        path: the ``.jsonl`` file (created with its directory if missing).
        key: record field used as key (``instance_token``).
        fsync: ``fsync`` after every append (default; a crash then loses nothing written).

    Attributes:
        truncated_bytes: bytes of a torn last line removed when opening.

    Raises:
        StoreLocked: another process has this store open (exclusive ``flock``, taken before the
            file is read, held until :meth:`close` or the process ends).
        StoreCorrupt: an invalid complete line.
    """

    def __init__(self, path, key: str = "instance_token", fsync: bool = True) -> None:
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self._fd = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _lock_or_raise(fd, self.path, fcntl.LOCK_EX)
        try:
            records, end, self.duplicates = _read_lines(self.path, key)
            self.keys = set(records)
            self.truncated_bytes = 0
            if self.path.stat().st_size > end:
                self.truncated_bytes = self.path.stat().st_size - end
                os.ftruncate(fd, end)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __contains__(self, token: str) -> bool:
        return token in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, record: dict) -> bool:
        """Append one record as one line; ``False`` (nothing written) when its key is present.

        Raises:
            ValueError: for a record without a string key.
        """
        token = record.get(self.key)
        if not isinstance(token, str):
            raise ValueError(f"record has no string {self.key!r}")
        if token in self.keys:
            return False
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()
        view = memoryview(line)
        while view:  # one write(2) in practice; loop only for a short write
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)
        self.keys.add(token)
        return True

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_stores(paths, out_path, key: str = "instance_token") -> dict[str, dict]:
    """Merge shard stores into one file sorted by key, written atomically.

    Returns:
        The merged records by key (a key present in several shards keeps its first copy).
    """
    merged: dict[str, dict] = {}
    for p in paths:
        for k, rec in read_store(p, key).items():
            merged.setdefault(k, rec)
    body = "".join(json.dumps(merged[k], sort_keys=True, ensure_ascii=False) + "\n" for k in sorted(merged))
    write_bytes_atomic(out_path, body.encode(), fsync=True)
    return merged
