"""Load a nuScenes keyframe (cameras, LIDAR_TOP, poses, GT boxes) into plain numpy dataclasses.

ROS-free. Tables are read with the official ``nuscenes-devkit``; the ground-truth boxes come from an
MMDetection3D "info v1.1" pickle because the embedded table set has no ``sample_annotation`` rows.

Frames (see :mod:`occ_audit_ros.conventions`): ``map`` = nuScenes global, ``base_link`` = nuScenes
ego frame, camera frames = nuScenes camera sensor frames = optical frames, ``lidar_top`` = the
LIDAR_TOP sensor frame. Each sensor has its own ``T_map_base`` (the ``ego_pose`` at its own
timestamp): the six cameras and the LiDAR fire up to ~45 ms apart while the car moves, so always go
through ``map`` when moving data between sensors (as the devkit does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import (
    box_corners,
    invert_transform,
    make_transform,
    points_to_depth_image,
    transform_points,
    yaw_to_matrix,
)
from occ_audit_ros.safe_pickle import load_numpy_pickle

__all__ = [
    "NUSCENES_VERSION",
    "CameraFrame",
    "LidarSweep",
    "GTBox",
    "GTBox2D",
    "Keyframe",
    "load_keyframe",
    "lidar_points_in_camera",
    "lidar_depth_for_camera",
    "NUSCENES_VERSIONS",
    "AnnotationBox",
    "SceneRecords",
    "SensorRecord",
    "available_versions",
    "decode_image",
    "lidar_depth_for_record",
    "load_scene",
    "nearest_lidar",
    "open_tables",
    "pickle_boxes_for_scene",
    "read_image_file",
    "read_lidar_points",
    "resolve_version",
    "scene_names",
]

#: Table version directory of the embedded keyframe.
NUSCENES_VERSION = "v1.0-test"
#: Category name used for boxes whose MMDetection3D label is -1 (annotated in nuScenes but outside
#: the 10 detection classes, e.g. animals or debris).
UNKNOWN_CATEGORY = "other"
#: Maximum distance (m) between a cam_instances 3D centre and a projected 3D box centre for them to
#: be the same object. Real matches agree to ~1e-6 m; distinct objects are >= 0.3 m apart.
_MATCH_TOLERANCE_M = 0.05


@dataclass
class CameraFrame:
    """One camera image of a keyframe with its calibration and pose.

    Attributes:
        channel: nuScenes channel, e.g. ``"CAM_FRONT"``.
        sample_data_token: nuScenes ``sample_data`` token of the image.
        timestamp_us: capture time, microseconds since the Unix epoch.
        image: (H, W, 3) uint8 RGB.
        K: (3, 3) float64 intrinsics (no distortion: nuScenes images are rectified).
        T_base_cam: (4, 4) float64, camera optical frame -> ``base_link`` (``calibrated_sensor``).
        T_map_base: (4, 4) float64, ``base_link`` -> ``map`` at ``timestamp_us`` (``ego_pose``).
    """

    channel: str
    sample_data_token: str
    timestamp_us: int
    image: np.ndarray
    K: np.ndarray
    T_base_cam: np.ndarray
    T_map_base: np.ndarray

    @property
    def frame_id(self) -> str:
        """TF frame of the camera, e.g. ``"cam_front_optical"``."""
        return conventions.sensor_frame(self.channel)

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def T_map_cam(self) -> np.ndarray:
        """(4, 4) float64, camera optical frame -> ``map`` at the camera's timestamp."""
        return self.T_map_base @ self.T_base_cam


@dataclass
class LidarSweep:
    """The LIDAR_TOP sweep of a keyframe.

    Attributes:
        points: (N, 5) float32 ``x, y, z`` (m, ``lidar_top`` frame), ``intensity`` (0-255) and
            ``ring`` (laser index 0-31, stored as float as in the ``.pcd.bin`` file).
        T_base_lidar: (4, 4) float64, ``lidar_top`` -> ``base_link``.
        T_map_base: (4, 4) float64, ``base_link`` -> ``map`` at ``timestamp_us``.
        timestamp_us: sweep time (end of the rotation, as nuScenes stamps it), microseconds.
        token: ``sample_data`` token.
    """

    points: np.ndarray
    T_base_lidar: np.ndarray
    T_map_base: np.ndarray
    timestamp_us: int
    token: str

    @property
    def frame_id(self) -> str:
        """TF frame of the LiDAR, ``"lidar_top"``."""
        return conventions.sensor_frame(conventions.LIDAR_CHANNEL)


@dataclass
class GTBox:
    """A ground-truth 3D box at the LiDAR timestamp.

    The annotation is an upright box in ``map`` (nuScenes boxes only have a yaw in the global
    frame). In ``base_link`` it is tilted by the car's pitch/roll (~1.4 deg here), so besides the
    convenient ``center``/``yaw`` pair the exact orientation is kept in ``rotation``; use
    :meth:`corners_base` / :meth:`corners_map`, not ``box_corners(center, size, yaw)``, when pixels
    matter (the yaw-only box in ``base_link`` is off by up to 10 px for the truck 15 m ahead).

    Attributes:
        index: position in the pickle's ``instances`` list (= nuScenes annotation order); also the
            marker id in the bag's ``/gt/boxes``.
        center: (3,) float64 geometric centre in ``base_link`` at the LiDAR timestamp, metres.
        size: (3,) float64 ``(length, width, height)`` in metres; length is along the heading.
        yaw: heading about ``base_link`` +z, radians (atan2 of the heading's x, y components).
        rotation: (3, 3) float64 exact box orientation in ``base_link`` (columns: heading, left,
            up).
        center_map: (3,) float64 centre in ``map``.
        yaw_map: heading about ``map`` +z, radians (the box is upright in ``map``).
        category: detection class name (``metainfo["categories"]``), ``"other"`` for label -1.
        label: class id in ``metainfo["categories"]``, -1 for objects outside the 10 classes.
        num_lidar_pts: LiDAR returns inside the box (0 for a few occluded boxes).
        valid: MMDetection3D's ``bbox_3d_isvalid`` (False when the box has no LiDAR/radar return).
    """

    index: int
    center: np.ndarray
    size: np.ndarray
    yaw: float
    rotation: np.ndarray
    center_map: np.ndarray
    yaw_map: float
    category: str
    label: int
    num_lidar_pts: int
    valid: bool = True

    def corners_base(self) -> np.ndarray:
        """(8, 3) float64 corners in ``base_link`` at the LiDAR timestamp (exact orientation)."""
        return box_corners(self.center, self.size, rotation=self.rotation)

    def corners_map(self) -> np.ndarray:
        """(8, 3) float64 corners in ``map`` (upright box)."""
        return box_corners(self.center_map, self.size, self.yaw_map)


@dataclass
class GTBox2D:
    """A per-camera 2D ground-truth box (MMDetection3D ``cam_instances``).

    Attributes:
        bbox: (4,) float64 ``(x1, y1, x2, y2)`` pixels: the projected 3D box's convex hull clipped
            to the image (corners behind the camera were dropped before projecting).
        label: class id, as :attr:`GTBox.label`.
        category: class name.
        center_2d: (2,) float64 projected 3D centre, pixels (may lie outside the image).
        depth: depth of the 3D centre in the camera frame, metres.
        box_index: index into :attr:`Keyframe.boxes` of the 3D box it was projected from, -1 when
            no 3D box matches (does not happen on the embedded keyframe).
    """

    bbox: np.ndarray
    label: int
    category: str
    center_2d: np.ndarray
    depth: float
    box_index: int = -1


@dataclass
class Keyframe:
    """All sensor data of one nuScenes sample.

    Attributes:
        sample_token: nuScenes ``sample`` token.
        timestamp_us: sample time (= the LIDAR_TOP timestamp), microseconds.
        cameras: channel -> :class:`CameraFrame`, in ``conventions.CAMERA_CHANNELS`` order.
        lidar: the LIDAR_TOP sweep.
        boxes: 3D GT boxes (empty when no annotation pickle was given).
        boxes_2d: channel -> 2D GT boxes of that camera (empty lists without annotations).
    """

    sample_token: str
    timestamp_us: int
    cameras: dict[str, CameraFrame]
    lidar: LidarSweep
    boxes: list[GTBox] = field(default_factory=list)
    boxes_2d: dict[str, list[GTBox2D]] = field(default_factory=dict)


def _record_transform(record: dict) -> np.ndarray:
    """(4, 4) transform of a ``calibrated_sensor`` or ``ego_pose`` record."""
    return make_transform(record["translation"], record["rotation"])


#: Table folders of the nuScenes releases the devkit reads (``NuScenes(version=...)``).
NUSCENES_VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")
#: Tables the devkit loads; each must exist as ``<dataroot>/<version>/<table>.json``.
NUSCENES_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                   "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")


def available_versions(dataroot) -> list[str]:
    """Table folders under ``dataroot`` that hold a ``sample.json`` (e.g. ``["v1.0-mini"]``), sorted."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        return []
    return sorted(p.name for p in dataroot.iterdir() if p.is_dir() and (p / "sample.json").is_file())


def resolve_version(dataroot, version: str | None = None) -> str:
    """The table version to read under ``dataroot``.

    Args:
        dataroot: nuScenes root folder.
        version: requested version folder name; None picks the only one present.

    Returns:
        The version folder name.

    Raises:
        FileNotFoundError: ``dataroot`` is missing, the requested folder is missing (the message
            lists the folders that exist), or ``version`` is None and there is not exactly one.
    """
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise FileNotFoundError(f"nuScenes dataroot {dataroot} does not exist or is not a folder")
    found = available_versions(dataroot)
    if version is None:
        if len(found) != 1:
            raise FileNotFoundError(
                f"nuScenes dataroot {dataroot} holds table folders {found or 'none'}; pass --version "
                f"(one of {', '.join(NUSCENES_VERSIONS)})")
        return found[0]
    if not (dataroot / version).is_dir():
        raise FileNotFoundError(
            f"nuScenes table directory {dataroot / version} not found (expected version {version}; "
            f"{dataroot} holds {found or 'no table folders'})")
    return version


def _open_nuscenes(dataroot: Path, version: str = NUSCENES_VERSION, tables=("sample", "sample_data",
                   "calibrated_sensor", "ego_pose", "sensor")):
    """NuScenes devkit handle, with file checks that name the missing path."""
    version = resolve_version(dataroot, version)
    table_dir = dataroot / version
    # The devkit asserts on missing tables; check them here so the error names the file.
    for table in tables:
        if not (table_dir / f"{table}.json").is_file():
            raise FileNotFoundError(f"nuScenes table {table_dir / (table + '.json')} not found")
    from nuscenes.nuscenes import NuScenes  # heavy import (matplotlib); only when loading

    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (FileNotFoundError, AssertionError, KeyError, ValueError) as exc:
        raise ValueError(f"nuscenes-devkit cannot read the tables in {table_dir}: {exc!r}") from exc


def _load_info_pickle(pkl_path: Path):
    """Read an MMDetection3D info pickle with the restricted unpickler (no code runs from the file).

    Raises:
        ValueError: not a readable pickle, or one naming a global outside numpy and plain containers.
    """
    return load_numpy_pickle(pkl_path, "MMDetection3D info pickle")


def _read_annotations(pkl_path: Path, sample_token: str) -> tuple[dict, dict]:
    """The pickle's ``data_list`` entry for ``sample_token`` and its ``metainfo``."""
    if not pkl_path.is_file():
        raise FileNotFoundError(f"annotation pickle {pkl_path} not found")
    info = _load_info_pickle(pkl_path)
    if not isinstance(info, dict) or "data_list" not in info or "metainfo" not in info:
        raise ValueError(
            f"{pkl_path} is not an MMDetection3D info v1.1 pickle (no data_list / metainfo)"
        )
    for entry in info["data_list"]:
        if entry.get("token") == sample_token:
            return entry, info["metainfo"]
    tokens = [e.get("token") for e in info["data_list"]]
    raise ValueError(f"sample {sample_token} not in {pkl_path} (it holds {tokens})")


def _yaw_in_map(yaw_lidar: float, R_map_lidar: np.ndarray) -> float:
    """Heading in ``map`` of an upright (map-frame) box whose heading has angle ``yaw_lidar`` in the
    LiDAR frame's xy plane.

    The pickle keeps only the yaw of the box in the tilted LiDAR frame (``yaw_pitch_roll[0]`` of
    its orientation = angle of the heading's xy components). nuScenes annotations are upright in
    ``map``, so the heading is the horizontal map vector orthogonal to the LiDAR-frame normal
    ``(-sin yaw, cos yaw, 0)``: an exact inversion, where treating the box as yaw-only in the
    LiDAR frame tilts it by ~1.4 deg (25 px on the truck 15 m ahead).
    """
    c, s = np.cos(yaw_lidar), np.sin(yaw_lidar)
    normal = R_map_lidar @ np.array([-s, c, 0.0])
    heading = np.array([-normal[1], normal[0], 0.0])  # horizontal and orthogonal to the normal
    if heading @ (R_map_lidar @ np.array([c, s, 0.0])) < 0:
        heading = -heading
    return float(np.arctan2(heading[1], heading[0]))


def _boxes_from_entry(
    entry: dict, metainfo: dict, lidar: LidarSweep
) -> list[GTBox]:
    """3D boxes of a pickle entry, moved from ``lidar_top`` to ``base_link`` and ``map``."""
    names = {int(v): k for k, v in metainfo["categories"].items()}
    T_map_lidar = lidar.T_map_base @ lidar.T_base_lidar
    T_base_map = invert_transform(lidar.T_map_base)
    boxes = []
    for i, inst in enumerate(entry.get("instances", [])):
        x, y, z, l, w, h, yaw_lidar = (float(v) for v in inst["bbox_3d"])
        label = int(inst["bbox_label_3d"])
        center_map = transform_points(T_map_lidar, [[x, y, z]])[0]
        yaw_map = _yaw_in_map(yaw_lidar, T_map_lidar[:3, :3])
        rotation = T_base_map[:3, :3] @ yaw_to_matrix(yaw_map)
        boxes.append(
            GTBox(
                index=i,
                center=transform_points(T_base_map, center_map[None])[0],
                size=np.array([l, w, h], dtype=np.float64),
                yaw=float(np.arctan2(rotation[1, 0], rotation[0, 0])),
                rotation=rotation,
                center_map=center_map,
                yaw_map=yaw_map,
                category=names.get(label, UNKNOWN_CATEGORY),
                label=label,
                num_lidar_pts=int(inst.get("num_lidar_pts", -1)),
                valid=bool(inst.get("bbox_3d_isvalid", True)),
            )
        )
    return boxes


def _boxes_2d_from_entry(
    entry: dict, metainfo: dict, cameras: dict[str, CameraFrame], boxes: list[GTBox]
) -> dict[str, list[GTBox2D]]:
    """2D boxes per camera, each matched to the 3D box whose centre is at its camera-frame centre.

    The cam_instances' 3D centres are the annotation centres in the camera frame at the camera
    timestamp, so the 3D centres are moved map -> base_link@t_cam -> camera before comparing.
    """
    names = {int(v): k for k, v in metainfo["categories"].items()}
    centers_map = np.array([b.center_map for b in boxes]).reshape(-1, 3)
    labels = np.array([b.label for b in boxes], dtype=np.int64)
    out: dict[str, list[GTBox2D]] = {}
    for channel, cam in cameras.items():
        T_cam_map = invert_transform(cam.T_map_cam)
        centers_cam = transform_points(T_cam_map, centers_map)
        result = []
        for inst in entry.get("cam_instances", {}).get(channel, []):
            label = int(inst["bbox_label_3d"] if "bbox_label_3d" in inst else inst["bbox_label"])
            box_index = -1
            if len(boxes):
                dist = np.linalg.norm(centers_cam - np.asarray(inst["bbox_3d"][:3]), axis=1)
                dist[labels != label] = np.inf
                j = int(np.argmin(dist))
                if dist[j] < _MATCH_TOLERANCE_M:
                    box_index = j
            result.append(
                GTBox2D(
                    bbox=np.asarray(inst["bbox"], dtype=np.float64),
                    label=label,
                    category=names.get(label, UNKNOWN_CATEGORY),
                    center_2d=np.asarray(inst.get("center_2d", (np.nan, np.nan)), dtype=np.float64),
                    depth=float(inst.get("depth", np.nan)),
                    box_index=box_index,
                )
            )
        out[channel] = result
    return out


def _load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a JPEG."""
    if not path.is_file():
        raise FileNotFoundError(f"camera image {path} not found")
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_keyframe(
    dataroot=None,
    annotations_pkl=None,
    sample_token: str | None = None,
    load_annotations: bool = True,
    version: str = NUSCENES_VERSION,
) -> Keyframe:
    """Load one nuScenes sample with its images, LiDAR sweep, poses and GT boxes.

    Args:
        dataroot: nuScenes root holding ``v1.0-test/`` and ``samples/``; default
            :func:`paths.nuscenes_keyframe_dir`.
        annotations_pkl: MMDetection3D info v1.1 pickle with the sample's boxes; default
            :func:`paths.nuscenes_annotations_pkl`.
        sample_token: which sample; default the first sample (by timestamp) of the table.
        load_annotations: False to skip the pickle (``boxes`` and ``boxes_2d`` stay empty).
        version: table folder under ``dataroot`` (``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``).

    Returns:
        The :class:`Keyframe`.

    Raises:
        FileNotFoundError: dataroot, a table, an image, the ``.pcd.bin`` or the pickle is missing
            (the message names the path).
        ValueError: unknown ``sample_token``, a camera channel missing from the sample, a pickle
            without that sample, or a pickle whose LiDAR file differs from the table's.
    """
    dataroot = Path(dataroot if dataroot is not None else paths.nuscenes_keyframe_dir())
    nusc = _open_nuscenes(dataroot, version)

    if sample_token is None:
        if not nusc.sample:
            raise ValueError(f"no samples in {dataroot / version / 'sample.json'}")
        sample = min(nusc.sample, key=lambda s: s["timestamp"])
    else:
        try:
            sample = nusc.get("sample", sample_token)
        except KeyError:
            raise ValueError(
                f"sample {sample_token} not found in {dataroot / version}"
            ) from None

    def sensor_records(channel: str):
        if channel not in sample["data"]:
            raise ValueError(f"sample {sample['token']} has no {channel} data in {dataroot}")
        sd = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        return sd, cs, pose

    cameras: dict[str, CameraFrame] = {}
    for channel in conventions.CAMERA_CHANNELS:
        sd, cs, pose = sensor_records(channel)
        cameras[channel] = CameraFrame(
            channel=channel,
            sample_data_token=sd["token"],
            timestamp_us=int(sd["timestamp"]),
            image=_load_image(dataroot / sd["filename"]),
            K=np.asarray(cs["camera_intrinsic"], dtype=np.float64),
            T_base_cam=_record_transform(cs),
            T_map_base=_record_transform(pose),
        )

    sd, cs, pose = sensor_records(conventions.LIDAR_CHANNEL)
    pcd_path = dataroot / sd["filename"]
    if not pcd_path.is_file():
        raise FileNotFoundError(f"LiDAR sweep {pcd_path} not found")
    # Same layout the devkit reads (float32 x, y, z, intensity, ring); read directly to keep ring.
    raw = np.fromfile(pcd_path, dtype=np.float32)
    if raw.size % 5:
        raise ValueError(f"{pcd_path}: {raw.size} floats is not a multiple of 5 (x,y,z,i,ring)")
    lidar = LidarSweep(
        points=raw.reshape(-1, 5),
        T_base_lidar=_record_transform(cs),
        T_map_base=_record_transform(pose),
        timestamp_us=int(sd["timestamp"]),
        token=sd["token"],
    )

    keyframe = Keyframe(
        sample_token=sample["token"],
        timestamp_us=int(sample["timestamp"]),
        cameras=cameras,
        lidar=lidar,
        boxes_2d={ch: [] for ch in cameras},
    )
    if load_annotations:
        pkl_path = Path(
            annotations_pkl if annotations_pkl is not None else paths.nuscenes_annotations_pkl()
        )
        entry, metainfo = _read_annotations(pkl_path, sample["token"])
        pkl_lidar = Path(entry.get("lidar_points", {}).get("lidar_path", pcd_path.name)).name
        if pkl_lidar != pcd_path.name:
            raise ValueError(
                f"{pkl_path} was made for LiDAR file {pkl_lidar}, the table has {pcd_path.name}"
            )
        keyframe.boxes = _boxes_from_entry(entry, metainfo, lidar)
        keyframe.boxes_2d = _boxes_2d_from_entry(entry, metainfo, cameras, keyframe.boxes)
    return keyframe


def lidar_points_in_camera(keyframe: Keyframe, channel: str) -> np.ndarray:
    """All LIDAR_TOP points in a camera's optical frame, with ego-motion compensation.

    Chain (as ``NuScenesExplorer.map_pointcloud_to_image``): ``lidar_top`` -> ``base_link`` at the
    LiDAR time -> ``map`` -> ``base_link`` at the camera time -> camera. No filtering, so row ``i``
    is ``keyframe.lidar.points[i]``; points behind the camera have ``z <= 0``.

    Returns:
        (N, 3) float64 metres in the camera optical frame.

    Raises:
        ValueError: unknown camera channel.
    """
    if channel not in keyframe.cameras:
        raise ValueError(f"unknown camera {channel!r}; have {list(keyframe.cameras)}")
    cam = keyframe.cameras[channel]
    lidar = keyframe.lidar
    T_cam_lidar = invert_transform(cam.T_map_cam) @ lidar.T_map_base @ lidar.T_base_lidar
    return transform_points(T_cam_lidar, lidar.points[:, :3])


def lidar_depth_for_camera(
    keyframe: Keyframe, channel: str, min_depth: float = 1.0, return_index: bool = False
):
    """Sparse depth image of a camera from the LIDAR_TOP sweep.

    Points go through :func:`lidar_points_in_camera` and are z-buffered into the camera's pixel
    grid (nearest return wins). The devkit additionally drops a 1-pixel border; here every pixel
    whose centre is nearest to the projection is used.

    Args:
        keyframe: loaded keyframe.
        channel: camera channel, e.g. ``"CAM_FRONT"``.
        min_depth: drop points closer than this along the optical axis (1 m: ego-vehicle returns).
        return_index: also return the (H, W) int64 row of ``keyframe.lidar.points`` per pixel (-1
            where empty).

    Returns:
        (H, W) float32 metres along the optical axis, NaN without a return (plus the index image
        when requested). About 3-5k of the 1.44 M pixels are filled per camera on the embedded
        keyframe.

    Raises:
        ValueError: unknown camera channel.
    """
    cam = keyframe.cameras.get(channel)
    pts = lidar_points_in_camera(keyframe, channel)  # raises for unknown channels
    return points_to_depth_image(
        pts, cam.K, cam.width, cam.height, min_depth=min_depth, return_index=return_index
    )


# --------------------------------------------------------------------------------------------
# Whole scenes (keyframes and sweeps)


@dataclass
class SensorRecord:
    """One ``sample_data`` row of a camera or LIDAR_TOP (keyframe or sweep), files not loaded.

    Attributes:
        channel: nuScenes channel, e.g. ``"CAM_FRONT"`` or ``"LIDAR_TOP"``.
        token: ``sample_data`` token.
        sample_token: the ``sample`` it belongs to.
        timestamp_us: capture time, microseconds since the Unix epoch.
        is_key_frame: True for keyframes (2 Hz), False for sweeps (12 Hz cameras, 20 Hz LiDAR).
        path: absolute path of the ``.jpg`` / ``.png`` image or the ``.pcd.bin`` sweep.
        T_base_sensor: (4, 4) float64, sensor frame -> ``base_link`` (``calibrated_sensor``).
        T_map_base: (4, 4) float64, ``base_link`` -> ``map`` at ``timestamp_us`` (``ego_pose``).
        K: (3, 3) float64 intrinsics for cameras, None for the LiDAR.
        width: image width in pixels (0 for the LiDAR).
        height: image height in pixels (0 for the LiDAR).
    """

    channel: str
    token: str
    sample_token: str
    timestamp_us: int
    is_key_frame: bool
    path: Path
    T_base_sensor: np.ndarray
    T_map_base: np.ndarray
    K: np.ndarray | None = None
    width: int = 0
    height: int = 0

    @property
    def frame_id(self) -> str:
        """TF frame of the sensor (``cam_front_optical``, ``lidar_top``)."""
        return conventions.sensor_frame(self.channel)

    @property
    def is_camera(self) -> bool:
        """True for a camera image, False for a LiDAR sweep."""
        return self.channel != conventions.LIDAR_CHANNEL


@dataclass
class AnnotationBox:
    """A ``sample_annotation`` box: upright in ``map`` at its sample's timestamp.

    Attributes:
        token: ``sample_annotation`` token.
        instance_token: the tracked object (same for all of its annotations).
        category: nuScenes category name, e.g. ``"vehicle.car"``.
        attributes: attribute names, e.g. ``("vehicle.moving",)``.
        center: (3,) float64 box centre in ``map``, metres.
        size: (3,) float64 ``(length, width, height)`` in metres (nuScenes stores ``w, l, h``).
        rotation: (3, 3) float64 box orientation in ``map`` (columns: heading, left, up).
        visibility: nuScenes visibility token ``"1"``..``"4"`` (0-40 % .. 80-100 %), ``""`` if none.
        num_lidar_pts: LiDAR returns inside the box.
        index: position in its sample's annotation list.
    """

    token: str
    instance_token: str
    category: str
    attributes: tuple[str, ...]
    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    visibility: str = ""
    num_lidar_pts: int = 0
    index: int = 0


@dataclass
class SceneRecords:
    """What a scene holds: its samples, camera / LiDAR records in time order and its GT boxes.

    Attributes:
        name: scene name, e.g. ``"scene-0061"``.
        token: scene token.
        version: table folder it was read from.
        dataroot: nuScenes root.
        samples: ``(sample token, timestamp_us)`` of the keyframes in time order.
        records: camera and LIDAR_TOP :class:`SensorRecord` sorted by ``(timestamp_us, channel)``;
            keyframes only unless loaded with ``sweeps=True``.
        boxes: sample token -> its :class:`AnnotationBox` list (empty lists on ``v1.0-test``).
        calibration: channel -> (4, 4) float64 sensor -> ``base_link`` (constant over the scene).
    """

    name: str
    token: str
    version: str
    dataroot: Path
    samples: list[tuple[str, int]]
    records: list[SensorRecord]
    boxes: dict[str, list[AnnotationBox]]
    calibration: dict[str, np.ndarray]

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last record."""
        if not self.records:
            return 0.0
        return (self.records[-1].timestamp_us - self.records[0].timestamp_us) / 1e6


def open_tables(dataroot, version: str | None = None):
    """nuscenes-devkit handle on a whole release, with file checks that name what is missing.

    Args:
        dataroot: nuScenes root (holds ``<version>/``, ``samples/``, ``sweeps/``).
        version: ``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test`` (None: the only folder present).

    Returns:
        ``nuscenes.nuscenes.NuScenes``.

    Raises:
        FileNotFoundError: missing dataroot, version folder or table (the message names it).
        ValueError: the devkit cannot read the tables.
    """
    dataroot = Path(dataroot)
    return _open_nuscenes(dataroot, resolve_version(dataroot, version), NUSCENES_TABLES)


def scene_names(nusc) -> list[str]:
    """Names of all scenes of a devkit handle, in table order."""
    return [s["name"] for s in nusc.scene]


def load_scene(nusc, scene_name: str, sweeps: bool = False, check_files: bool = True) -> SceneRecords:
    """Index one scene: its keyframes (and, with ``sweeps``, every camera / LiDAR sweep) and boxes.

    A ``sample_data`` row is part of the scene when its ``sample_token`` is one of the scene's
    samples (sweeps point at a sample of their scene). Radar channels are skipped.

    Args:
        nusc: devkit handle from :func:`open_tables`.
        scene_name: e.g. ``"scene-0061"``.
        sweeps: include non-keyframe ``sample_data`` (12 Hz cameras, 20 Hz LiDAR).
        check_files: verify that every image and ``.pcd.bin`` exists before returning.

    Returns:
        The :class:`SceneRecords`.

    Raises:
        ValueError: unknown scene (the message lists some of the names), a calibration that
            changes within the scene, or a camera record without intrinsics.
        FileNotFoundError: with ``check_files``, the first missing image or LiDAR file.
    """
    dataroot = Path(nusc.dataroot)
    table_dir = dataroot / nusc.version
    by_name = {s["name"]: s for s in nusc.scene}
    if scene_name not in by_name:
        names = sorted(by_name)
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise ValueError(f"scene {scene_name!r} not in {table_dir / 'scene.json'} "
                         f"({len(names)} scenes: {shown or 'none'})")
    scene = by_name[scene_name]
    samples = sorted(((s["token"], int(s["timestamp"])) for s in nusc.sample
                      if s["scene_token"] == scene["token"]), key=lambda x: x[1])
    sample_tokens = {t for t, _ in samples}
    wanted = set(conventions.CAMERA_CHANNELS) | {conventions.LIDAR_CHANNEL}
    records: list[SensorRecord] = []
    calibration: dict[str, np.ndarray] = {}
    calib_tokens: dict[str, str] = {}
    for sd in nusc.sample_data:
        if sd["sample_token"] not in sample_tokens or (not sweeps and not sd["is_key_frame"]):
            continue
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        channel = nusc.get("sensor", cs["sensor_token"])["channel"]
        if channel not in wanted:
            continue
        if calib_tokens.setdefault(channel, cs["token"]) != cs["token"]:
            prev = nusc.get("calibrated_sensor", calib_tokens[channel])
            if not (np.allclose(prev["translation"], cs["translation"])
                    and np.allclose(prev["rotation"], cs["rotation"])):
                raise ValueError(f"scene {scene_name}: {channel} calibration changes within the scene "
                                 f"({calib_tokens[channel]} vs {cs['token']} in {table_dir})")
        T_base_sensor = _record_transform(cs)
        calibration.setdefault(channel, T_base_sensor)
        K = None
        if channel != conventions.LIDAR_CHANNEL:
            if len(cs.get("camera_intrinsic") or []) != 3:
                raise ValueError(f"{channel} calibrated_sensor {cs['token']} in {table_dir} has no "
                                 "camera_intrinsic")
            K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        records.append(SensorRecord(
            channel=channel, token=sd["token"], sample_token=sd["sample_token"],
            timestamp_us=int(sd["timestamp"]), is_key_frame=bool(sd["is_key_frame"]),
            path=dataroot / sd["filename"], T_base_sensor=T_base_sensor,
            T_map_base=_record_transform(pose), K=K,
            width=int(sd.get("width") or 0), height=int(sd.get("height") or 0)))
    order = {ch: i for i, ch in enumerate(conventions.CAMERA_CHANNELS + (conventions.LIDAR_CHANNEL,))}
    records.sort(key=lambda r: (r.timestamp_us, order[r.channel]))
    if not records:
        raise ValueError(f"scene {scene_name} has no camera or LIDAR_TOP sample_data in {table_dir}")
    if check_files:
        for r in records:
            if not r.path.is_file():
                kind = "camera image" if r.is_camera else "LiDAR sweep"
                raise FileNotFoundError(f"{kind} {r.path} of scene {scene_name} not found "
                                        f"(sample_data {r.token})")
    boxes: dict[str, list[AnnotationBox]] = {}
    for token, _ in samples:
        out = []
        for i, ann_token in enumerate(nusc.get("sample", token)["anns"]):
            ann = nusc.get("sample_annotation", ann_token)
            w, l, h = (float(v) for v in ann["size"])
            out.append(AnnotationBox(
                token=ann["token"], instance_token=ann["instance_token"],
                category=ann.get("category_name") or nusc.get(
                    "category", nusc.get("instance", ann["instance_token"])["category_token"])["name"],
                attributes=tuple(nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]),
                center=np.asarray(ann["translation"], dtype=np.float64),
                size=np.array([l, w, h], dtype=np.float64),
                rotation=make_transform([0.0, 0.0, 0.0], ann["rotation"])[:3, :3],
                visibility=str(ann.get("visibility_token") or ""),
                num_lidar_pts=int(ann.get("num_lidar_pts", 0)), index=i))
        boxes[token] = out
    return SceneRecords(name=scene_name, token=scene["token"], version=nusc.version, dataroot=dataroot,
                        samples=samples, records=records, boxes=boxes, calibration=calibration)


def read_image_file(record: SensorRecord) -> tuple[bytes, str]:
    """The encoded bytes of a camera record's file and its format (``"jpeg"`` or ``"png"``).

    Raises:
        FileNotFoundError: the file is missing (path in the message).
        ValueError: a file that is neither JPEG nor PNG.
    """
    if not record.path.is_file():
        raise FileNotFoundError(f"camera image {record.path} not found (sample_data {record.token})")
    data = record.path.read_bytes()
    if data[:3] == b"\xff\xd8\xff":
        return data, "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, "png"
    raise ValueError(f"camera image {record.path} is neither JPEG nor PNG")


def decode_image(record: SensorRecord) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a camera record (Pillow).

    Raises:
        FileNotFoundError: the file is missing. ValueError: the file does not decode.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    data, _ = read_image_file(record)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"camera image {record.path} does not decode: {exc}") from exc


def read_lidar_points(record: SensorRecord) -> np.ndarray:
    """(N, 5) float32 ``x, y, z, intensity, ring`` of a LIDAR_TOP ``.pcd.bin`` (sensor frame, metres).

    Raises:
        FileNotFoundError: the file is missing. ValueError: its size is not a multiple of 5 floats.
    """
    if not record.path.is_file():
        raise FileNotFoundError(f"LiDAR sweep {record.path} not found (sample_data {record.token})")
    raw = np.fromfile(record.path, dtype=np.float32)
    if raw.size % 5:
        raise ValueError(f"{record.path}: {raw.size} floats is not a multiple of 5 (x,y,z,i,ring)")
    return raw.reshape(-1, 5)


def nearest_lidar(scene: SceneRecords, timestamp_us: int) -> SensorRecord:
    """The LIDAR_TOP record of ``scene`` nearest in time to ``timestamp_us``.

    Raises:
        ValueError: the scene has no LiDAR record.
    """
    lidars = [r for r in scene.records if r.channel == conventions.LIDAR_CHANNEL]
    if not lidars:
        raise ValueError(f"scene {scene.name} has no LIDAR_TOP sample_data")
    return min(lidars, key=lambda r: abs(r.timestamp_us - timestamp_us))


def lidar_depth_for_record(camera: SensorRecord, lidar: SensorRecord, points: np.ndarray,
                           min_depth: float = 1.0) -> np.ndarray:
    """Sparse depth image of a camera record from a LiDAR sweep, ego motion compensated.

    Chain as :func:`lidar_points_in_camera`: ``lidar_top`` -> ``base_link`` at the LiDAR time ->
    ``map`` -> ``base_link`` at the camera time -> camera; z-buffered, nearest return wins.

    Args:
        camera: the camera record (needs ``K``, ``width``, ``height``).
        lidar: the LiDAR record ``points`` came from.
        points: (N, >= 3) float32 points in the ``lidar_top`` frame.
        min_depth: drop points nearer than this along the optical axis [m].

    Returns:
        (H, W) float32 metres along the optical axis, NaN without a return.
    """
    T_map_cam = camera.T_map_base @ camera.T_base_sensor
    T_cam_lidar = invert_transform(T_map_cam) @ lidar.T_map_base @ lidar.T_base_sensor
    pts = transform_points(T_cam_lidar, np.asarray(points)[:, :3])
    return points_to_depth_image(pts, camera.K, camera.width, camera.height, min_depth=min_depth)


def pickle_boxes_for_scene(pkl_path, scene: SceneRecords) -> dict[str, list[AnnotationBox]]:
    """GT boxes of a scene's samples from an MMDetection3D info v1.1 pickle, moved to ``map``.

    Boxes come in the LiDAR frame of each keyframe and are placed upright in ``map`` as
    :func:`load_keyframe` does. The pickle has no instance tokens: ``instance_token`` is ``""`` and
    ``category`` is the detection class (``"other"`` for label -1).

    Args:
        pkl_path: the pickle (read with a restricted unpickler).
        scene: from :func:`load_scene`.

    Returns:
        sample token -> boxes, for the scene's samples the pickle holds (others are absent).

    Raises:
        FileNotFoundError: no pickle. ValueError: not an info v1.1 pickle.
    """
    pkl_path = Path(pkl_path)
    if not pkl_path.is_file():
        raise FileNotFoundError(f"annotation pickle {pkl_path} not found")
    info = _load_info_pickle(pkl_path)
    if not isinstance(info, dict) or "data_list" not in info or "metainfo" not in info:
        raise ValueError(f"{pkl_path} is not an MMDetection3D info v1.1 pickle (no data_list / metainfo)")
    entries = {e.get("token"): e for e in info["data_list"]}
    lidar_keyframes = {r.sample_token: r for r in scene.records
                       if r.channel == conventions.LIDAR_CHANNEL and r.is_key_frame}
    out: dict[str, list[AnnotationBox]] = {}
    for token, _ in scene.samples:
        if token not in entries or token not in lidar_keyframes:
            continue
        rec = lidar_keyframes[token]
        sweep = LidarSweep(np.zeros((0, 5), np.float32), rec.T_base_sensor, rec.T_map_base,
                           rec.timestamp_us, rec.token)
        out[token] = [
            AnnotationBox(token="", instance_token="", category=b.category, attributes=(),
                          center=b.center_map, size=b.size, rotation=yaw_to_matrix(b.yaw_map),
                          num_lidar_pts=b.num_lidar_pts, index=b.index)
            for b in _boxes_from_entry(entries[token], info["metainfo"], sweep)
        ]
    return out
