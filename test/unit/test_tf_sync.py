"""TransformBuffer and ApproximateSynchronizer behaviour."""

import numpy as np
import pytest

from scipy.spatial.transform import Rotation

from occ_audit_ros.geometry import make_transform, matrix_to_pose_xyzw, pose_xyzw_to_matrix
from occ_audit_ros.sync import ApproximateSynchronizer
from occ_audit_ros.tf_buffer import (ExtrapolationError, TransformBuffer, TransformRefused, TransformUnavailable,
                                     interpolate_transform)


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
    # interpolated between the samples around the stamp; far past the newest the lookup fails
    # instead of returning identity
    np.testing.assert_allclose(tf.lookup("map", "base_link", 520_000_000)[:3, 3], [1.04, 0, 0])
    with pytest.raises(TransformUnavailable):
        tf.lookup("map", "base_link", 5_000_000_000)
    with pytest.raises(TransformUnavailable):
        tf.lookup("base_link", "lidar_top")
    with pytest.raises(ValueError):
        tf.set_transform("a", "b", np.full((4, 4), np.nan), 0, static=True)
    assert tf.frames() == {"map", "base_link", "cam_front_optical"}


def test_chain_of_ros_order_quaternions_matches_scipy_composition():
    """TF edges given as ROS (x, y, z, w) quaternions, incl. a half turn: the looked-up chain is
    scipy's composition of the rotations, and it converts back to the composed quaternion."""
    rng = np.random.default_rng(5)
    rotations = list(Rotation.random(3, random_state=6)) + [Rotation.from_rotvec([0.0, np.pi, 0.0])]
    frames = ["map", "odom", "base_link", "lidar_top", "cam_optical"]
    translations = rng.normal(size=(4, 3))
    tf = TransformBuffer()
    for parent, child, rot, t in zip(frames[:-1], frames[1:], rotations, translations):
        tf.set_transform(parent, child, pose_xyzw_to_matrix(t, rot.as_quat()), 0, static=True)
    composed = rotations[0] * rotations[1] * rotations[2] * rotations[3]
    expected_t = np.zeros(3)
    for rot, t in zip(reversed(rotations), reversed(translations)):  # p_parent = R p_child + t
        expected_t = rot.apply(expected_t) + t
    T = tf.lookup("map", "cam_optical")
    np.testing.assert_allclose(T[:3, :3], composed.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], expected_t, atol=1e-12)
    t, q = matrix_to_pose_xyzw(T)
    assert q[3] >= 0
    np.testing.assert_allclose(q, composed.as_quat(canonical=True), atol=1e-12)


def test_sync_matches_within_slop_and_drops_old():
    sync = ApproximateSynchronizer(["a", "b"], slop_ns=50)
    assert sync.add("a", 100, "a100") is None
    assert sync.add("b", 300, "b300") is None  # 200 ns apart: no match
    assert sync.add("a", 310, "a310") == {"a": "a310", "b": "b300"}
    assert sync.add("b", 320, "b320") is None  # a310 was consumed with the set
    assert sync.add("a", 330, "a330") == {"a": "a330", "b": "b320"}
    with pytest.raises(KeyError):
        sync.add("c", 1, "c")


def test_same_stamp_replaces_instead_of_growing():
    tf = TransformBuffer()
    for i in range(50):  # a looped bag republishes the same stamps
        tf.set_transform("map", "base_link", make_transform([float(i), 0, 0], [1, 0, 0, 0]), 1_000, static=False)
    assert len(tf._edges["base_link"].stamps) == 1
    np.testing.assert_allclose(tf.lookup("map", "base_link", 1_000)[:3, 3], [49.0, 0, 0])
    # history is bounded by cache_ns behind the newest sample
    tf = TransformBuffer(cache_ns=1_000)
    for t in range(0, 10_000, 100):
        tf.set_transform("map", "base_link", np.eye(4), t, static=False)
    assert tf._edges["base_link"].stamps[0] >= 9_900 - 1_000


def _brute_force_ok(chosen, slop):
    stamps = [s for s, _ in chosen.values()]
    return max(stamps) - min(stamps) <= slop


def test_sync_many_streams_jitter_within_slop():
    rng = np.random.default_rng(0)
    keys = [(cam, kind) for cam in range(6) for kind in ("image", "info", "depth")]
    slop = 30_000_000
    sync = ApproximateSynchronizer(keys, slop_ns=slop)
    emitted = []
    for frame in range(40):
        base = frame * 500_000_000
        arrivals = [(k, base + int(rng.integers(0, slop // 2))) for k in keys]
        rng.shuffle(arrivals)
        for k, stamp in arrivals:
            out = sync.add(tuple(k), stamp, (tuple(k), stamp))
            if out is not None:
                emitted.append(out)
    assert len(emitted) == 40  # every frame, once
    for s in emitted:
        assert set(s) == set(keys)
        stamps = [m[1] for m in s.values()]
        assert max(stamps) - min(stamps) <= slop
        assert len({st // 500_000_000 for st in stamps}) == 1  # never mixes two frames


def test_sync_recovers_from_future_and_backwards_stamps():
    sync = ApproximateSynchronizer(["a", "b"], slop_ns=10)
    far = 2**62
    assert sync.add("a", far, "future") is None  # far in the future: matches nothing
    assert sync.add("b", 100, "b100") is None
    assert sync.add("a", 100, "a100") == {"a": "a100", "b": "b100"}  # backwards in time: queue restarted
    assert sync.add("b", 50, "b50") is None  # out of order on b: b's queue restarted
    assert sync.add("a", 52, "a52") == {"a": "a52", "b": "b50"}
    sync.slop_ns = 0  # slop changed at run time (parameter callback)
    assert sync.add("a", 200, "a200") is None and sync.add("b", 201, "b201") is None
    assert sync.add("b", 210, "b210") is None and sync.add("a", 210, "a210") == {"a": "a210", "b": "b210"}


def test_lookup_uses_only_the_path_to_the_common_ancestor():
    tf = TransformBuffer()
    T_base_cam = make_transform([1.0, 0.0, 1.5], [0.5, -0.5, 0.5, -0.5])
    tf.set_transform("base_link", "cam_front_optical", T_base_cam, 0, static=True)
    tf.set_transform("base_link", "cam_back_optical", make_transform([-1.0, 0, 1.5], [1, 0, 0, 0]), 0, static=True)
    tf.set_transform("map", "base_link", make_transform([5.0, 0, 0], [1, 0, 0, 0]), 1_000, static=False)
    # the ego pose is far from the requested time, but base_link <- camera does not need it
    np.testing.assert_allclose(tf.lookup("base_link", "cam_front_optical", 10**12), T_base_cam)
    np.testing.assert_allclose(tf.lookup("cam_back_optical", "cam_front_optical", 10**12)[:3, 3], [2.0, 0, 0],
                               atol=1e-12)
    with pytest.raises(ExtrapolationError, match="past the newest transform"):
        tf.lookup("map", "cam_front_optical", 10**12)
    np.testing.assert_allclose(tf.lookup("map", "cam_front_optical", 1_000)[:3, 3], [6.0, 0.0, 1.5])


def _pose(x: float, yaw_deg: float) -> np.ndarray:
    return make_transform([x, 0.0, 0.0], Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()[[3, 0, 1, 2]])


def test_lookup_interpolates_between_the_two_samples_around_the_stamp():
    """tf2 semantics, checked against hand-computed values: a base that moves 1 m in x and turns
    90 degrees about z between t = 1 s and t = 2 s; a camera 2 m ahead of it (static)."""
    tf = TransformBuffer()
    tf.set_transform("odom", "base_link", _pose(0.0, 0.0), 1_000_000_000, static=False)
    tf.set_transform("odom", "base_link", _pose(1.0, 90.0), 2_000_000_000, static=False)
    tf.set_transform("base_link", "cam", make_transform([2.0, 0.0, 0.0], [1, 0, 0, 0]), 0, static=True)
    # a quarter of the way: x = 0.25 m, yaw = 22.5 degrees; the camera at 0.25 + 2 (cos, sin)(22.5 deg)
    T = tf.lookup("odom", "cam", 1_250_000_000, tolerance_ns=0)
    yaw = np.deg2rad(22.5)
    np.testing.assert_allclose(T[:3, 3], [0.25 + 2 * np.cos(yaw), 2 * np.sin(yaw), 0.0], atol=1e-12)
    np.testing.assert_allclose(T[:2, :2], [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]], atol=1e-12)
    # half way: yaw 45 degrees (the shortest-path slerp), x 0.5 m
    T = tf.lookup("odom", "base_link", 1_500_000_000, tolerance_ns=0)
    np.testing.assert_allclose(Rotation.from_matrix(T[:3, :3]).as_euler("xyz", degrees=True), [0, 0, 45], atol=1e-9)
    np.testing.assert_allclose(T[:3, 3], [0.5, 0, 0], atol=1e-12)
    # at a sample: that sample, exactly; stamp 0: the newest (latest common time)
    np.testing.assert_array_equal(tf.lookup("odom", "base_link", 2_000_000_000), _pose(1.0, 90.0))
    np.testing.assert_array_equal(tf.lookup("odom", "base_link", 0), _pose(1.0, 90.0))
    # the inverse direction is the inverse of the interpolated transform
    np.testing.assert_allclose(tf.lookup("cam", "odom", 1_250_000_000) @ tf.lookup("odom", "cam", 1_250_000_000),
                               np.eye(4), atol=1e-12)
    # slerp takes the short way round: from +170 to -170 degrees passes through 180, not 0
    m = interpolate_transform(_pose(0, 170.0), _pose(0, -170.0), 0.5)
    assert abs(abs(Rotation.from_matrix(m[:3, :3]).as_euler("xyz", degrees=True)[2]) - 180.0) < 1e-9


def test_extrapolation_errors_and_the_tolerance_past_the_newest_sample():
    tf = TransformBuffer()
    tf.set_transform("odom", "base_link", _pose(0.0, 0.0), 1_000_000_000, static=False)
    tf.set_transform("odom", "base_link", _pose(1.0, 0.0), 2_000_000_000, static=False)
    tf.set_transform("map", "odom", _pose(10.0, 0.0), 1_000_000_000, static=False)
    tf.set_transform("map", "odom", _pose(20.0, 0.0), 1_800_000_000, static=False)
    # map <- base_link: latest common time 1.8 s (odom edge); 1.85 s is 50 ms past it
    with pytest.raises(ExtrapolationError, match="0.050 s past the newest transform"):
        tf.lookup("map", "base_link", 1_850_000_000, tolerance_ns=49_000_000)
    # within the tolerance: the whole path at the latest common time 1.8 s (as tf2's Time(0)):
    # map <- odom = 20 m, odom <- base_link = 0.8 m (interpolated at 1.8 s)
    np.testing.assert_allclose(tf.lookup("map", "base_link", 1_850_000_000, tolerance_ns=50_000_000)[:3, 3],
                               [20.8, 0, 0], atol=1e-12)
    np.testing.assert_allclose(tf.lookup("map", "base_link", 0)[:3, 3], [20.8, 0, 0], atol=1e-12)
    # before the oldest sample: an error whatever the tolerance (tf2 does not extrapolate into the past)
    with pytest.raises(ExtrapolationError, match="into the past"):
        tf.lookup("odom", "base_link", 999_000_000, tolerance_ns=10**9)
    # inside the data of each edge no tolerance is needed
    np.testing.assert_allclose(tf.lookup("map", "base_link", 1_400_000_000, tolerance_ns=0)[:3, 3],
                               [15.0 + 0.4, 0, 0], atol=1e-12)


def test_lookup_waits_up_to_the_timeout_for_data():
    import threading

    tf = TransformBuffer()
    tf.set_transform("odom", "base_link", _pose(0.0, 0.0), 1_000_000_000, static=False)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 2_000_000_000, tolerance_ns=0, timeout_ns=1_000_000)
    later = threading.Timer(0.05, lambda: tf.set_transform("odom", "base_link", _pose(4.0, 0.0), 3_000_000_000,
                                                           static=False))
    later.start()
    try:  # the sample at 3 s arrives while the lookup waits: interpolated at 2 s = 2 m
        np.testing.assert_allclose(tf.lookup("odom", "base_link", 2_000_000_000, tolerance_ns=0,
                                             timeout_ns=30_000_000_000)[:3, 3], [2.0, 0, 0], atol=1e-12)
    finally:
        later.join()


def test_cycles_and_static_reparenting_are_refused_and_the_tree_recovers():
    tf = TransformBuffer(cache_ns=1_000_000_000)
    T_cam = make_transform([1.0, 0.0, 1.5], [0.5, -0.5, 0.5, -0.5])
    tf.set_transform("base_link", "cam_front_optical", T_cam, 0, static=True)
    tf.set_transform("odom", "base_link", _pose(1.0, 0.0), 1_000_000_000, static=False)
    # an edge closing a cycle through the camera: refused once loudly, then quietly; lookups unaffected
    with pytest.raises(TransformRefused, match="cycle") as err:
        tf.set_transform("cam_front_optical", "odom", np.eye(4), 1_000_000_000, static=False)
    assert err.value.first
    with pytest.raises(TransformRefused) as err:
        tf.set_transform("cam_front_optical", "odom", np.eye(4), 1_100_000_000, static=False)
    assert not err.value.first
    np.testing.assert_allclose(tf.lookup("odom", "cam_front_optical", 1_000_000_000)[:3, 3], [2.0, 0, 1.5])
    # a dynamic edge re-parenting (or replacing) the camera's static parent: refused
    with pytest.raises(TransformRefused, match="static parent"):
        tf.set_transform("map", "cam_front_optical", np.eye(4), 1_000_000_000, static=False)
    with pytest.raises(TransformRefused, match="static parent"):
        tf.set_transform("base_link", "cam_front_optical", np.eye(4), 1_000_000_000, static=False)
    np.testing.assert_array_equal(tf.lookup("base_link", "cam_front_optical"), T_cam)
    # a junk dynamic edge that came first (camera under "junk") is replaced by a re-sent /tf_static
    tf.set_transform("junk", "cam_back_optical", np.eye(4), 1_000_000_000, static=False)
    tf.set_transform("base_link", "cam_back_optical", T_cam, 0, static=True)
    np.testing.assert_array_equal(tf.lookup("base_link", "cam_back_optical", 5), T_cam)
    # a stale dynamic edge that makes a legitimate one close a cycle ages out: map under base_link
    # (junk, last sent at 1 s) blocks map <- odom until it is cache_ns older than the newest sample
    tf.set_transform("base_link", "map", np.eye(4), 1_000_000_000, static=False)
    with pytest.raises(TransformRefused, match="cycle"):
        tf.set_transform("map", "odom", np.eye(4), 1_500_000_000, static=False)
    tf.set_transform("odom", "base_link", _pose(1.0, 0.0), 2_500_000_000, static=False)  # time moves on
    tf.set_transform("map", "odom", _pose(5.0, 0.0), 2_500_000_000, static=False)
    np.testing.assert_allclose(tf.lookup("map", "cam_front_optical", 2_500_000_000)[:3, 3], [7.0, 0, 1.5])
    assert "map" in tf.frames() and "map" not in tf.graph.parent  # a root again


def test_frames_are_capped_and_aged_out_frames_free_room():
    tf = TransformBuffer(cache_ns=1_000_000_000, max_frames=10)
    tf.set_transform("base_link", "cam", np.eye(4), 0, static=True)
    tf.set_transform("odom", "base_link", np.eye(4), 1_000_000_000, static=False)
    for i in range(7):  # 3 + 7 = 10 frames
        tf.set_transform("base_link", f"junk_{i}", np.eye(4), 1_000_000_000, static=False)
    with pytest.raises(TransformRefused, match="more than 10 frames"):
        tf.set_transform("base_link", "junk_new", np.eye(4), 1_000_000_000, static=False)
    assert len(tf.frames()) == 10
    # the junk frames stop while odom <- base_link goes on; once they aged out there is room again
    tf.set_transform("odom", "base_link", np.eye(4), 3_000_000_000, static=False)
    tf.set_transform("base_link", "cam_back", np.eye(4), 0, static=True)
    assert tf.frames() == {"odom", "base_link", "cam", "cam_back"}
    np.testing.assert_array_equal(tf.lookup("odom", "cam", 3_000_000_000), np.eye(4))
