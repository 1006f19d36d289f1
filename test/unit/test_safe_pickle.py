"""The restricted unpickler reads real data pickles and refuses code and broken files."""

import os
import pickle

import numpy as np
import pytest

from occ_audit_ros import paths
from occ_audit_ros.safe_pickle import load_numpy_pickle

ARKIT = "data/semantic-abstraction-arkit-vn-poster/arkit_vn_poster.pkl"


def test_reads_the_real_arkit_frame():
    scene = load_numpy_pickle(paths.shared_dir() / ARKIT)
    assert scene["rgb"].dtype == np.uint8 and scene["rgb"].ndim == 3
    assert scene["depth"].shape == scene["rgb"].shape[:2]
    assert scene["cam_intr"].shape == (3, 3)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _RunsCode()}))
    with pytest.raises(ValueError, match="evil.pkl.*(posix|os|nt).system is not allowed"):
        load_numpy_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path):
    data = pickle.dumps({"a": np.arange(1000)})
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pkl is not a readable"):
        load_numpy_pickle(path)
