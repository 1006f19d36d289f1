"""occ_audit_ros.atomic: the destination is replaced whole or not at all."""

import os

import numpy as np
import pytest

from occ_audit_ros.atomic import atomic_path, write_bytes_atomic


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    dst = tmp_path / "sub" / "a.bin"
    write_bytes_atomic(dst, b"first")
    write_bytes_atomic(dst, b"second", fsync=True)
    assert dst.read_bytes() == b"second"
    assert oct(dst.stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(dst.parent) == ["a.bin"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    dst = tmp_path / "a.npz"
    np.savez_compressed(dst, x=np.arange(3))
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(dst, suffix=".npz") as tmp:
            np.savez_compressed(tmp, x=np.arange(5))
            raise RuntimeError("killed half way")
    assert np.load(dst)["x"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["a.npz"]


def test_numpy_writers_keep_the_name_with_the_matching_suffix(tmp_path):
    dst = tmp_path / "maps.npy"
    with atomic_path(dst, suffix=".npy") as tmp:
        np.save(tmp, np.ones(4))
    assert np.load(dst).sum() == 4 and os.listdir(tmp_path) == ["maps.npy"]
