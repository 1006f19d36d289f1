"""ROS message <-> numpy conversions of occ_audit_ros.nodes.conversions, on real message objects."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Quaternion, Transform, Vector3
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from occ_audit_ros.nodes import conversions as cv
from occ_audit_ros.viz import RANDOM_WEIGHTS_BANNER
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec

LABELS = ["car", "tree", "road", "never_seen"]  # label 3 gets no voxel


def make_voxels(random_weights: bool = False, m: int = 300, seed: int = 0) -> SemanticVoxels:
    rng = np.random.default_rng(seed)
    spec = VoxelGridSpec(lower=(-4.0, -4.0, -1.2), upper=(4.0, 4.0, 1.6), voxel_size=0.4)
    indices = np.sort(rng.choice(spec.num_voxels, size=m, replace=False)).astype(np.uint32)
    return SemanticVoxels(
        spec=spec,
        frame_id="base_link",
        labels=list(LABELS),
        indices=indices,
        label_ids=rng.integers(0, 3, size=m).astype(np.uint16),
        scores=rng.random(m).astype(np.float32),
        random_weights=random_weights,
        model="openai/clip-vit-base-patch32",
        stamp_ns=1_532_402_927_647_951_000,
    )


def roundtrip(msg):
    """Serialize with the ROS 2 middleware's CDR and read back: proves the message is valid."""
    return deserialize_message(serialize_message(msg), type(msg))


def raw_image(encoding: str, height: int, width: int, step: int, payload: bytes, bigendian: bool = False) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=int(bigendian))
    msg.data = payload
    return msg


def padded(rows: np.ndarray, pad: int) -> bytes:
    """(H, row_bytes) uint8 rows + ``pad`` garbage bytes per row."""
    garbage = np.full((rows.shape[0], pad), 0xAB, dtype=np.uint8)
    return np.concatenate([rows, garbage], axis=1).tobytes()


# --------------------------------------------------------------------------------------- images


def test_rgb8_roundtrip():
    rgb = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    msg = cv.numpy_to_image(rgb, "rgb8", stamp=123, frame_id="cam_front_optical")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    assert msg.header.frame_id == "cam_front_optical" and cv.stamp_to_ns(msg.header.stamp) == 123
    back = cv.image_to_numpy(roundtrip(msg))
    assert back.dtype == np.uint8 and back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, rgb)


def test_32fc1_roundtrip_keeps_nan_and_inf():
    depth = np.random.default_rng(2).random((4, 6)).astype(np.float32) * 50
    depth[0, 0], depth[1, 2], depth[3, 5] = np.nan, np.inf, -np.inf
    msg = cv.numpy_to_image(depth.astype(np.float64), "32FC1")
    assert msg.step == 24 and msg.is_bigendian == 0
    back = cv.depth_from_image_msg(roundtrip(msg))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, depth)  # assert_array_equal treats NaN == NaN


@pytest.mark.parametrize(
    "encoding, channels, order",
    [("rgb8", 3, [0, 1, 2]), ("bgr8", 3, [2, 1, 0]), ("rgba8", 4, [0, 1, 2]), ("bgra8", 4, [2, 1, 0]),
     ("mono8", 1, [0, 0, 0])],
)
def test_colour_encodings_with_padded_step(encoding, channels, order):
    h, w, pad = 3, 5, 7
    pixels = np.random.default_rng(3).integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    msg = raw_image(encoding, h, w, w * channels + pad, padded(pixels.reshape(h, -1), pad))
    rgb = cv.image_to_numpy(msg)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, pixels[:, :, order])


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_depth_millimetres_endianness_and_padding(encoding, bigendian):
    mm = np.array([[0, 1, 1234], [65535, 500, 0]], dtype=np.uint16)
    raw = mm.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(2, -1)
    msg = raw_image(encoding, 2, 3, 6 + 2, padded(raw, 2), bigendian=bigendian)
    depth = cv.image_to_numpy(msg)
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    expected = (mm / 1000.0).astype(np.float32)
    expected[mm == 0] = np.nan  # REP-118: 0 = no return
    np.testing.assert_array_equal(depth, expected)


def test_big_endian_32fc1():
    depth = np.array([[1.5, np.nan], [80.25, 0.0]], dtype=np.float32)
    msg = raw_image("32FC1", 2, 2, 8, depth.astype(">f4").tobytes(), bigendian=True)
    np.testing.assert_array_equal(cv.depth_from_image_msg(msg), depth)


def test_result_does_not_alias_message_buffer():
    msg = cv.numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8")
    out = cv.rgb_from_image_msg(msg)
    out[:] = 9
    assert bytes(msg.data) == bytes(12)


@pytest.mark.parametrize(
    "func, msg, match",
    [
        (cv.image_to_numpy, raw_image("yuv422", 2, 3, 6, bytes(12)), "unsupported image encoding"),
        (cv.image_to_numpy, raw_image("", 2, 3, 9, bytes(18)), "unsupported image encoding"),
        (cv.image_to_numpy, raw_image("RGB8", 2, 3, 9, bytes(18)), "unsupported image encoding"),
        (cv.image_to_numpy, raw_image("8UC3", 2, 3, 9, bytes(18)), "unsupported image encoding"),
        (cv.rgb_from_image_msg, raw_image("32FC1", 2, 3, 12, bytes(24)), "use depth_from_image_msg"),
        (cv.depth_from_image_msg, raw_image("rgb8", 2, 3, 9, bytes(18)), "use rgb_from_image_msg"),
        (cv.image_to_numpy, raw_image("rgb8", 0, 3, 9, b""), "zero size"),
        (cv.image_to_numpy, raw_image("32FC1", 2, 0, 0, b""), "zero size"),
        (cv.image_to_numpy, raw_image("rgb8", 2, 3, 9, bytes(17)), "expected height"),
        (cv.image_to_numpy, raw_image("rgb8", 2, 3, 9, bytes(19)), "expected height"),
        (cv.image_to_numpy, raw_image("16UC1", 2, 3, 6, bytes(6)), "expected height"),
        (cv.image_to_numpy, raw_image("rgb8", 2, 3, 8, bytes(16)), "step 8 B is smaller"),
        (cv.image_to_numpy, raw_image("32FC1", 2, 3, 6, bytes(12)), "step 6 B is smaller"),
    ],
)
def test_garbage_images_raise(func, msg, match):
    with pytest.raises(ValueError, match=match):
        func(msg)


@pytest.mark.parametrize(
    "array_, encoding",
    [
        (np.zeros((2, 2, 3), np.float32), "rgb8"),
        (np.zeros((2, 2), np.uint8), "rgb8"),
        (np.zeros((2, 2, 4), np.uint8), "rgb8"),
        (np.zeros((2, 2), np.uint16), "32FC1"),
        (np.zeros((2, 2, 1), np.float32), "32FC1"),
        (np.zeros((0, 2), np.float32), "32FC1"),
        (np.zeros((2, 0, 3), np.uint8), "rgb8"),
        (np.zeros((2, 2, 3), np.uint8), "bgr8"),
    ],
)
def test_numpy_to_image_rejects(array_, encoding):
    with pytest.raises(ValueError):
        cv.numpy_to_image(array_, encoding)


# ---------------------------------------------------------------------------------- camera info


def camera_info(k, height=900, width=1600) -> CameraInfo:
    info = CameraInfo(height=height, width=width)
    info.k = np.asarray(k, dtype=np.float64).reshape(9)
    return info


K_NUSC = [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]


def test_camera_info_to_K():
    K = cv.camera_info_to_K(roundtrip(camera_info(K_NUSC)))
    assert K.shape == (3, 3) and K.dtype == np.float64
    np.testing.assert_array_equal(K, K_NUSC)


@pytest.mark.parametrize(
    "k, match",
    [
        (np.zeros((3, 3)), "uncalibrated"),
        ([[-1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]], "fx > 0"),
        ([[1266.4, 0, 816.3], [0, 0.0, 491.5], [0, 0, 1]], "fy > 0"),
        ([[np.nan, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]], "non-finite"),
        ([[1266.4, 0, np.inf], [0, 1266.4, 491.5], [0, 0, 1]], "non-finite"),
        ([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 2]], "pinhole"),
        ([[1266.4, 0, 816.3], [3, 1266.4, 491.5], [0, 0, 1]], "pinhole"),
    ],
)
def test_camera_info_to_K_rejects(k, match):
    with pytest.raises(ValueError, match=match):
        cv.camera_info_to_K(camera_info(k))


def test_camera_info_from_K_round_trip():
    K = np.array([[1266.4, 0.5, 816.3], [0.0, 1266.1, 491.5], [0.0, 0.0, 1.0]])
    info = roundtrip(cv.camera_info_from_K(K, 1600, 900, stamp=77, frame_id="cam_front_optical"))
    assert (info.width, info.height, info.header.frame_id) == (1600, 900, "cam_front_optical")
    assert cv.stamp_to_ns(info.header.stamp) == 77
    np.testing.assert_array_equal(cv.camera_info_to_K(info), K)
    np.testing.assert_array_equal(np.asarray(info.p).reshape(3, 4), np.c_[K, np.zeros(3)])
    np.testing.assert_array_equal(np.asarray(info.r).reshape(3, 3), np.eye(3))
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert (info.binning_x, info.binning_y, info.roi.width, info.roi.height) == (0, 0, 0, 0)
    cv.check_image_matches_info(cv.numpy_to_image(np.zeros((900, 1600, 3), np.uint8), "rgb8"), info)


@pytest.mark.parametrize(
    "K, size, match",
    [
        (np.eye(2), (4, 3), "3, 3"),
        (np.zeros((3, 3)), (4, 3), "fx > 0"),
        (np.diag([1.0, 1.0, np.nan]), (4, 3), "non-finite"),
        (np.eye(3), (0, 3), "positive"),
    ],
)
def test_camera_info_from_K_rejects(K, size, match):
    with pytest.raises(ValueError, match=match):
        cv.camera_info_from_K(K, *size)


def test_check_image_matches_info():
    info = camera_info(K_NUSC, height=4, width=6)
    cv.check_image_matches_info(cv.numpy_to_image(np.zeros((4, 6, 3), np.uint8), "rgb8"), info)
    with pytest.raises(ValueError, match="4 x 6"):
        cv.check_image_matches_info(cv.numpy_to_image(np.zeros((6, 4, 3), np.uint8), "rgb8"), info)


# ----------------------------------------------------------------------------------- transforms


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    msg = Transform(rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
    return cv.transform_to_matrix(msg)[:3, :3]


def test_transform_roundtrip_random_and_half_turns():
    rng = np.random.default_rng(4)
    rotations = [random_rotation(rng) for _ in range(50)]
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]), np.eye(3)]
    for R in rotations:
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, rng.normal(size=3) * 10
        msg = cv.matrix_to_transform(T)
        assert msg.rotation.w >= 0
        q = [msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w]
        assert np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(cv.transform_to_matrix(roundtrip(msg)), T, atol=1e-12)


def test_transform_matches_scipy_on_arbitrary_half_turns():
    """Half turns about arbitrary axes (w ~ 0, where a hand-written branch would be fragile):
    the message quaternion is scipy's canonical one and converts back to the same matrix."""
    axes = np.random.default_rng(8).normal(size=(20, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    for rot in list(Rotation.from_rotvec(np.pi * axes)) + list(Rotation.random(20, random_state=9)):
        T = np.eye(4)
        T[:3, :3] = rot.as_matrix()
        msg = roundtrip(cv.matrix_to_transform(T))
        q = [msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w]
        assert q[3] >= 0
        np.testing.assert_allclose(q, rot.as_quat(canonical=True), atol=1e-12)
        np.testing.assert_allclose(cv.transform_to_matrix(msg), T, atol=1e-12)


def test_transform_stamped_and_pose():
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [0.1, -0.4, 2.5]).as_matrix()
    T[:3, 3] = [4.0, -5.0, 0.25]
    tf = roundtrip(cv.matrix_to_transform_stamped(T, 1_532_402_927_604_844_000, "map", "base_link"))
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "base_link")
    assert cv.stamp_to_ns(tf.header.stamp) == 1_532_402_927_604_844_000
    np.testing.assert_allclose(cv.transform_to_matrix(tf.transform), T, atol=1e-12)
    pose = roundtrip(cv.matrix_to_pose(T))
    assert [pose.position.x, pose.position.y, pose.position.z] == [4.0, -5.0, 0.25]
    o = pose.orientation
    assert [o.x, o.y, o.z, o.w] == [tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z,
                                    tf.transform.rotation.w]
    with pytest.raises(ValueError, match="proper rotation"):
        cv.matrix_to_pose(np.diag([1.0, 1.0, -1.0, 1.0]))


def test_transform_to_matrix_known_yaw():
    # 90 deg about +z: x axis of the child points along +y of the parent (REP-103, CCW positive).
    s = math.sqrt(0.5)
    msg = Transform(translation=Vector3(x=1.0, y=2.0, z=3.0), rotation=Quaternion(x=0.0, y=0.0, z=s, w=s))
    T = cv.transform_to_matrix(msg)
    np.testing.assert_allclose(T @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)


@pytest.mark.parametrize(
    "quat",
    [(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 2.0), (0.1, 0.0, 0.0, 1.0), (math.nan, 0.0, 0.0, 1.0)],
)
def test_transform_to_matrix_rejects_bad_quaternions(quat):
    msg = Transform(rotation=Quaternion(x=quat[0], y=quat[1], z=quat[2], w=quat[3]))
    with pytest.raises(ValueError):
        cv.transform_to_matrix(msg)


def test_transform_to_matrix_rejects_nan_translation_and_renormalises_roundoff():
    with pytest.raises(ValueError, match="non-finite"):
        cv.transform_to_matrix(Transform(translation=Vector3(x=math.inf)))
    T = cv.transform_to_matrix(Transform(rotation=Quaternion(w=1.0 + 1e-5)))
    np.testing.assert_allclose(T, np.eye(4), atol=1e-15)


@pytest.mark.parametrize(
    "matrix",
    [
        np.eye(3),
        np.diag([1.0, 1.0, 1.0, 2.0]),
        np.diag([2.0, 1.0, 1.0, 1.0]),
        np.diag([1.0, 1.0, -1.0, 1.0]),  # reflection, det -1
        np.full((4, 4), np.nan),
    ],
)
def test_matrix_to_transform_rejects(matrix):
    with pytest.raises(ValueError):
        cv.matrix_to_transform(matrix)


# ---------------------------------------------------------------------------------------- stamps


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, 1_532_402_927_647_951_123, -1, -1_500_000_000])
def test_stamp_roundtrip(ns):
    stamp = cv.ns_to_stamp(ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert cv.stamp_to_ns(roundtrip(stamp)) == ns


def test_stamp_errors():
    with pytest.raises(ValueError, match="int32"):
        cv.ns_to_stamp(2**31 * 1_000_000_000)
    with pytest.raises(TypeError):
        cv.ns_to_stamp(1.5e9)
    assert cv.stamp_to_ns(Time(sec=3, nanosec=5)) == 3_000_000_005
    assert cv.stamp_to_ns(cv.ns_to_stamp(np.int64(7))) == 7


# ---------------------------------------------------------------------------------- PointCloud2


def test_pointcloud2_layout_and_readback():
    voxels = make_voxels()
    msg = cv.semantic_voxels_to_pointcloud2(voxels)
    m = len(voxels.indices)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("label", 12, PointField.UINT32, 1),
        ("score", 16, PointField.FLOAT32, 1),
    ]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, m, 20, 20 * m)
    assert len(msg.data) == 20 * m and msg.is_dense and not msg.is_bigendian
    assert msg.header.frame_id == "base_link" and cv.stamp_to_ns(msg.header.stamp) == voxels.stamp_ns

    points = cv.pointcloud2_to_numpy(roundtrip(msg))
    assert points.shape == (m,)
    centers = voxels.centers()
    np.testing.assert_array_equal(np.stack([points["x"], points["y"], points["z"]], axis=1), centers)
    np.testing.assert_array_equal(points["label"], voxels.label_ids)
    np.testing.assert_array_equal(points["score"], voxels.scores)
    # Centres are where they should be: inside the grid and half a voxel off the lower corner.
    lower = np.asarray(voxels.spec.lower)
    np.testing.assert_allclose((centers - lower) / 0.4 % 1.0, 0.5, atol=1e-4)


def test_pointcloud2_explicit_stamp_nan_score_and_empty():
    voxels = make_voxels(m=3)
    voxels.scores[1] = np.nan
    msg = cv.semantic_voxels_to_pointcloud2(voxels, stamp=Time(sec=5, nanosec=6))
    assert not msg.is_dense and msg.header.stamp == Time(sec=5, nanosec=6)
    empty = make_voxels(m=0)
    msg = roundtrip(cv.semantic_voxels_to_pointcloud2(empty))
    assert (msg.width, msg.row_step, len(msg.data)) == (0, 0, 0)
    assert cv.pointcloud2_to_numpy(msg).shape == (0,)


def test_pointcloud2_to_numpy_generic_organised_padded_bigendian():
    # A 2 x 3 organised cloud: big-endian, float64 x + int16[2] pair + padding, padded rows.
    dtype = np.dtype({"names": ["x", "pair"], "formats": [">f8", (">i2", (2,))], "offsets": [0, 8], "itemsize": 16})
    pts = np.zeros((2, 3), dtype=dtype)
    pts["x"] = np.arange(6).reshape(2, 3) * 1.25
    pts["pair"] = np.arange(12).reshape(2, 3, 2) - 6
    rows = pts.view(np.uint8).reshape(2, 48)
    msg = PointCloud2(height=2, width=3, is_bigendian=True, point_step=16, row_step=48 + 4, is_dense=True)
    msg.fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT64, count=1),
                  PointField(name="pair", offset=8, datatype=PointField.INT16, count=2)]
    msg.data = padded(rows, 4)
    out = cv.pointcloud2_to_numpy(roundtrip(msg))
    assert out.shape == (6,)
    np.testing.assert_array_equal(out["x"], pts["x"].reshape(-1))
    np.testing.assert_array_equal(out["pair"], pts["pair"].reshape(6, 2))


def test_numpy_to_pointcloud2_round_trip_with_padding():
    # The bag's LiDAR layout: 4 float32 + uint16 ring + 2 bytes of padding (point_step 20).
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"],
                      "offsets": [0, 4, 8, 12, 16], "itemsize": 20})
    rng = np.random.default_rng(10)
    pts = np.zeros(50, dtype=dtype)
    for name in ("x", "y", "z", "intensity"):
        pts[name] = rng.normal(size=50)
    pts["ring"] = rng.integers(0, 32, size=50)
    msg = roundtrip(cv.numpy_to_pointcloud2(pts, stamp=9, frame_id="lidar_top"))
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("intensity", 12, PointField.FLOAT32, 1), ("ring", 16, PointField.UINT16, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 50, 20, 1000)
    assert msg.is_dense and not msg.is_bigendian and msg.header.frame_id == "lidar_top"
    assert bytes(msg.data) == pts.tobytes()
    out = cv.pointcloud2_to_numpy(msg)
    for name in dtype.names:
        np.testing.assert_array_equal(out[name], pts[name])
    pts["intensity"][3] = np.nan  # is_dense by default: every floating field finite
    assert not cv.numpy_to_pointcloud2(pts).is_dense
    assert cv.numpy_to_pointcloud2(pts, is_dense=True).is_dense


@pytest.mark.parametrize(
    "points, match",
    [
        (np.zeros(3, dtype=np.float32), "structured"),
        (np.zeros(3, dtype=[("x", ">f4")]), "little-endian"),
        (np.zeros(3, dtype=[("x", "<f4", (2,))]), "little-endian scalar"),
        (np.zeros(3, dtype=[("x", "<i8")]), "cannot express"),
        (np.zeros((2, 2), dtype=[("x", "<f4")]), "1-D"),
    ],
)
def test_numpy_to_pointcloud2_rejects(points, match):
    with pytest.raises(ValueError, match=match):
        cv.numpy_to_pointcloud2(points)


def test_pointcloud2_to_numpy_rejects_garbage():
    good = cv.semantic_voxels_to_pointcloud2(make_voxels(m=4))

    def broken(**changes):
        msg = cv.semantic_voxels_to_pointcloud2(make_voxels(m=4))
        for key, value in changes.items():
            setattr(msg, key, value)
        return msg

    cv.pointcloud2_to_numpy(good)
    with pytest.raises(ValueError, match="expected height x row_step"):
        cv.pointcloud2_to_numpy(broken(data=bytes(good.data)[:-1]))
    with pytest.raises(ValueError, match="row_step"):
        cv.pointcloud2_to_numpy(broken(row_step=79))
    with pytest.raises(ValueError, match="past point_step"):
        cv.pointcloud2_to_numpy(broken(point_step=16, row_step=64, data=bytes(64)))
    msg = broken()
    msg.fields[3].datatype = 42
    with pytest.raises(ValueError, match="unknown datatype"):
        cv.pointcloud2_to_numpy(msg)


# -------------------------------------------------------------------------------------- markers


def test_markers_content():
    voxels = make_voxels()
    array_ = roundtrip(cv.semantic_voxels_to_markers(voxels))
    markers = array_.markers
    assert markers[0].action == Marker.DELETEALL and markers[0].ns == ""
    assert all(m.header.frame_id == "base_link" for m in markers)
    assert all(cv.stamp_to_ns(m.header.stamp) == voxels.stamp_ns for m in markers)

    cubes = [m for m in markers if m.type == Marker.CUBE_LIST]
    counts = voxels.counts_per_label()
    assert [m.ns for m in cubes] == [label for label in LABELS if counts[label] > 0] == ["car", "tree", "road"]
    palette = cv.label_palette(len(LABELS))
    centers = voxels.centers()
    for cube in cubes:
        i = LABELS.index(cube.ns)
        assert cube.id == i and cube.action == Marker.ADD
        assert (cube.scale.x, cube.scale.y, cube.scale.z) == pytest.approx((0.4, 0.4, 0.4))
        assert (cube.color.r, cube.color.g, cube.color.b) == pytest.approx(tuple(palette[i]), abs=1e-6)
        assert cube.color.a == pytest.approx(0.8)
        assert cube.pose.orientation.w == 1.0
        got = np.array([[p.x, p.y, p.z] for p in cube.points])
        np.testing.assert_allclose(got, centers[voxels.label_ids == i], atol=1e-6)
        assert len(cube.points) == counts[cube.ns]

    legend = [m for m in markers if m.ns == "legend"]
    assert [m.text for m in legend] == [f"{label}: {counts[label]}" for label in LABELS]
    assert legend[3].text == "never_seen: 0"
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in legend)
    assert all(m.pose.position.y < voxels.spec.lower[1] for m in legend)  # beside the grid, not on it
    assert [m.id for m in legend] == [0, 1, 2, 3]
    assert not [m for m in markers if m.ns == "warning"]
    assert len(markers) == 1 + 3 + 4


def test_boxes_to_markers():
    boxes = [
        SimpleNamespace(center=np.array([10.0, -2.0, 0.8]), size=np.array([4.5, 1.9, 1.6]), category="car", index=0,
                        rotation=Rotation.from_euler("zyx", [2.0, 0.01, -0.02]).as_matrix()),
        SimpleNamespace(center=np.array([3.0, 4.0, 0.9]), size=np.array([0.6, 0.7, 1.8]), category="pedestrian",
                        index=5, rotation=Rotation.from_rotvec([0.0, 0.0, np.pi]).as_matrix()),
    ]
    array_ = roundtrip(cv.boxes_to_markers(boxes, 123, "base_link", {"car": (1.0, 0.5, 0.0)}, (0.6, 0.6, 0.6), 0.5))
    assert len(array_.markers) == 2
    for marker, box in zip(array_.markers, boxes, strict=True):
        assert (marker.type, marker.action) == (Marker.CUBE, Marker.ADD)
        assert (marker.ns, marker.id, marker.header.frame_id) == (box.category, box.index, "base_link")
        assert cv.stamp_to_ns(marker.header.stamp) == 123
        assert marker.lifetime.sec == marker.lifetime.nanosec == 0
        p, q, sc = marker.pose.position, marker.pose.orientation, marker.scale
        np.testing.assert_array_equal([p.x, p.y, p.z], box.center)
        np.testing.assert_array_equal([sc.x, sc.y, sc.z], box.size)
        assert q.w >= 0
        np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(), box.rotation, atol=1e-12)
    car, ped = array_.markers
    assert [car.color.r, car.color.g, car.color.b, car.color.a] == [1.0, 0.5, 0.0, 0.5]
    assert [ped.color.r, ped.color.g, ped.color.b] == pytest.approx([0.6, 0.6, 0.6])
    boxes[0].rotation = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="proper rotation"):
        cv.boxes_to_markers(boxes, 0, "base_link")


def test_markers_random_weights_warning_colors_and_no_legend():
    voxels = make_voxels(random_weights=True)
    colors = np.tile([[0.1, 0.2, 0.3, 1.0]], (4, 1))
    markers = roundtrip(cv.semantic_voxels_to_markers(voxels, stamp=7, colors=colors, legend=False)).markers
    assert not [m for m in markers if m.ns == "legend"]
    warning = [m for m in markers if m.ns == "warning"]
    assert len(warning) == 1 and warning[0].text == RANDOM_WEIGHTS_BANNER
    assert warning[0].text.startswith("RANDOM WEIGHTS")
    assert (warning[0].color.r, warning[0].color.g, warning[0].color.b) == (1.0, 0.0, 0.0)
    assert warning[0].pose.position.z > voxels.spec.upper[2]
    cubes = [m for m in markers if m.type == Marker.CUBE_LIST]
    assert all((m.color.r, m.color.g, m.color.b) == pytest.approx((0.1, 0.2, 0.3)) for m in cubes)
    assert all(cv.stamp_to_ns(m.header.stamp) == 7 for m in markers)
    with pytest.raises(ValueError, match="colors"):
        cv.semantic_voxels_to_markers(voxels, colors=np.zeros((3, 3)))


def test_markers_empty_grid_still_clears():
    markers = cv.semantic_voxels_to_markers(make_voxels(m=0)).markers
    assert markers[0].action == Marker.DELETEALL
    assert not [m for m in markers if m.type == Marker.CUBE_LIST]
    assert isinstance(roundtrip(MarkerArray(markers=markers)), MarkerArray)


# -------------------------------------------------------------------------------------- palette


def test_label_palette():
    p100 = cv.label_palette(100)
    assert p100.shape == (100, 3) and p100.dtype == np.float64
    assert np.all((p100 >= 0) & (p100 <= 1))
    assert len({tuple(np.round(c, 6)) for c in p100}) == 100
    np.testing.assert_array_equal(cv.label_palette(7), p100[:7])  # prefix-stable
    np.testing.assert_array_equal(cv.label_palette(7), cv.label_palette(7))
    # First ten are the saturated tab20 colours: no light twin among them.
    rgb255 = np.round(cv.label_palette(2) * 255).astype(int).tolist()
    assert rgb255 == [[31, 119, 180], [255, 127, 14]]
    assert cv.label_palette(0).shape == (0, 3)
    with pytest.raises(ValueError):
        cv.label_palette(-1)


# ---------------------------------------------------------------------------- SemanticVoxelGrid


def grid_msg_cls():
    try:
        from occ_audit_ros.msg import SemanticVoxelGrid
    except ImportError as exc:
        pytest.skip(f"occ_audit_ros.msg is not generated yet (scripts/build_msgs.py): {exc}")
    return SemanticVoxelGrid


@pytest.mark.parametrize("random_weights", [False, True])
def test_semantic_voxel_grid_roundtrip(random_weights):
    cls = grid_msg_cls()
    voxels = make_voxels(random_weights=random_weights)
    msg = cv.semantic_voxels_to_msg(voxels, cls)
    assert msg.header.frame_id == "base_link" and list(msg.dimensions) == [20, 20, 7]
    assert (msg.origin.x, msg.origin.y, msg.origin.z) == (-4.0, -4.0, -1.2)
    for back in (cv.msg_to_semantic_voxels(msg), cv.msg_to_semantic_voxels(roundtrip(msg))):
        assert back.spec == voxels.spec  # voxel_size survives float32: 0.4f -> 0.4
        assert back.frame_id == voxels.frame_id and back.labels == voxels.labels
        assert back.random_weights is random_weights and back.model == voxels.model
        assert back.stamp_ns == voxels.stamp_ns
        for name, dtype in (("indices", np.uint32), ("label_ids", np.uint16), ("scores", np.float32)):
            assert getattr(back, name).dtype == dtype
            np.testing.assert_array_equal(getattr(back, name), getattr(voxels, name))
    msg = cv.semantic_voxels_to_msg(voxels, stamp=Time(sec=1, nanosec=2))  # default class import
    assert cv.msg_to_semantic_voxels(msg).stamp_ns == 1_000_000_002


def test_semantic_voxel_grid_rejects_garbage():
    cls = grid_msg_cls()
    voxels = make_voxels(m=5)

    def bad(**changes):
        msg = cv.semantic_voxels_to_msg(voxels, cls)
        for key, value in changes.items():
            setattr(msg, key, value)
        return msg

    cases = [
        (bad(voxel_size=0.0), "voxel_size"),
        (bad(voxel_size=math.nan), "voxel_size"),
        (bad(dimensions=[20, 0, 7]), "dimensions"),
        (bad(scores=[0.5]), "same length"),
        (bad(indices=[5, 4, 3, 2, 1]), "sorted"),
        (bad(indices=[1, 1, 2, 3, 4]), "unique"),
        (bad(indices=[1, 2, 3, 4, 20 * 20 * 7]), "indices must be in"),
        (bad(label_ids=[0, 1, 2, 3, 4]), "label ids"),
    ]
    for msg, match in cases:
        with pytest.raises(ValueError, match=match):
            cv.msg_to_semantic_voxels(msg)
    wrong = make_voxels(m=5)
    wrong.label_ids = wrong.label_ids[:4]
    with pytest.raises(ValueError, match="same length"):
        cv.semantic_voxels_to_msg(wrong, cls)
