"""ROS 2 messages <-> numpy for the occ_audit_ros nodes (message classes only, no rclpy Node).

Conventions:

* Images: colour images become (H, W, 3) uint8 RGB; depth images become (H, W) float32 metres
  along the optical axis with NaN where there is no return (REP-118: 16UC1 is millimetres and
  0 = no return; 32FC1 is metres and keeps its NaN / +-inf).
* Frames follow REP-103; voxel grids are in ``voxels.frame_id`` (``base_link`` for the node).
* Transforms: (4, 4) ``T_parent_child`` matrices; quaternions are converted only by
  :func:`occ_audit_ros.geometry.pose_xyzw_to_matrix` / :func:`~occ_audit_ros.geometry.matrix_to_pose_xyzw`
  (message order ``x, y, z, w``; ``w >= 0`` on output).
* These builders are the only place the package makes these messages: the nodes publish them and
  :mod:`occ_audit_ros.tools.nuscenes_to_bag` serialises the same objects into bags.
* Stamps are ``builtin_interfaces/Time`` on the wire and int nanoseconds in numpy-land.
* Array fields are filled from bytes (``array.array`` / ``bytes``), never from Python lists of
  numbers, because rosidl's per-element conversion costs ~1 s per 10 M elements.

The ``occ_audit_ros.msg`` classes are generated from ``msg/*.msg`` at build time, so they are
imported lazily (or passed in) and this module imports without them.
"""

from __future__ import annotations

import array
import math
import operator
from typing import Any, Iterable, Mapping

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from occ_audit_ros.geometry import matrix_to_pose_xyzw, pose_xyzw_to_matrix
from occ_audit_ros.palette import RANDOM_WEIGHTS_BANNER, label_palette
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec

__all__ = [
    "BAYER_ENCODINGS",
    "YUV422_ENCODINGS",
    "rgb_from_compressed_msg",
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "POINT_DTYPE",
    "boxes_to_markers",
    "camera_info_from_K",
    "camera_info_to_K",
    "check_image_matches_info",
    "depth_from_image_msg",
    "image_to_numpy",
    "label_palette",
    "matrix_to_pose",
    "matrix_to_transform",
    "matrix_to_transform_stamped",
    "msg_to_semantic_voxels",
    "ns_to_stamp",
    "numpy_to_image",
    "numpy_to_pointcloud2",
    "pointcloud2_to_numpy",
    "rgb_from_image_msg",
    "semantic_voxels_to_markers",
    "semantic_voxels_to_msg",
    "semantic_voxels_to_pointcloud2",
    "stamp_to_ns",
    "transform_to_matrix",
]

# ---------------------------------------------------------------------------------------------
# Time

_NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> int nanoseconds since the epoch (exact, no float rounding)."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Int nanoseconds -> ``builtin_interfaces/Time``.

    Negative times get a negative ``sec`` and ``0 <= nanosec < 1e9``, the ROS convention.

    Raises:
        TypeError: when ``ns`` is not an integer (a float would silently lose nanoseconds).
        ValueError: when the seconds do not fit the message's int32.
    """
    sec, nanosec = divmod(operator.index(ns), _NS_PER_S)
    if not -(2**31) <= sec < 2**31:
        raise ValueError(f"time {ns} ns is outside the int32 seconds range of builtin_interfaces/Time")
    return Time(sec=sec, nanosec=nanosec)


def _to_stamp(stamp: Time | int | None, default_ns: int = 0) -> Time:
    """A Time from a Time, int nanoseconds, or None (= ``default_ns``)."""
    if stamp is None:
        return ns_to_stamp(default_ns)
    if isinstance(stamp, Time):
        return stamp
    return ns_to_stamp(stamp)


# ---------------------------------------------------------------------------------------------
# Images

#: Colour encodings: encoding -> (bytes per pixel, channel order giving R, G, B).
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
#: Depth encodings: encoding -> (numpy kind of one pixel, factor to metres).
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {
    "16UC1": ("u2", 1e-3),  # REP-118: millimetres, 0 = no return
    "mono16": ("u2", 1e-3),
    "32FC1": ("f4", 1.0),  # metres, NaN = no return
}


def _pixel_rows(msg: Image, bytes_per_pixel: int) -> np.ndarray:
    """Validated (H, W * bytes_per_pixel) uint8 view of an Image's pixels, row padding removed."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"image {msg.encoding!r} has zero size ({height} x {width})")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f"image step {step} B is smaller than width {width} x {bytes_per_pixel} B/pixel ({msg.encoding!r})"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != height * step:
        raise ValueError(
            f"image data has {data.size} B, expected height {height} x step {step} = {height * step} B"
        )
    return data.reshape(height, step)[:, :row_bytes]


#: YUV 4:2:2 encodings (sensor_msgs/image_encodings.h): encoding -> byte offsets of (Y0, U, Y1, V).
YUV422_ENCODINGS: dict[str, tuple[int, int, int, int]] = {
    "yuv422": (1, 0, 3, 2),  # UYVY
    "uyvy": (1, 0, 3, 2),
    "yuv422_yuy2": (0, 1, 2, 3),  # YUYV
    "yuyv": (0, 1, 2, 3),
}
#: 8-bit Bayer encodings -> colour of the pixels (0, 0), (0, 1), (1, 0), (1, 1) of each 2 x 2 cell.
BAYER_ENCODINGS: dict[str, str] = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG",
                                   "bayer_grbg8": "GRBG"}


def _yuv422_to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a YUV 4:2:2 image (ITU-R BT.601 limited range, as the ROS drivers)."""
    if int(msg.width) % 2:
        raise ValueError(f"{msg.encoding} image width {msg.width} is odd (4:2:2 pairs pixels)")
    y0, u, y1, v = YUV422_ENCODINGS[msg.encoding]
    rows = _pixel_rows(msg, 2).reshape(int(msg.height), int(msg.width) // 2, 4).astype(np.float32)
    Y = np.stack([rows[..., y0], rows[..., y1]], axis=-1).reshape(int(msg.height), int(msg.width)) - 16.0
    U = np.repeat(rows[..., u] - 128.0, 2, axis=1)
    V = np.repeat(rows[..., v] - 128.0, 2, axis=1)
    rgb = np.stack([1.164 * Y + 1.596 * V, 1.164 * Y - 0.392 * U - 0.813 * V, 1.164 * Y + 2.017 * U], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _bayer_to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an 8-bit Bayer image: each 2 x 2 cell gives its R, mean G and B to its
    four pixels (a nearest-neighbour demosaic: colours at half resolution, luminance edges kept)."""
    h, w = int(msg.height), int(msg.width)
    if h % 2 or w % 2:
        raise ValueError(f"{msg.encoding} image size {w} x {h} is not even (2 x 2 Bayer cells)")
    rows = _pixel_rows(msg, 1).astype(np.float32)
    cells = {(i, j): rows[i::2, j::2] for i in (0, 1) for j in (0, 1)}
    pattern = BAYER_ENCODINGS[msg.encoding]
    where = {}
    for k, colour in enumerate(pattern):
        where.setdefault(colour, []).append(cells[(k // 2, k % 2)])
    rgb = np.stack([np.mean(where[c], axis=0) for c in "RGB"], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)


def rgb_from_compressed_msg(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG, image_transport ``compressed``) -> RGB array.

    Args:
        msg: message whose ``data`` is a JPEG or PNG file (``format`` e.g. ``"jpeg"``, ``"png"`` or
            ``"rgb8; jpeg compressed bgr8"``: the bytes decide, the colour order is the file's).

    Returns:
        (H, W, 3) uint8 RGB (Pillow decode; grey and palette images converted).

    Raises:
        ValueError: ``compressedDepth`` payloads, data that is neither JPEG nor PNG, or a file that
            does not decode.
    """
    import io

    from PIL import Image as PILImage, UnidentifiedImageError

    data = bytes(msg.data)
    fmt = str(msg.format)
    if "compressedDepth" in fmt:
        raise ValueError(f"CompressedImage format {fmt!r} is a depth image, not a colour image")
    if not (data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"CompressedImage ({fmt!r}, {len(data)} B) holds neither JPEG nor PNG data")
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"CompressedImage ({fmt!r}, {len(data)} B) does not decode: {exc}") from exc


def rgb_from_image_msg(msg: Image) -> np.ndarray:
    """Colour ``sensor_msgs/Image`` -> RGB array.

    Args:
        msg: image with encoding rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 (grey copied
            to R, G and B), yuv422 / uyvy, yuv422_yuy2 / yuyv (BT.601) or bayer_{rggb,bggr,gbrg,grbg}8
            (nearest-neighbour 2 x 2 demosaic); ``step`` may include row padding.

    Returns:
        (H, W, 3) uint8 RGB, a fresh C-contiguous array (does not alias ``msg.data``).

    Raises:
        ValueError: on another encoding, a zero-size image, ``step < width * bytes_per_pixel``,
            or ``len(data) != height * step``.
    """
    if msg.encoding in YUV422_ENCODINGS:
        return _yuv422_to_rgb(msg)
    if msg.encoding in BAYER_ENCODINGS:
        return _bayer_to_rgb(msg)
    if msg.encoding not in COLOR_ENCODINGS:
        hint = " (a depth encoding: use depth_from_image_msg)" if msg.encoding in DEPTH_ENCODINGS else ""
        supported = sorted(COLOR_ENCODINGS) + sorted(YUV422_ENCODINGS) + sorted(BAYER_ENCODINGS)
        raise ValueError(f"unsupported colour encoding {msg.encoding!r}{hint}; supported: {supported}")
    channels, order = COLOR_ENCODINGS[msg.encoding]
    rows = _pixel_rows(msg, channels)
    pixels = rows.reshape(int(msg.height), int(msg.width), channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])  # fancy indexing copies


def depth_from_image_msg(msg: Image) -> np.ndarray:
    """Depth ``sensor_msgs/Image`` -> metres.

    Args:
        msg: image with encoding 16UC1 or mono16 (millimetres, 0 = no return, per REP-118) or
            32FC1 (metres); ``is_bigendian`` and ``step`` padding are honoured.

    Returns:
        (H, W) float32 depth along the optical axis [m]; NaN where 16-bit pixels are 0; 32FC1
        values (including NaN / inf) are passed through unchanged.

    Raises:
        ValueError: on another encoding, a zero-size image, ``step < width * bytes_per_pixel``,
            or ``len(data) != height * step``.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        hint = " (a colour encoding: use rgb_from_image_msg)" if msg.encoding in COLOR_ENCODINGS else ""
        raise ValueError(
            f"unsupported depth encoding {msg.encoding!r}{hint}; supported: {sorted(DEPTH_ENCODINGS)}"
        )
    kind, to_metres = DEPTH_ENCODINGS[msg.encoding]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    rows = _pixel_rows(msg, dtype.itemsize)
    raw = np.ascontiguousarray(rows).view(dtype).reshape(int(msg.height), int(msg.width))
    if kind == "u2":
        depth = (raw.astype(np.float64) * to_metres).astype(np.float32)
        depth[raw == 0] = np.nan
        return depth
    return raw.astype(np.float32)  # native byte order, fresh copy


def image_to_numpy(msg: Image) -> np.ndarray:
    """Any supported ``sensor_msgs/Image`` -> numpy.

    Returns:
        (H, W, 3) uint8 RGB for the colour encodings (:data:`COLOR_ENCODINGS`), (H, W) float32
        metres for the depth encodings (:data:`DEPTH_ENCODINGS`); see :func:`rgb_from_image_msg`
        and :func:`depth_from_image_msg`.

    Raises:
        ValueError: on an unknown encoding or malformed image.
    """
    if msg.encoding in COLOR_ENCODINGS:
        return rgb_from_image_msg(msg)
    if msg.encoding in DEPTH_ENCODINGS:
        return depth_from_image_msg(msg)
    raise ValueError(
        f"unsupported image encoding {msg.encoding!r}; supported: "
        f"{sorted(COLOR_ENCODINGS) + sorted(DEPTH_ENCODINGS)}"
    )


def numpy_to_image(
    array_: np.ndarray, encoding: str, stamp: Time | int | None = None, frame_id: str = ""
) -> Image:
    """numpy -> ``sensor_msgs/Image`` (unpadded rows, little-endian).

    Args:
        array_: (H, W, 3) uint8 RGB for ``"rgb8"``; (H, W) floating depth [m] for ``"32FC1"``
            (cast to float32).
        encoding: ``"rgb8"`` or ``"32FC1"``.
        stamp: header stamp (Time or int ns); None = zero.
        frame_id: header frame (the camera's optical frame).

    Raises:
        ValueError: on another encoding, a wrong shape/dtype, or a zero-size array.
    """
    arr = np.asarray(array_)
    if encoding == "rgb8":
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"rgb8 needs an (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
        data = np.ascontiguousarray(arr)
        bytes_per_pixel = 3
    elif encoding == "32FC1":
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"32FC1 needs an (H, W) floating array, got {arr.shape} {arr.dtype}")
        data = np.ascontiguousarray(arr, dtype="<f4")
        bytes_per_pixel = 4
    else:
        raise ValueError(f"numpy_to_image supports 'rgb8' and '32FC1', not {encoding!r}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot make an image of zero size {arr.shape}")
    msg = Image()
    msg.header = Header(stamp=_to_stamp(stamp), frame_id=frame_id)
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * bytes_per_pixel
    msg.data = data.tobytes()
    return msg


# ---------------------------------------------------------------------------------------------
# Camera info


def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """Intrinsic matrix of a ``sensor_msgs/CameraInfo`` (of the full-resolution, unbinned image).

    Returns:
        (3, 3) float64 ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` [pixels].

    Raises:
        ValueError: when an entry is not finite, fx or fy is not > 0 (an all-zero K means an
            uncalibrated camera), or the matrix is not upper triangular with ``K[2] = (0, 0, 1)``.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise ValueError(f"CameraInfo.k has non-finite entries: {K.tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(
            f"CameraInfo.k needs fx > 0 and fy > 0, got fx={K[0, 0]}, fy={K[1, 1]} "
            "(all zeros = uncalibrated camera)"
        )
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(f"CameraInfo.k is not a pinhole matrix [[fx,s,cx],[0,fy,cy],[0,0,1]]: {K.tolist()}")
    return K


def camera_info_from_K(
    K: np.ndarray, width: int, height: int, stamp: Time | int | None = None, frame_id: str = ""
) -> CameraInfo:
    """``sensor_msgs/CameraInfo`` of an undistorted (already rectified) monocular pinhole camera.

    ``k = K``, ``p = [K | 0]``, ``r = I``, ``distortion_model = "plumb_bob"`` with ``d = 0`` (5
    coefficients), no binning, an empty ROI (= full image). Inverse of :func:`camera_info_to_K`.

    Args:
        K: (3, 3) intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` [pixels].
        width, height: image size [pixels], > 0.
        stamp: header stamp (Time or int ns); None = zero.
        frame_id: header frame (the camera's optical frame).

    Raises:
        ValueError: on a K that :func:`camera_info_to_K` would reject, or a non-positive size.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be (3, 3), got {K.shape}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"camera size must be positive, got {width} x {height} (W x H)")
    P = np.zeros((3, 4), dtype=np.float64)
    P[:, :3] = K  # monocular, already rectified: P = [K | 0]
    msg = CameraInfo()
    msg.header = Header(stamp=_to_stamp(stamp), frame_id=frame_id)
    msg.height, msg.width = int(height), int(width)
    msg.distortion_model = "plumb_bob"
    msg.d = array.array("d", bytes(5 * 8))
    msg.k = K.reshape(9)
    msg.r = np.eye(3, dtype=np.float64).reshape(9)
    msg.p = P.reshape(12)
    camera_info_to_K(msg)  # the same checks a consumer applies
    return msg


def check_image_matches_info(image_msg: Image, info_msg: CameraInfo) -> None:
    """Check that an image has the size its ``CameraInfo`` was calibrated for.

    Binning and ROI are not supported: the image must be full resolution.

    Raises:
        ValueError: when ``(height, width)`` of the image and the camera info differ.
    """
    image_hw = (int(image_msg.height), int(image_msg.width))
    info_hw = (int(info_msg.height), int(info_msg.width))
    if image_hw != info_hw:
        raise ValueError(
            f"image {image_msg.header.frame_id!r} is {image_hw[0]} x {image_hw[1]} (H x W) but its "
            f"CameraInfo {info_msg.header.frame_id!r} is {info_hw[0]} x {info_hw[1]}"
        )


# ---------------------------------------------------------------------------------------------
# Transforms


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """``geometry_msgs/Transform`` -> homogeneous matrix (:func:`occ_audit_ros.geometry.pose_xyzw_to_matrix`).

    The quaternion is renormalised (float round-off in upstream TF math), but one whose norm is
    more than 1e-3 off 1 is rejected as garbage rather than silently "fixed".

    Returns:
        (4, 4) float64 ``T`` with ``p_parent = T @ p_child`` (TF convention: header.frame_id is
        the parent, child_frame_id the child).

    Raises:
        ValueError: on non-finite values or a quaternion with ``| |q| - 1 | > 1e-3``.
    """
    t, q = transform.translation, transform.rotation
    return pose_xyzw_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w), norm_tolerance=1e-3)


def matrix_to_transform(matrix: np.ndarray) -> Transform:
    """Homogeneous matrix -> ``geometry_msgs/Transform`` (inverse of :func:`transform_to_matrix`).

    Args:
        matrix: (4, 4) float rigid transform ``T_parent_child``, rotation orthonormal with det +1
            (within 1e-5), last row (0, 0, 0, 1).

    Returns:
        Transform with a unit quaternion, ``w >= 0`` (:func:`occ_audit_ros.geometry.matrix_to_pose_xyzw`).

    Raises:
        ValueError: on a wrong shape, non-finite values, a last row other than (0, 0, 0, 1) or a
            rotation block that is not a proper rotation.
    """
    (tx, ty, tz), (x, y, z, w) = matrix_to_pose_xyzw(matrix, rotation_tolerance=1e-5)
    return Transform(
        translation=Vector3(x=float(tx), y=float(ty), z=float(tz)),
        rotation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w)),
    )


def matrix_to_pose(matrix: np.ndarray) -> Pose:
    """Homogeneous matrix -> ``geometry_msgs/Pose`` (position = translation, orientation ``w >= 0``).

    Args:
        matrix: (4, 4) rigid transform ``T_frame_object`` (the object's pose in its frame).

    Raises:
        ValueError: as :func:`matrix_to_transform`.
    """
    (tx, ty, tz), (x, y, z, w) = matrix_to_pose_xyzw(matrix, rotation_tolerance=1e-5)
    return Pose(position=Point(x=float(tx), y=float(ty), z=float(tz)),
                orientation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w)))


def matrix_to_transform_stamped(
    matrix: np.ndarray, stamp: Time | int | None, parent_frame: str, child_frame: str
) -> TransformStamped:
    """``geometry_msgs/TransformStamped`` of ``T_parent_child`` (see :func:`matrix_to_transform`).

    Args:
        matrix: (4, 4) rigid transform mapping ``child_frame`` points into ``parent_frame``.
        stamp: header stamp (Time or int ns); None = zero.
        parent_frame: ``header.frame_id``.
        child_frame: ``child_frame_id``.

    Raises:
        ValueError: as :func:`matrix_to_transform`.
    """
    return TransformStamped(
        header=Header(stamp=_to_stamp(stamp), frame_id=parent_frame),
        child_frame_id=child_frame,
        transform=matrix_to_transform(matrix),
    )


# ---------------------------------------------------------------------------------------------
# SemanticVoxelGrid


def _check_voxel_arrays(
    indices: np.ndarray, label_ids: np.ndarray, scores: np.ndarray, num_voxels: int, num_labels: int
) -> None:
    """Raise ValueError unless the sparse voxel arrays are consistent with the grid and labels."""
    if not (indices.ndim == label_ids.ndim == scores.ndim == 1):
        raise ValueError("indices, label_ids and scores must be 1-D")
    if not (len(indices) == len(label_ids) == len(scores)):
        raise ValueError(
            f"indices ({len(indices)}), label_ids ({len(label_ids)}) and scores ({len(scores)}) "
            "must have the same length"
        )
    if len(indices) == 0:
        return
    if indices.min() < 0 or indices.max() >= num_voxels:
        raise ValueError(f"voxel indices must be in [0, {num_voxels}), got [{indices.min()}, {indices.max()}]")
    if np.any(np.diff(indices.astype(np.int64)) <= 0):
        raise ValueError("voxel indices must be unique and sorted ascending")
    if label_ids.min() < 0 or label_ids.max() >= num_labels:
        raise ValueError(f"label ids must be in [0, {num_labels}), got [{label_ids.min()}, {label_ids.max()}]")


def _field_array(values: Any, dtype: type) -> np.ndarray:
    """Fresh 1-D numpy copy of a message array field (array.array from rosidl: zero-parse copy)."""
    dtype = np.dtype(dtype)
    if isinstance(values, array.array) and values.itemsize == dtype.itemsize:
        return np.frombuffer(values, dtype=dtype).copy() if len(values) else np.zeros(0, dtype)
    return np.asarray(values, dtype=dtype).reshape(-1).copy()


def _default_grid_cls() -> type:
    # Generated from msg/SemanticVoxelGrid.msg at build time: import only when needed.
    from occ_audit_ros.msg import SemanticVoxelGrid

    return SemanticVoxelGrid


def _set_grid_geometry(msg: Any, spec: VoxelGridSpec) -> None:
    """``voxel_size``, ``origin`` (minimum corner) and ``dimensions`` of a grid message (SemanticVoxelGrid,
    HiddenObjectResult)."""
    msg.voxel_size = float(spec.voxel_size)
    msg.origin = Point(x=spec.lower[0], y=spec.lower[1], z=spec.lower[2])
    msg.dimensions = [int(d) for d in spec.dims]


def _random_weights_marker(header: Header, position: Point, height: float, marker_id: int = 0) -> Marker:
    """Red ``TEXT_VIEW_FACING`` warning (``ns = "warning"``) that the output comes from random weights."""
    m = Marker(header=header, ns="warning", id=marker_id, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    m.pose.position = position
    m.pose.orientation.w = 1.0
    m.scale.z = height
    m.color = ColorRGBA(r=1.0, g=0.0, b=0.0, a=1.0)
    m.text = RANDOM_WEIGHTS_BANNER
    return m


def semantic_voxels_to_msg(
    voxels: SemanticVoxels, msg_cls: type | None = None, stamp: Time | int | None = None
) -> Any:
    """:class:`SemanticVoxels` -> ``occ_audit_ros/SemanticVoxelGrid``.

    Args:
        voxels: the occupancy; its arrays are validated (see Raises).
        msg_cls: the generated message class; None imports ``occ_audit_ros.msg.SemanticVoxelGrid``.
        stamp: header stamp (Time or int ns); None = ``voxels.stamp_ns``.

    Returns:
        The message; ``header.frame_id = voxels.frame_id``, ``origin = spec.lower``.
        ``voxel_size`` travels as float32, see :func:`msg_to_semantic_voxels` for the way back.

    Raises:
        ValueError: when indices / label_ids / scores differ in length, an index is outside the
            grid or not strictly increasing, a label id is outside ``labels``, or the grid has
            more than 2**32 voxels / the vocabulary more than 65536 labels (message field types).
        ImportError: when ``msg_cls`` is None and the messages have not been generated.
    """
    cls = msg_cls if msg_cls is not None else _default_grid_cls()
    spec = voxels.spec
    indices = np.asarray(voxels.indices)
    label_ids = np.asarray(voxels.label_ids)
    scores = np.asarray(voxels.scores)
    _check_voxel_arrays(indices, label_ids, scores, spec.num_voxels, len(voxels.labels))
    if len(voxels.labels) > 65536:
        raise ValueError(f"{len(voxels.labels)} labels do not fit uint16 label ids")
    if spec.num_voxels > 2**32:
        raise ValueError(f"grid of {spec.num_voxels} voxels does not fit uint32 flat indices")
    msg = cls()
    msg.header = Header(stamp=_to_stamp(stamp, voxels.stamp_ns), frame_id=voxels.frame_id)
    _set_grid_geometry(msg, spec)
    msg.labels = [str(label) for label in voxels.labels]
    # array.array from bytes: rosidl accepts it as is, without per-element Python conversion.
    msg.indices = array.array("I", indices.astype(np.uint32).tobytes())
    msg.label_ids = array.array("H", label_ids.astype(np.uint16).tobytes())
    msg.scores = array.array("f", scores.astype(np.float32).tobytes())
    msg.model = str(voxels.model)
    msg.random_weights = bool(voxels.random_weights)
    return msg


def msg_to_semantic_voxels(msg: Any) -> SemanticVoxels:
    """``occ_audit_ros/SemanticVoxelGrid`` -> :class:`SemanticVoxels`.

    ``voxel_size`` is float32 on the wire; it is read back as the shortest decimal that rounds to
    that float32 (0.4f -> 0.4, not 0.4000000059604645), and ``upper = origin + dims * voxel_size``
    is rounded to 1 nm, so a grid defined with decimal numbers round-trips exactly.

    Returns:
        SemanticVoxels with uint32 indices, uint16 label_ids, float32 scores (fresh arrays),
        ``frame_id = header.frame_id`` and ``stamp_ns`` from ``header.stamp``.

    Raises:
        ValueError: on a voxel size that is not finite and > 0, a zero dimension, arrays of
            different lengths, indices outside the grid or not strictly increasing, or label ids
            outside ``labels``.
    """
    voxel_size = float(str(np.float32(msg.voxel_size)))
    if not (math.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size must be finite and > 0 m, got {msg.voxel_size}")
    dims = [int(d) for d in msg.dimensions]
    if len(dims) != 3 or min(dims) <= 0:
        raise ValueError(f"dimensions must be 3 positive voxel counts, got {dims}")
    lower = (float(msg.origin.x), float(msg.origin.y), float(msg.origin.z))
    if not all(math.isfinite(v) for v in lower):
        raise ValueError(f"origin must be finite, got {lower}")
    upper = tuple(round(lo + n * voxel_size, 9) for lo, n in zip(lower, dims))
    spec = VoxelGridSpec(lower=lower, upper=upper, voxel_size=voxel_size)
    if spec.dims != tuple(dims):  # guards against float trouble on huge grids
        raise ValueError(f"cannot represent dimensions {dims} with voxel size {voxel_size} m")
    indices = _field_array(msg.indices, np.uint32)
    label_ids = _field_array(msg.label_ids, np.uint16)
    scores = _field_array(msg.scores, np.float32)
    labels = [str(label) for label in msg.labels]
    _check_voxel_arrays(indices, label_ids, scores, spec.num_voxels, len(labels))
    return SemanticVoxels(
        spec=spec,
        frame_id=str(msg.header.frame_id),
        labels=labels,
        indices=indices,
        label_ids=label_ids,
        scores=scores,
        random_weights=bool(msg.random_weights),
        model=str(msg.model),
        stamp_ns=stamp_to_ns(msg.header.stamp),
    )


# ---------------------------------------------------------------------------------------------
# PointCloud2

#: Layout of :func:`semantic_voxels_to_pointcloud2` points: 20 B, naturally aligned, no padding.
#: ``label`` is UINT32 (not UINT16) so every field is 4-byte aligned; RViz2's "Intensity" colour
#: transformer and Foxglove's "colour by field" accept any numeric PointField type.
POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "label", "score"],
        "formats": ["<f4", "<f4", "<f4", "<u4", "<f4"],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": 20,
    }
)

_POINTFIELD_TO_NUMPY = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}
_NUMPY_TO_POINTFIELD = {kind: datatype for datatype, kind in _POINTFIELD_TO_NUMPY.items()}


def numpy_to_pointcloud2(
    points: np.ndarray, stamp: Time | int | None = None, frame_id: str = "", is_dense: bool | None = None
) -> PointCloud2:
    """Structured numpy array -> unorganised ``sensor_msgs/PointCloud2`` (inverse of :func:`pointcloud2_to_numpy`).

    One PointField per dtype field, with the dtype's names, offsets and ``point_step = itemsize``
    (padding bytes between fields are kept as they are in ``points``); ``height = 1``,
    ``width = N``, ``row_step = point_step * N``, little-endian.

    Args:
        points: (N,) structured array whose fields are little-endian (or native on a
            little-endian host) int8/16/32, uint8/16/32, float32 or float64 scalars.
        stamp: header stamp (Time or int ns); None = zero.
        frame_id: header frame of the points.
        is_dense: the message's ``is_dense``; None = every floating field of every point is finite.

    Raises:
        ValueError: when ``points`` is not a 1-D structured array, or a field is big-endian, a
            sub-array or of a type PointField cannot express.
    """
    points = np.asarray(points)
    if points.ndim != 1 or points.dtype.names is None:
        raise ValueError(f"points must be a 1-D structured array, got shape {points.shape} dtype {points.dtype}")
    fields, floating = [], []
    for name in points.dtype.names:
        field_dtype, offset = points.dtype.fields[name][:2]
        if field_dtype.subdtype is not None or field_dtype != field_dtype.newbyteorder("<"):
            raise ValueError(f"field {name!r} ({field_dtype}) must be a little-endian scalar")
        datatype = _NUMPY_TO_POINTFIELD.get(field_dtype.newbyteorder("<").str[1:])
        if datatype is None:
            raise ValueError(f"field {name!r} has dtype {field_dtype}, which PointField cannot express")
        fields.append(PointField(name=name, offset=int(offset), datatype=datatype, count=1))
        if field_dtype.kind == "f":
            floating.append(name)
    if is_dense is None:
        is_dense = all(bool(np.all(np.isfinite(points[name]))) for name in floating)
    msg = PointCloud2()
    msg.header = Header(stamp=_to_stamp(stamp), frame_id=frame_id)
    msg.height, msg.width = 1, len(points)
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = points.dtype.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.data = np.ascontiguousarray(points).tobytes()
    msg.is_dense = bool(is_dense)
    return msg


def semantic_voxels_to_pointcloud2(voxels: SemanticVoxels, stamp: Time | int | None = None) -> PointCloud2:
    """Occupied voxel centres as an unorganised ``sensor_msgs/PointCloud2``.

    Fields (little-endian, ``point_step = 20``, :data:`POINT_DTYPE`): ``x, y, z`` FLOAT32 voxel
    centre in ``voxels.frame_id`` [m] at offsets 0/4/8; ``label`` UINT32 label id (index into
    ``voxels.labels``) at 12; ``score`` FLOAT32 at 16. ``height = 1``, ``width = M``,
    ``row_step = 20 * M``; ``is_dense`` is True unless a score is NaN / inf.

    Args:
        voxels: the occupancy.
        stamp: header stamp (Time or int ns); None = ``voxels.stamp_ns``.
    """
    points = np.empty(len(voxels.indices), dtype=POINT_DTYPE)
    centers = voxels.centers()
    points["x"], points["y"], points["z"] = centers[:, 0], centers[:, 1], centers[:, 2]
    points["label"] = np.asarray(voxels.label_ids, dtype=np.uint32)
    points["score"] = np.asarray(voxels.scores, dtype=np.float32)
    return numpy_to_pointcloud2(points, _to_stamp(stamp, voxels.stamp_ns), voxels.frame_id,
                                is_dense=bool(np.all(np.isfinite(points["score"]))))


def pointcloud2_to_numpy(msg: PointCloud2) -> np.ndarray:
    """Any ``sensor_msgs/PointCloud2`` -> structured numpy array.

    Returns:
        (height * width,) structured array (row-major for organised clouds) with one field per
        PointField (a ``(count,)`` sub-array when ``count > 1``), in the message's byte order and
        with its offsets / ``itemsize = point_step``; a fresh copy.

    Raises:
        ValueError: on an unknown datatype, a field reaching past ``point_step``,
            ``row_step < width * point_step`` or ``len(data) != height * row_step``.
    """
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _POINTFIELD_TO_NUMPY:
            raise ValueError(f"PointField {field.name!r} has unknown datatype {field.datatype}")
        base = np.dtype(order + _POINTFIELD_TO_NUMPY[field.datatype])
        count = max(int(field.count), 1)
        if field.offset + base.itemsize * count > msg.point_step:
            raise ValueError(f"PointField {field.name!r} reaches past point_step {msg.point_step}")
        names.append(field.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(field.offset))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    height, width = int(msg.height), int(msg.width)
    row_bytes = width * int(msg.point_step)
    if msg.row_step < row_bytes:
        raise ValueError(f"row_step {msg.row_step} < width {width} x point_step {msg.point_step}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != height * msg.row_step:
        raise ValueError(f"PointCloud2 data has {data.size} B, expected height x row_step = {height * msg.row_step}")
    if height * width == 0:
        return np.zeros(0, dtype=dtype)
    rows = np.ascontiguousarray(data.reshape(height, msg.row_step)[:, :row_bytes])
    return rows.view(dtype).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Markers


def _color(rgb: np.ndarray, alpha: float) -> ColorRGBA:
    return ColorRGBA(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(alpha))


def semantic_voxels_to_markers(
    voxels: SemanticVoxels,
    stamp: Time | int | None = None,
    colors: np.ndarray | None = None,
    legend: bool = True,
    alpha: float = 0.8,
) -> MarkerArray:
    """RViz markers of the occupancy: one cube list per label, a legend and a warning.

    Markers, all in ``voxels.frame_id`` with the given stamp, in this order:

    1. ``DELETEALL`` (empty ns: clears every marker of the display), so labels that were present
       in the previous message and are absent now disappear;
    2. per label with at least one voxel: ``CUBE_LIST``, ``ns = label``, ``id = label index``,
       ``scale = voxel_size`` on every axis, points = voxel centres [m], single marker colour =
       the label's colour with ``alpha``;
    3. if ``legend``: per label (also the empty ones), a ``TEXT_VIEW_FACING`` marker,
       ``ns = "legend"``, ``id = label index``, text ``"<label>: <count>"`` in the label's colour,
       stacked top to bottom on the right side of the grid (towards -y) at its top height;
    4. if ``voxels.random_weights``: ``TEXT_VIEW_FACING``, ``ns = "warning"``, red, large, above
       the grid centre: "RANDOM WEIGHTS — not a real perception output".

    Args:
        voxels: the occupancy.
        stamp: header stamp (Time or int ns); None = ``voxels.stamp_ns``.
        colors: (L, 3) or (L, 4) float RGB(A) in [0, 1] per label (alpha column ignored);
            None = :func:`label_palette`.
        legend: add the legend markers.
        alpha: opacity of the cubes.

    Raises:
        ValueError: when ``colors`` does not have one row per label.
    """
    num_labels = len(voxels.labels)
    palette = label_palette(num_labels) if colors is None else np.asarray(colors, dtype=np.float64)
    if palette.ndim != 2 or palette.shape[0] != num_labels or palette.shape[1] not in (3, 4):
        raise ValueError(f"colors must be ({num_labels}, 3|4), got {palette.shape}")
    header = Header(stamp=_to_stamp(stamp, voxels.stamp_ns), frame_id=voxels.frame_id)
    spec = voxels.spec
    lower, upper = np.asarray(spec.lower), np.asarray(spec.upper)
    markers = [Marker(header=header, action=Marker.DELETEALL)]

    centers = voxels.centers().astype(np.float64)
    label_ids = np.asarray(voxels.label_ids, dtype=np.int64)
    for i, label in enumerate(voxels.labels):
        sel = centers[label_ids == i]
        if len(sel) == 0:
            continue
        m = Marker(header=header, ns=str(label), id=i, type=Marker.CUBE_LIST, action=Marker.ADD)
        m.pose.orientation.w = 1.0
        m.scale = Vector3(x=spec.voxel_size, y=spec.voxel_size, z=spec.voxel_size)
        m.color = _color(palette[i], alpha)
        m.points = [Point(x=x, y=y, z=z) for x, y, z in sel.tolist()]
        markers.append(m)

    # Text height scaled to the grid so the legend is readable when the whole grid is in view.
    text_h = max(0.5, 0.025 * float(np.max(upper[:2] - lower[:2])))
    if legend:
        counts = np.bincount(label_ids, minlength=num_labels)
        for i, label in enumerate(voxels.labels):
            m = Marker(header=header, ns="legend", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
            # Text is centred on its position: keep a margin of ~6 text heights from the grid edge.
            m.pose.position = Point(x=float(upper[0] - (i + 0.5) * 1.5 * text_h),
                                    y=float(lower[1] - 6.0 * text_h), z=float(upper[2]))
            m.pose.orientation.w = 1.0
            m.scale.z = text_h
            m.color = _color(palette[i], 1.0)
            m.text = f"{label}: {int(counts[i])}"
            markers.append(m)
    if voxels.random_weights:
        centre = (lower + upper) / 2
        markers.append(_random_weights_marker(
            header, Point(x=float(centre[0]), y=float(centre[1]), z=float(upper[2] + 2.0 * text_h)), 2.0 * text_h))
    return MarkerArray(markers=markers)


def boxes_to_markers(
    boxes: Iterable[Any],
    stamp: Time | int | None,
    frame_id: str,
    category_colors: Mapping[str, tuple[float, float, float]] | None = None,
    default_color: tuple[float, float, float] = (0.6, 0.6, 0.6),
    alpha: float = 0.5,
) -> MarkerArray:
    """One RViz ``CUBE`` marker per oriented 3D box (no DELETEALL: the boxes of a bag's keyframe).

    Box interface (duck-typed, e.g. :class:`occ_audit_ros.nuscenes_io.GTBox`): ``center`` (3,)
    geometric centre in ``frame_id`` [m]; ``size`` (3,) length, width, height [m] along the box's
    local x, y, z; ``rotation`` (3, 3) box orientation in ``frame_id``; ``category`` (str, the
    marker ``ns``); ``index`` (int, the marker ``id``).

    Markers have ``action = ADD``, zero lifetime (shown until replaced), ``scale = size`` and
    colour ``category_colors[category]`` (else ``default_color``) with ``alpha``.

    Raises:
        ValueError: when a box rotation is not a proper rotation matrix.
    """
    colors = category_colors or {}
    header = Header(stamp=_to_stamp(stamp), frame_id=frame_id)
    markers = []
    for box in boxes:
        T = np.eye(4, dtype=np.float64)
        T[:3, :3] = np.asarray(box.rotation, dtype=np.float64)
        T[:3, 3] = np.asarray(box.center, dtype=np.float64).reshape(3)
        size = np.asarray(box.size, dtype=np.float64).reshape(3)
        m = Marker(header=header, ns=str(box.category), id=int(box.index), type=Marker.CUBE, action=Marker.ADD)
        m.pose = matrix_to_pose(T)
        m.scale = Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2]))
        m.color = _color(np.asarray(colors.get(box.category, default_color), dtype=np.float64), alpha)
        markers.append(m)
    return MarkerArray(markers=markers)


# ---------------------------------------------------------------------------------------------
# Hidden-object (VOOL) answers

HIDDEN_POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "probability"], "formats": ["<f4", "<f4", "<f4", "<f4"],
                               "offsets": [0, 4, 8, 12], "itemsize": 16})


def hidden_object_to_msg(answer: Any, query: Any = None, msg_cls: type | None = None) -> Any:
    """:class:`occ_audit_ros.backends.HiddenObjectAnswer` -> ``occ_audit_ros/HiddenObjectResult``.

    Args:
        answer: the answer (grid, voxel indices, probabilities in ``answer.frame_id``).
        query: the ``HiddenObjectQuery`` being answered (copied into ``query``); None = built from the answer.
        msg_cls: the generated message class; None imports ``occ_audit_ros.msg.HiddenObjectResult``.

    Raises:
        ValueError: when indices and probabilities differ in length or an index is outside the grid.
    """
    if msg_cls is None:
        from occ_audit_ros.msg import HiddenObjectResult

        msg_cls = HiddenObjectResult
    indices = np.asarray(answer.indices, dtype=np.int64)
    probs = np.asarray(answer.probabilities, dtype=np.float32)
    if indices.shape != probs.shape or indices.ndim != 1:
        raise ValueError(f"indices {indices.shape} and probabilities {probs.shape} must be equal-length vectors")
    if len(indices) and (indices.min() < 0 or indices.max() >= answer.spec.num_voxels):
        raise ValueError("a voxel index lies outside the grid")
    msg = msg_cls()
    msg.header = Header(stamp=ns_to_stamp(answer.stamp_ns), frame_id=answer.frame_id)
    if query is None:
        from occ_audit_ros.msg import HiddenObjectQuery

        query = HiddenObjectQuery(target=answer.target, relation=answer.relation, reference=answer.reference)
    msg.query = query
    _set_grid_geometry(msg, answer.spec)
    msg.indices = array.array("I", indices.astype(np.uint32).tobytes())
    msg.probabilities = array.array("f", probs.tobytes())
    msg.model = str(answer.model)
    msg.random_weights = bool(answer.random_weights)
    if hasattr(msg, "error"):  # the refusal reason (HiddenObjectResult.error); empty when answered
        msg.error = str(answer.error or "")
    return msg


def hidden_object_to_pointcloud2(answer: Any) -> PointCloud2:
    """Answer voxels as ``sensor_msgs/PointCloud2``: ``x, y, z`` FLOAT32 voxel centre [m] in
    ``answer.frame_id``, ``probability`` FLOAT32 in [0, 1]; ``point_step = 16``, ``height = 1``."""
    points = np.empty(len(answer.indices), dtype=HIDDEN_POINT_DTYPE)
    centers = answer.centers()
    points["x"], points["y"], points["z"] = centers[:, 0], centers[:, 1], centers[:, 2]
    points["probability"] = np.asarray(answer.probabilities, dtype=np.float32)
    return numpy_to_pointcloud2(points, ns_to_stamp(answer.stamp_ns), answer.frame_id, is_dense=True)


def hidden_object_to_markers(answer: Any, color=(1.0, 0.1, 0.9)) -> MarkerArray:
    """RViz markers of an answer: ``DELETEALL``; one ``CUBE_LIST`` (``ns = "hidden_object"``, id 0)
    with one cube per listed voxel coloured ``color`` with alpha = its probability; a
    ``TEXT_VIEW_FACING`` caption "<target> <relation> <reference>" above the most probable voxel
    (``ns = "hidden_object_text"``), and the random-weights warning when it applies. Frame
    ``answer.frame_id``; an answer with no voxels gives only the DELETEALL (clears the last answer)."""
    header = Header(stamp=ns_to_stamp(answer.stamp_ns), frame_id=answer.frame_id)
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    if len(answer.indices) == 0:
        return MarkerArray(markers=markers)
    s = answer.spec.voxel_size
    centers = answer.centers().astype(np.float64)
    probs = np.asarray(answer.probabilities, dtype=np.float64)
    cubes = Marker(header=header, ns="hidden_object", id=0, type=Marker.CUBE_LIST, action=Marker.ADD)
    cubes.pose.orientation.w = 1.0
    cubes.scale = Vector3(x=s, y=s, z=s)
    cubes.color = _color(np.asarray(color), 1.0)
    cubes.points = [Point(x=x, y=y, z=z) for x, y, z in centers.tolist()]
    cubes.colors = [_color(np.asarray(color), p) for p in probs.tolist()]
    markers.append(cubes)
    best = centers[int(np.argmax(probs))]
    text = Marker(header=header, ns="hidden_object_text", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    text.pose.position = Point(x=float(best[0]), y=float(best[1]), z=float(best[2] + 3 * s))
    text.pose.orientation.w = 1.0
    text.scale.z = max(0.1, 2 * s)
    text.color = _color(np.asarray(color), 1.0)
    text.text = f"{answer.target} {answer.relation} {answer.reference}: max p = {probs.max():.2f}"
    markers.append(text)
    if answer.random_weights:
        markers.append(_random_weights_marker(
            header, Point(x=float(best[0]), y=float(best[1]), z=float(best[2] + 6 * s)), max(0.1, 2 * s), 1))
    return MarkerArray(markers=markers)
