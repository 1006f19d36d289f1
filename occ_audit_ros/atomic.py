"""Atomic file writes: a reader, a resumed job or a crash never sees a half-written file (ROS-free).

Every writer of the package (checkpoints, caches, packs, shards, audit stores, figures) goes through
:func:`atomic_path`: write to a temporary file in the destination's folder, then ``os.replace`` it onto
the destination (atomic on POSIX within one file system). On any error the temporary file is removed
and the destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_bytes_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, the file
    written there is chmod-ed to ``mode`` and moved onto ``path``.

    Args:
        path: destination; its folder is created if missing.
        suffix: suffix of the temporary name. Writers that append an extension themselves need it:
            ``np.savez*`` -> ``".npz"``, ``np.save`` -> ``".npy"``.
        mode: permission bits of the result (``mkstemp`` creates 0600; outputs are meant to be shared).

    The temporary file exists (empty) when the block starts, so a block that writes nothing replaces
    ``path`` with an empty file.

    Raises:
        Whatever the block raises (after removing the temporary file); ``OSError`` from the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); ``fsync=True`` also flushes the data
    to the disk before the rename (survives a power loss, not only a killed process). Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return path
