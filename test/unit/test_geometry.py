"""Geometry primitives, and the keyframe's geometry checked against the data's own references:
the MMDetection3D 2D boxes (projected by nuScenes from the original annotations) and the devkit's
LiDAR-to-image mapping."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pyquaternion import Quaternion
from scipy.spatial.transform import Rotation
from shapely.geometry import MultiPoint
from shapely.geometry import box as shapely_box

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import (
    backproject_depth,
    box_corners,
    invert_transform,
    make_transform,
    matrix_to_pose_xyzw,
    matrix_to_quaternion,
    points_to_depth_image,
    pose_xyzw_to_matrix,
    project_points,
    quaternion_to_matrix,
    transform_points,
)
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera, lidar_points_in_camera

K_TEST = np.array([[800.0, 0.0, 320.0], [0.0, 790.0, 240.0], [0.0, 0.0, 1.0]])


def _random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# --------------------------------------------------------------------------- primitives


def test_quaternion_to_matrix_matches_pyquaternion_and_round_trips():
    for q in _random_quaternions(20):
        R = quaternion_to_matrix(q)
        np.testing.assert_allclose(R, Quaternion(q).rotation_matrix, atol=1e-12)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        q2 = matrix_to_quaternion(R)
        assert q2[0] >= 0
        np.testing.assert_allclose(q2, q * np.sign(q[0]), atol=1e-12)
    # Unnormalised input (as stored with limited precision) still gives a rotation.
    np.testing.assert_allclose(quaternion_to_matrix([2.0, 0, 0, 0]), np.eye(3))
    with pytest.raises(ValueError):
        quaternion_to_matrix([1.0, 0.0, 0.0])


def _half_turns() -> np.ndarray:
    """(K, 3, 3) rotations by 180 degrees (w = 0: the sign of the quaternion is ambiguous) about
    the axes, diagonals and random axes."""
    axes = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, -1, 1], [1, 1, 1], [-1, 2, 0.5]]
    axes += list(np.random.default_rng(7).normal(size=(5, 3)))
    axes = np.asarray(axes, dtype=np.float64)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return Rotation.from_rotvec(np.pi * axes).as_matrix()


def _canonical_sign(q_xyzw: np.ndarray) -> bool:
    """w > 0, or w exactly 0 and the first non-zero of x, y, z positive (scipy's canonical form).

    For a half turn computed in floating point, w is usually a round-off residue (~1e-17) rather
    than 0, so the sign of (x, y, z) follows that residue's sign: only w >= 0 is guaranteed."""
    x, y, z, w = q_xyzw
    if w != 0:
        return w > 0
    first = next(v for v in (x, y, z) if v != 0)
    return first > 0


def test_pose_xyzw_round_trips_against_scipy_random_and_half_turns():
    rng = np.random.default_rng(3)
    rotations = list(Rotation.random(200, random_state=4).as_matrix()) + list(_half_turns())
    rotations += [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    for R in rotations:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, rng.normal(size=3) * 20
        t, q = matrix_to_pose_xyzw(T)
        assert t.dtype == q.dtype == np.float64 and t.shape == (3,) and q.shape == (4,)
        np.testing.assert_array_equal(t, T[:3, 3])
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
        assert _canonical_sign(q), q
        # Same rotation as scipy's (independent of the sign) and the same canonical quaternion.
        np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), R, atol=1e-12)
        np.testing.assert_allclose(q, Rotation.from_matrix(R).as_quat(canonical=True), atol=1e-12)
        np.testing.assert_allclose(pose_xyzw_to_matrix(t, q), T, atol=1e-12)
        # Scalar-first order is the same quaternion with w moved to the front.
        np.testing.assert_allclose(matrix_to_quaternion(R), np.r_[q[3], q[:3]], atol=1e-12)
        # Both signs of a quaternion are one rotation.
        np.testing.assert_allclose(pose_xyzw_to_matrix(t, -q), T, atol=1e-12)


def test_pose_xyzw_to_matrix_known_values_and_orders():
    s = np.sqrt(0.5)
    # 90 degrees about +z, (x, y, z, w): the child's x axis points along the parent's +y.
    T = pose_xyzw_to_matrix([1.0, 2.0, 3.0], [0.0, 0.0, s, s])
    np.testing.assert_allclose(T @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)
    # The same rotation given scalar first to make_transform.
    np.testing.assert_allclose(make_transform([1.0, 2.0, 3.0], [s, 0.0, 0.0, s]), T, atol=1e-12)
    # Half turn about x: (1, 0, 0, 0) in (x, y, z, w), canonical (x > 0 when w == 0).
    t, q = matrix_to_pose_xyzw(np.diag([1.0, -1.0, -1.0, 1.0]))
    np.testing.assert_allclose(q, [1.0, 0.0, 0.0, 0.0], atol=1e-15)
    # Round-off in the norm is renormalised.
    np.testing.assert_allclose(pose_xyzw_to_matrix([0, 0, 0], [0, 0, 0, 1 + 1e-5]), np.eye(4), atol=1e-15)


@pytest.mark.parametrize(
    "translation, quat, match",
    [
        ([0, 0, 0], [0, 0, 0, 0], "norm"),
        ([0, 0, 0], [0, 0, 0, 2], "norm"),
        ([0, 0, 0], [0.1, 0, 0, 1], "norm"),
        ([0, 0, 0], [np.nan, 0, 0, 1], "non-finite"),
        ([np.inf, 0, 0], [0, 0, 0, 1], "non-finite"),
        ([0, 0], [0, 0, 0, 1], "translation"),
        ([0, 0, 0], [0, 0, 1], "quaternion"),
    ],
)
def test_pose_xyzw_to_matrix_rejects(translation, quat, match):
    with pytest.raises(ValueError, match=match):
        pose_xyzw_to_matrix(translation, quat)


@pytest.mark.parametrize(
    "matrix, match",
    [
        (np.eye(3), "4, 4"),
        (np.diag([1.0, 1.0, 1.0, 2.0]), "last row"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "proper rotation"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "proper rotation"),  # reflection, det -1
        (np.full((4, 4), np.nan), "non-finite"),
    ],
)
def test_matrix_to_pose_xyzw_rejects(matrix, match):
    with pytest.raises(ValueError, match=match):
        matrix_to_pose_xyzw(matrix)


def test_matrix_to_quaternion_half_turns_sign_convention():
    for R in _half_turns():
        q = matrix_to_quaternion(R)  # (w, x, y, z)
        assert 0 <= q[0] < 1e-12 and _canonical_sign(np.r_[q[1:], q[0]])
        np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)
        np.testing.assert_allclose(quaternion_to_matrix(-q), R, atol=1e-12)


def test_make_invert_and_transform_points():
    rng = np.random.default_rng(1)
    T = make_transform(rng.normal(size=3), _random_quaternions(1, seed=2)[0])
    assert T.shape == (4, 4) and T.dtype == np.float64
    np.testing.assert_allclose(invert_transform(T) @ T, np.eye(4), atol=1e-12)
    pts = rng.normal(size=(50, 3)) * 10
    homog = (T @ np.c_[pts, np.ones(50)].T).T[:, :3]
    np.testing.assert_allclose(transform_points(T, pts), homog, atol=1e-12)
    np.testing.assert_allclose(
        transform_points(invert_transform(T), transform_points(T, pts)), pts, atol=1e-12
    )
    with pytest.raises(ValueError):
        transform_points(T, pts[:, :2])


def test_project_points_pinhole_and_behind_camera():
    pts = np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 4.0], [0.0, 0.0, -1.0]])
    uv, depth = project_points(K_TEST, pts)
    np.testing.assert_allclose(uv[0], [320.0, 240.0])
    np.testing.assert_allclose(uv[1], [320.0 + 800.0 / 4.0, 240.0 - 790.0 * 0.5 / 4.0])
    assert np.isnan(uv[2]).all()
    np.testing.assert_allclose(depth, [2.0, 4.0, -1.0])


def test_depth_image_nearest_wins_and_rounds_to_pixel_centres():
    # Two points in the same pixel (10, 20): the nearer wins, whatever the input order.
    x = lambda u, z: (u - 320.0) / 800.0 * z  # noqa: E731
    y = lambda v, z: (v - 240.0) / 790.0 * z  # noqa: E731
    pts = np.array(
        [
            [x(10.2, 5.0), y(19.7, 5.0), 5.0],
            [x(9.6, 3.0), y(20.4, 3.0), 3.0],
            [x(100.0, 0.5), y(100.0, 0.5), 0.5],  # closer than min_depth
            [x(-0.6, 2.0), y(5.0, 2.0), 2.0],  # left of the image
            [x(639.4, 7.0), y(479.4, 7.0), 7.0],  # last pixel
        ]
    )
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]):
        depth, index = points_to_depth_image(
            pts[order], K_TEST, 640, 480, min_depth=1.0, return_index=True
        )
        assert depth.dtype == np.float32 and depth.shape == (480, 640)
        assert np.isfinite(depth).sum() == 2
        assert depth[20, 10] == np.float32(3.0)
        assert order[index[20, 10]] == 1
        assert depth[479, 639] == np.float32(7.0)
        assert (index >= 0).sum() == 2


def test_backproject_depth_inverts_projection_at_pixel_centres():
    rng = np.random.default_rng(3)
    depth = np.full((48, 64), np.nan, dtype=np.float32)
    depth[rng.integers(0, 48, 200), rng.integers(0, 64, 200)] = rng.uniform(1, 50, 200)
    depth[0, 0], depth[0, 1], depth[0, 2] = np.inf, -1.0, 0.0  # invalid: skipped
    K = np.array([[50.0, 0.0, 31.5], [0.0, 52.0, 23.5], [0.0, 0.0, 1.0]])
    pts, pix = backproject_depth(depth, K)
    assert pts.shape[1] == 3 and pix.dtype == np.int64
    assert len(pts) == np.count_nonzero(np.isfinite(depth) & (depth > 0))
    uv, z = project_points(K, pts)
    np.testing.assert_allclose(uv, pix, atol=1e-9)
    np.testing.assert_allclose(z, depth[pix[:, 1], pix[:, 0]], rtol=1e-7)
    # The round trip through points_to_depth_image reproduces the image.
    expected = np.where(np.isfinite(depth) & (depth > 1.0), depth, np.nan)
    np.testing.assert_array_equal(points_to_depth_image(pts, K, 64, 48), expected)
    # Stride subsamples rows and columns but keeps full-resolution pixel coordinates.
    pts2, pix2 = backproject_depth(depth, K, stride=2)
    assert (pix2 % 2 == 0).all() and len(pts2) < len(pts)


def test_box_corners_match_devkit_box():
    from nuscenes.utils.data_classes import Box

    center, lwh, yaw = np.array([3.0, -2.0, 0.5]), np.array([4.5, 1.9, 1.6]), 0.7
    ours = box_corners(center, lwh, yaw)
    devkit = Box(center, lwh[[1, 0, 2]], Quaternion(axis=[0, 0, 1], angle=yaw)).corners().T
    np.testing.assert_allclose(ours, devkit, atol=1e-12)
    np.testing.assert_allclose(ours.mean(axis=0), center, atol=1e-12)


# --------------------------------------------------------------------------- real keyframe


def _hull_bbox_in_image(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """nuScenes' 2D box rule: convex hull of the projected corners intersected with the image."""
    hull = MultiPoint([tuple(p) for p in uv]).convex_hull
    return np.array(hull.intersection(shapely_box(0, 0, width, height)).bounds)


def test_every_2d_gt_box_matches_a_3d_box(keyframe):
    total = 0
    for channel, boxes_2d in keyframe.boxes_2d.items():
        for b2 in boxes_2d:
            assert b2.box_index >= 0, f"{channel}: 2D box {b2.bbox} has no 3D box"
            assert keyframe.boxes[b2.box_index].label == b2.label
        total += len(boxes_2d)
    assert total == 84  # 47 + 18 + 2 + 10 + 2 + 5 cam_instances in the pickle
    assert len(keyframe.boxes) == 69


def test_gt_boxes_project_into_their_2d_boxes(keyframe):
    """Project each 3D box with the table calibration (not the pickle's cam2img) into every camera
    where the pickle has a 2D box for it, and compare with that 2D box."""
    worst = 0.0
    for channel, cam in keyframe.cameras.items():
        T_cam_map = invert_transform(cam.T_map_cam)
        for b2 in keyframe.boxes_2d[channel]:
            box = keyframe.boxes[b2.box_index]
            corners = transform_points(T_cam_map, box.corners_map())
            corners = corners[corners[:, 2] > 0]  # as nuScenes did when making the 2D boxes
            uv, _ = project_points(cam.K, corners)
            bbox = _hull_bbox_in_image(uv, cam.width, cam.height)
            err = np.abs(bbox - b2.bbox).max()
            worst = max(worst, err)
            assert err < 1.0, f"{channel} box {box.index} ({box.category}): {bbox} vs {b2.bbox}"
            # Clipping each corner to the image separately is not the same rule: a corner far
            # outside the image clips to a point outside the 2D box (4 boxes here), hence the hull.
    assert worst < 0.2  # observed: 0.052 px (the pickle rounds annotations to 1 mm)


def test_gt_box_frames_are_consistent_with_the_pickle(keyframe):
    with paths.nuscenes_annotations_pkl().open("rb") as f:
        instances = pickle.load(f)["data_list"][0]["instances"]
    lidar = keyframe.lidar
    T_lidar_base = invert_transform(lidar.T_base_lidar)
    for box, inst in zip(keyframe.boxes, instances, strict=True):
        x, y, z, l, w, h, yaw = inst["bbox_3d"]
        np.testing.assert_allclose(transform_points(T_lidar_base, box.center[None])[0], [x, y, z],
                                   atol=1e-9)
        np.testing.assert_allclose(box.size, [l, w, h])
        np.testing.assert_allclose(
            transform_points(lidar.T_map_base, box.corners_base()), box.corners_map(), atol=1e-9
        )
        # The heading seen in the lidar frame's xy plane is the pickle's yaw.
        heading = T_lidar_base[:3, :3] @ box.rotation[:, 0]
        assert abs(np.angle(np.exp(1j * (np.arctan2(heading[1], heading[0]) - yaw)))) < 1e-9


def test_lidar_depth_matches_devkit_projection(keyframe):
    """Same chain as NuScenesExplorer.map_pointcloud_to_image (which works in float32)."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-test", dataroot=str(paths.nuscenes_keyframe_dir()), verbose=False)
    for channel in ("CAM_FRONT", "CAM_BACK_LEFT"):
        cam = keyframe.cameras[channel]
        ref_uv, ref_depth, _ = nusc.explorer.map_pointcloud_to_image(
            keyframe.lidar.token, cam.sample_data_token, min_dist=1.0
        )
        uv, z = project_points(cam.K, lidar_points_in_camera(keyframe, channel))
        with np.errstate(invalid="ignore"):
            mask = (z > 1.0) & (uv[:, 0] > 1) & (uv[:, 0] < cam.width - 1)
            mask &= (uv[:, 1] > 1) & (uv[:, 1] < cam.height - 1)
        assert mask.sum() == len(ref_depth)
        # The devkit keeps map coordinates (~1000 m) in float32: ~1e-4 m, up to 0.02 px here.
        np.testing.assert_allclose(uv[mask], ref_uv[:2].T, atol=0.05)
        np.testing.assert_allclose(z[mask], ref_depth, atol=1e-3)


@pytest.mark.parametrize("channel", conventions.CAMERA_CHANNELS)
def test_lidar_depth_backprojects_to_lidar_points(keyframe, channel):
    cam = keyframe.cameras[channel]
    pts_cam = lidar_points_in_camera(keyframe, channel)
    depth, index = lidar_depth_for_camera(keyframe, channel, return_index=True)
    assert depth.shape == (cam.height, cam.width) and depth.dtype == np.float32
    assert np.array_equal(np.isfinite(depth), index >= 0)
    assert np.nanmin(depth) > 1.0

    back, pix = backproject_depth(depth, cam.K)
    assert len(back) == np.isfinite(depth).sum() > 2000
    src = pts_cam[index[pix[:, 1], pix[:, 0]]]
    # Depth is stored as float32: ~1e-5 m at 100 m.
    np.testing.assert_allclose(back[:, 2], src[:, 2], atol=1e-3)
    # x, y differ by where the point fell inside its pixel: at most half a pixel each way.
    tol = 0.5 * src[:, 2:3] / np.diag(cam.K)[None, :2] + 1e-3
    assert (np.abs(back[:, :2] - src[:, :2]) <= tol).all()

    # Nearest wins: no point projecting into a filled pixel is in front of the stored depth.
    uv, z = project_points(cam.K, pts_cam)
    ok = z > 1.0
    cols = np.floor(uv[ok, 0] + 0.5).astype(int)
    rows = np.floor(uv[ok, 1] + 0.5).astype(int)
    inside = (cols >= 0) & (cols < cam.width) & (rows >= 0) & (rows < cam.height)
    stored = depth[rows[inside], cols[inside]]
    assert np.isfinite(stored).all()
    assert (z[ok][inside] >= stored - 1e-5).all()
