"""TransformBuffer and ApproximateSynchronizer behaviour."""

import numpy as np
import pytest

from occ_audit_ros.geometry import make_transform
from occ_audit_ros.sync import ApproximateSynchronizer
from occ_audit_ros.tf_buffer import TransformBuffer, TransformUnavailable


def test_chain_static_and_dynamic():
    tf = TransformBuffer()
    T_base_cam = make_transform([1.0, 0.0, 1.5], [0.5, -0.5, 0.5, -0.5])
    tf.set_transform("base_link", "cam_front_optical", T_base_cam, 0, static=True)
    for i, x in enumerate([0.0, 1.0, 2.0]):
        tf.set_transform("map", "base_link", make_transform([x, 0, 0], [1, 0, 0, 0]), i * 500_000_000, static=False)
    np.testing.assert_allclose(tf.lookup("base_link", "cam_front_optical"), T_base_cam)
    T = tf.lookup("map", "cam_front_optical", 1_000_000_000)
    np.testing.assert_allclose(T[:3, 3], [3.0, 0.0, 1.5])
    np.testing.assert_allclose(tf.lookup("cam_front_optical", "map", 1_000_000_000) @ T, np.eye(4), atol=1e-12)
    # nearest stamp within tolerance; outside it the lookup fails instead of returning identity
    np.testing.assert_allclose(tf.lookup("map", "base_link", 520_000_000)[:3, 3], [1.0, 0, 0])
    with pytest.raises(TransformUnavailable):
        tf.lookup("map", "base_link", 5_000_000_000)
    with pytest.raises(TransformUnavailable):
        tf.lookup("base_link", "lidar_top")
    with pytest.raises(ValueError):
        tf.set_transform("a", "b", np.full((4, 4), np.nan), 0, static=True)
    assert tf.frames() == {"map", "base_link", "cam_front_optical"}


def test_sync_matches_within_slop_and_drops_old():
    sync = ApproximateSynchronizer(["a", "b"], slop_ns=50)
    assert sync.add("a", 100, "a100") is None
    assert sync.add("b", 300, "b300") is None  # 200 ns apart: no match
    assert sync.add("a", 310, "a310") == {"a": "a310", "b": "b300"}
    assert sync.add("b", 320, "b320") is None  # a310 was consumed with the set
    assert sync.add("a", 330, "a330") == {"a": "a330", "b": "b320"}
    with pytest.raises(KeyError):
        sync.add("c", 1, "c")
