"""Rigid transforms, pinhole projection, depth images and 3D boxes (numpy only, ROS-free).

Conventions used throughout the package:

* A transform ``T_a_b`` is a (4, 4) float64 homogeneous matrix that maps points expressed in frame
  ``b`` into frame ``a``: ``p_a = T_a_b @ p_b``. So ``T_map_base`` is the pose of ``base_link`` in
  ``map`` and ``T_base_cam`` the pose of a camera optical frame in ``base_link`` (exactly the
  nuScenes ``ego_pose`` and ``calibrated_sensor`` records).
* Quaternions: this module is the one place that converts between quaternions and matrices (all
  through :class:`scipy.spatial.transform.Rotation`). Two orders exist and each function names
  its own:

  - scalar first, ``(w, x, y, z)``, as nuScenes stores them: :func:`quaternion_to_matrix`,
    :func:`matrix_to_quaternion`, :func:`make_transform`;
  - scalar last, ``(x, y, z, w)``, the field order of ROS ``geometry_msgs/Quaternion`` (and of
    scipy's default): :func:`pose_xyzw_to_matrix` and :func:`matrix_to_pose_xyzw`, the pair the
    ROS message code uses.

  Quaternions computed from a matrix are unit with ``w >= 0`` (scipy's canonical form: when ``w``
  is exactly 0, the first non-zero of ``x, y, z`` is positive). ``q`` and ``-q`` are the same
  rotation; for half turns ``w`` is usually a round-off residue (~1e-17) rather than 0, so there the
  sign of ``(x, y, z)`` follows round-off and only ``w >= 0`` is guaranteed.
* Camera frames are optical frames (x right, y down, z forward); pixel ``(u, v)`` = (column, row)
  with integer values at pixel centres (OpenCV / ROS ``CameraInfo`` convention), so the pixel that
  contains ``(u, v)`` is ``(round(u), round(v))``.
* Units are metres and radians.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "pose_xyzw_to_matrix",
    "matrix_to_pose_xyzw",
    "yaw_to_matrix",
    "make_transform",
    "invert_transform",
    "transform_points",
    "project_points",
    "points_to_depth_image",
    "backproject_depth",
    "box_corners",
]


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """Rotation matrix of a unit quaternion.

    Args:
        q_wxyz: (4,) quaternion, scalar first ``(w, x, y, z)``. It is normalised first, so
            quaternions stored with limited precision (nuScenes JSON) give an orthonormal matrix.

    Returns:
        (3, 3) float64 rotation matrix.

    Raises:
        ValueError: if ``q_wxyz`` does not have 4 elements or has zero norm.
    """
    q = np.asarray(q_wxyz, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"quaternion must have 4 elements (w, x, y, z), got shape {q.shape}")
    # scipy normalises and raises ValueError on a zero-norm quaternion.
    return Rotation.from_quat(q, scalar_first=True).as_matrix()


def matrix_to_quaternion(rotation) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` (scalar first, nuScenes order) of a rotation matrix.

    Args:
        rotation: (3, 3) rotation matrix, or a (4, 4) transform whose rotation block is used. A
            slightly non-orthonormal matrix gives the quaternion of the nearest rotation.

    Returns:
        (4,) float64 with ``w >= 0`` (the sign is canonicalised so round trips are stable).

    Raises:
        ValueError: on another shape.
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (4, 4):
        r = r[:3, :3]
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be (3, 3) or (4, 4), got shape {r.shape}")
    q = Rotation.from_matrix(r).as_quat(canonical=True, scalar_first=True)
    return q.astype(np.float64)


def pose_xyzw_to_matrix(translation, quaternion_xyzw, norm_tolerance: float = 1e-3) -> np.ndarray:
    """Homogeneous transform from a translation and a scalar-last ``(x, y, z, w)`` quaternion.

    The order of ROS ``geometry_msgs/Transform`` and ``Pose``. The quaternion is renormalised
    (float round-off in upstream TF math), but one whose norm is more than ``norm_tolerance`` off 1
    is rejected as garbage rather than silently "fixed".

    Args:
        translation: (3,) metres, the origin of the child frame in the parent frame.
        quaternion_xyzw: (4,) rotation of the child frame in the parent frame, ``(x, y, z, w)``.
        norm_tolerance: largest accepted ``| |q| - 1 |``.

    Returns:
        (4, 4) float64 ``T_parent_child`` (``p_parent = T @ p_child``).

    Raises:
        ValueError: on wrong sizes, non-finite values or a quaternion norm off 1 by more than
            ``norm_tolerance``.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(-1)
    if t.shape != (3,) or q.shape != (4,):
        raise ValueError(f"need a (3,) translation and an (x, y, z, w) quaternion, got {t.shape} and {q.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ValueError(f"transform has non-finite values: t={t.tolist()}, q={q.tolist()}")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > norm_tolerance:
        raise ValueError(f"quaternion (x, y, z, w)={q.tolist()} has norm {norm}, not 1")
    T = np.eye(4, dtype=np.float64)
    T[:3, :3] = Rotation.from_quat(q / norm).as_matrix()  # scipy's default order is (x, y, z, w)
    T[:3, 3] = t
    return T


def matrix_to_pose_xyzw(matrix, rotation_tolerance: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Translation and scalar-last ``(x, y, z, w)`` quaternion of a rigid transform.

    Inverse of :func:`pose_xyzw_to_matrix`; the order of ROS ``geometry_msgs/Transform``.

    Args:
        matrix: (4, 4) rigid transform ``T_parent_child``: rotation block orthonormal within
            ``rotation_tolerance`` with det > 0, last row (0, 0, 0, 1).
        rotation_tolerance: largest accepted entry of ``|R R^T - I|``.

    Returns:
        ``(translation, quaternion_xyzw)``: (3,) float64 metres and (4,) float64 unit quaternion
        with ``w >= 0`` (scipy's canonical sign).

    Raises:
        ValueError: on a wrong shape, non-finite values, a last row other than (0, 0, 0, 1) or a
            rotation block that is not a proper rotation (a reflection, a scale).
    """
    T = np.asarray(matrix, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"transform matrix must be (4, 4), got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError("transform matrix has non-finite entries")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"last row of a rigid transform must be (0, 0, 0, 1), got {T[3].tolist()}")
    R = T[:3, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=rotation_tolerance) and np.linalg.det(R) > 0):
        raise ValueError(f"rotation block is not a proper rotation matrix: {R.tolist()}")
    q = Rotation.from_matrix(R).as_quat(canonical=True)
    return T[:3, 3].copy(), q.astype(np.float64)


def yaw_to_matrix(yaw: float) -> np.ndarray:
    """(3, 3) float64 rotation of ``yaw`` radians about +z (counter-clockwise seen from above)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def make_transform(translation, rotation_wxyz) -> np.ndarray:
    """Homogeneous transform from a translation and a quaternion.

    Args:
        translation: (3,) metres, the origin of the child frame in the parent frame.
        rotation_wxyz: (4,) quaternion ``(w, x, y, z)`` (normalised here) or a (3, 3) matrix.

    Returns:
        (4, 4) float64 ``T_parent_child``.
    """
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if t.shape != (3,):
        raise ValueError(f"translation must have 3 elements, got shape {t.shape}")
    rot = np.asarray(rotation_wxyz, dtype=np.float64)
    T = np.eye(4, dtype=np.float64)
    T[:3, :3] = rot if rot.shape == (3, 3) else quaternion_to_matrix(rot)
    T[:3, 3] = t
    return T


def invert_transform(T) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform, using ``R^T`` rather than a general matrix inverse.

    Returns:
        (4, 4) float64 ``T_b_a`` for input ``T_a_b``.
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"transform must be (4, 4), got shape {T.shape}")
    inv = np.eye(4, dtype=np.float64)
    rt = T[:3, :3].T
    inv[:3, :3] = rt
    inv[:3, 3] = -rt @ T[:3, 3]
    return inv


def transform_points(T, pts) -> np.ndarray:
    """Apply a (4, 4) transform to points.

    Args:
        T: (4, 4) ``T_a_b``.
        pts: (N, 3) points in frame ``b`` (any float dtype; extra columns are not accepted).

    Returns:
        (N, 3) float64 points in frame ``a``.
    """
    T = np.asarray(T, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {p.shape}")
    return p @ T[:3, :3].T + T[:3, 3]


def project_points(K, pts_cam) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of points given in a camera optical frame.

    Args:
        K: (3, 3) intrinsic matrix.
        pts_cam: (N, 3) points in the optical frame (x right, y down, z forward), metres.

    Returns:
        ``uv`` (N, 2) float64 pixel coordinates (column, row; pixel centres at integers) and
        ``depth`` (N,) float64 = z in metres. Points with ``z <= 0`` get ``uv = NaN`` (they are
        behind the camera and have no image); callers filter on ``depth``.
    """
    K = np.asarray(K, dtype=np.float64)
    p = np.asarray(pts_cam, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {p.shape}")
    depth = p[:, 2].copy()
    proj = p @ K.T
    uv = np.full((len(p), 2), np.nan, dtype=np.float64)
    front = depth > 0
    uv[front] = proj[front, :2] / proj[front, 2:3]
    return uv, depth


def points_to_depth_image(
    pts_cam,
    K,
    width: int,
    height: int,
    min_depth: float = 1.0,
    max_depth: float = np.inf,
    return_index: bool = False,
):
    """Render points into a sparse depth image (z-buffer, nearest point wins per pixel).

    Args:
        pts_cam: (N, 3) points in the camera optical frame, metres.
        K: (3, 3) intrinsics of the target image.
        width, height: image size in pixels.
        min_depth: points with ``z <= min_depth`` are dropped (1 m, as the nuScenes devkit's
            ``map_pointcloud_to_image``, removes returns from the ego vehicle itself).
        max_depth: points with ``z > max_depth`` are dropped.
        return_index: also return which input point each pixel holds.

    Returns:
        ``depth`` (height, width) float32, metres along the optical axis (z, not range), NaN where
        no point falls. With ``return_index``: ``(depth, index)`` where ``index`` is (height, width)
        int64, the row of ``pts_cam`` whose depth is stored, -1 where empty.
    """
    uv, z = project_points(K, pts_cam)
    keep = (z > min_depth) & (z <= max_depth)
    idx = np.flatnonzero(keep)
    # Nearest pixel centre: pixel (c, r) covers [c - 0.5, c + 0.5) x [r - 0.5, r + 0.5).
    cols = np.floor(uv[idx, 0] + 0.5)
    rows = np.floor(uv[idx, 1] + 0.5)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    idx, cols, rows = idx[inside], cols[inside].astype(np.int64), rows[inside].astype(np.int64)
    flat = rows * width + cols
    # Sort by (pixel, depth) and keep the first of each pixel: an explicit z-buffer, independent
    # of numpy's (unspecified) order of writes for repeated fancy indices.
    order = np.lexsort((z[idx], flat))
    flat_sorted = flat[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = flat_sorted[1:] != flat_sorted[:-1]
    winners = idx[order[first]]
    pix = flat_sorted[first]

    depth = np.full(height * width, np.nan, dtype=np.float32)
    depth[pix] = z[winners].astype(np.float32)
    depth = depth.reshape(height, width)
    if not return_index:
        return depth
    index = np.full(height * width, -1, dtype=np.int64)
    index[pix] = winners
    return depth, index.reshape(height, width)


def backproject_depth(depth, K, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Lift a depth image to 3D points in its camera optical frame.

    Args:
        depth: (H, W) depth along the optical axis in metres; NaN, inf and ``<= 0`` mean no data.
        K: (3, 3) intrinsics of the depth image.
        stride: take every ``stride``-th row and column (subsampling for speed).

    Returns:
        ``points`` (M, 3) float64 in the optical frame, each at its pixel centre's ray scaled to the
        stored depth, and ``pixels`` (M, 2) int64 ``(u, v)`` = (column, row) of each point.
    """
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    K = np.asarray(K, dtype=np.float64)
    sub = d[::stride, ::stride].astype(np.float64)
    rows, cols = np.nonzero(np.isfinite(sub) & (sub > 0))
    z = sub[rows, cols]
    u = cols * stride
    v = rows * stride
    # Invert K on homogeneous pixels (handles skew, unlike x = (u - cx) / fx).
    rays = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64) @ np.linalg.inv(K).T
    points = rays / rays[:, 2:3] * z[:, None]
    return points, np.stack([u, v], axis=1).astype(np.int64)


def box_corners(center, size_lwh, yaw=0.0, rotation=None) -> np.ndarray:
    """The 8 corners of an oriented 3D box.

    Args:
        center: (3,) geometric centre of the box, metres.
        size_lwh: (3,) length (along the box's heading, local x), width (local y), height (local z).
        yaw: heading in radians about +z of the frame ``center`` is expressed in.
        rotation: optional (3, 3) full box orientation; when given it replaces ``yaw`` (used for
            boxes that are upright in ``map`` but slightly tilted in ``base_link``).

    Returns:
        (8, 3) float64 corners in nuScenes ``Box.corners()`` order: first the 4 corners of the
        front face (local +x), then the 4 of the rear face; in each face top-left, top-right,
        bottom-right, bottom-left seen from the front (corners 0-3 +x, 4-7 -x; 0, 1, 4, 5 top).
    """
    l, w, h = np.asarray(size_lwh, dtype=np.float64).reshape(3)
    x = 0.5 * l * np.array([1, 1, 1, 1, -1, -1, -1, -1], dtype=np.float64)
    y = 0.5 * w * np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64)
    z = 0.5 * h * np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64)
    R = yaw_to_matrix(yaw) if rotation is None else np.asarray(rotation, dtype=np.float64)
    return np.stack([x, y, z], axis=1) @ R.T + np.asarray(center, dtype=np.float64).reshape(3)
