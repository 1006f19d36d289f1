"""Convert a nuScenes keyframe into a ROS 2 bag (rosbag2, MCAP storage) without a ROS install.

Usage::

    python -m occ_audit_ros.tools.nuscenes_to_bag --output bags/scene-0061-kf0 [--overwrite]
        [--dataroot DATAROOT] [--annotations PKL] [--sample-token TOKEN] [--no-compression]

Topics (names from :mod:`occ_audit_ros.conventions`), header stamps = nuScenes ``sample_data``
timestamps, bag receive time = header stamp:

* ``/tf_static`` (tf2_msgs/TFMessage, 1 msg, offered QoS transient-local): ``base_link`` -> every
  camera optical frame and ``lidar_top`` (``calibrated_sensor``).
* ``/tf`` (tf2_msgs/TFMessage): ``map`` -> ``base_link`` at each of the 7 sensor timestamps
  (``ego_pose``; each sensor has its own pose, so consumers must look up TF at the header stamp).
* ``/<cam>/image_raw`` (rgb8), ``/<cam>/camera_info`` (K, P = [K|0], R = I, plumb_bob D = 0) and
  ``/<cam>/depth`` (32FC1 metres along the optical axis, NaN = no LiDAR return), per camera.
* ``/lidar_top/points`` (PointCloud2: x, y, z, intensity float32 + ring uint16, frame lidar_top).
* ``/gt/boxes`` (visualization_msgs/MarkerArray, one CUBE per GT box in ``base_link`` at the LiDAR
  stamp, ``ns`` = category, ``id`` = box index in :attr:`Keyframe.boxes`).
* ``/clock`` (rosgraph_msgs/Clock) at every distinct message time.

MCAP chunks are zstd-compressed (the depth images are >99 % NaN). The bag is written into a
hidden staging directory next to the target and renamed into place, so a crash never leaves a
half-written bag under the target name.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import matrix_to_quaternion

__all__ = [
    "BagMessage",
    "POINTCLOUD_DTYPE",
    "get_kilted_typestore",
    "keyframe_messages",
    "write_keyframe_bag",
    "main",
]

#: Record layout of ``/lidar_top/points``: little-endian, 20-byte points (2 bytes of padding keep
#: every point 4-byte aligned). ``ring`` is uint16 as the Velodyne driver publishes it.
POINTCLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "ring"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2"],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": 20,
    }
)

# RGBA per detection class for the GT markers (alpha < 1 so the point cloud stays visible).
_CATEGORY_COLORS = {
    "car": (1.0, 0.62, 0.0),
    "truck": (1.0, 0.39, 0.28),
    "trailer": (1.0, 0.55, 0.0),
    "bus": (1.0, 0.27, 0.0),
    "construction_vehicle": (0.91, 0.59, 0.48),
    "bicycle": (0.86, 0.08, 0.24),
    "motorcycle": (1.0, 0.24, 0.39),
    "pedestrian": (0.0, 0.0, 0.9),
    "traffic_cone": (0.18, 0.31, 0.31),
    "barrier": (0.44, 0.5, 0.56),
}
_DEFAULT_COLOR = (0.6, 0.6, 0.6)

# Order of messages sharing a timestamp: the clock first (sim time advances before data), then TF
# so that a consumer can transform the data that follows at the same stamp.
_TOPIC_PRIORITY = {
    conventions.CLOCK_TOPIC: 0,
    conventions.TF_STATIC_TOPIC: 1,
    conventions.TF_TOPIC: 2,
}


@dataclass
class BagMessage:
    """One message to write.

    Attributes:
        topic: ROS topic name.
        msgtype: ROS 2 type name, e.g. ``"sensor_msgs/msg/Image"``.
        timestamp_ns: bag receive time, nanoseconds since the epoch (= header stamp).
        msg: the message object of the typestore.
    """

    topic: str
    msgtype: str
    timestamp_ns: int
    msg: Any


def get_kilted_typestore():
    """The rosbags typestore for ROS 2 Kilted (Jazzy on rosbags releases without Kilted).

    Returns:
        ``rosbags.typesys.store.Typestore``.
    """
    from rosbags.typesys import Stores, get_typestore

    # Jazzy has the same message definitions for every type used here.
    for name in ("ROS2_KILTED", "ROS2_JAZZY"):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    raise RuntimeError("rosbags has no ROS 2 Kilted or Jazzy typestore")  # pragma: no cover


def _qos_profiles():
    """Offered QoS per topic, as ``ros2 bag record`` would store them.

    ``/tf_static`` is transient-local (depth 1) so that a late subscriber of ``ros2 bag play``
    still gets the static tree; ``/tf`` uses tf2's broadcaster depth of 100; everything else is
    reliable/volatile depth 10 (compatible with best-effort sensor-data subscribers).
    """
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    infinite = QosTime(9223372036, 854775807)  # rmw's "infinite" duration as rosbag2 writes it

    def qos(depth: int, durability) -> list:
        return [
            Qos(
                history=QosHistory.KEEP_LAST,
                depth=depth,
                reliability=QosReliability.RELIABLE,
                durability=durability,
                deadline=infinite,
                lifespan=infinite,
                liveliness=QosLiveliness.AUTOMATIC,
                liveliness_lease_duration=infinite,
                avoid_ros_namespace_conventions=False,
            )
        ]

    return {
        conventions.TF_STATIC_TOPIC: qos(1, QosDurability.TRANSIENT_LOCAL),
        conventions.TF_TOPIC: qos(100, QosDurability.VOLATILE),
        None: qos(10, QosDurability.VOLATILE),
    }


def _stamp(types: dict, timestamp_ns: int):
    return types["builtin_interfaces/msg/Time"](
        sec=int(timestamp_ns // 1_000_000_000), nanosec=int(timestamp_ns % 1_000_000_000)
    )


def _header(types: dict, timestamp_ns: int, frame_id: str):
    return types["std_msgs/msg/Header"](stamp=_stamp(types, timestamp_ns), frame_id=frame_id)


def _transform_stamped(types: dict, T: np.ndarray, timestamp_ns: int, parent: str, child: str):
    w, x, y, z = matrix_to_quaternion(T)
    return types["geometry_msgs/msg/TransformStamped"](
        header=_header(types, timestamp_ns, parent),
        child_frame_id=child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](
                x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])
            ),
            rotation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
        ),
    )


def _image_msg(types: dict, header, data: np.ndarray, encoding: str):
    """sensor_msgs/Image from an (H, W[, C]) little-endian array."""
    height, width = data.shape[:2]
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=raw.size // height,
        data=raw,
    )


def _camera_info_msg(types: dict, header, K: np.ndarray, width: int, height: int):
    P = np.zeros((3, 4), dtype=np.float64)
    P[:, :3] = K  # monocular, already rectified: P = [K | 0]
    return types["sensor_msgs/msg/CameraInfo"](
        header=header,
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5, dtype=np.float64),
        k=np.asarray(K, dtype=np.float64).reshape(9).copy(),
        r=np.eye(3, dtype=np.float64).reshape(9),
        p=P.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def _pointcloud_msg(types: dict, header, points: np.ndarray):
    """PointCloud2 from the (N, 5) float32 nuScenes sweep (x, y, z, intensity, ring)."""
    cloud = np.zeros(len(points), dtype=POINTCLOUD_DTYPE)
    for i, name in enumerate(("x", "y", "z", "intensity")):
        cloud[name] = points[:, i]
    cloud["ring"] = points[:, 4].astype(np.uint16)  # rings are exact small integers in the file
    field_type = types["sensor_msgs/msg/PointField"]
    fields = [
        field_type(name=name, offset=POINTCLOUD_DTYPE.fields[name][1], datatype=dt, count=1)
        for name, dt in (
            ("x", field_type.FLOAT32),
            ("y", field_type.FLOAT32),
            ("z", field_type.FLOAT32),
            ("intensity", field_type.FLOAT32),
            ("ring", field_type.UINT16),
        )
    ]
    raw = cloud.view(np.uint8).reshape(-1)
    return types["sensor_msgs/msg/PointCloud2"](
        header=header,
        height=1,
        width=len(cloud),
        fields=fields,
        is_bigendian=False,
        point_step=POINTCLOUD_DTYPE.itemsize,
        row_step=POINTCLOUD_DTYPE.itemsize * len(cloud),
        data=raw,
        is_dense=bool(np.isfinite(points[:, :3]).all()),
    )


def _boxes_msg(types: dict, keyframe, timestamp_ns: int):
    """MarkerArray with one CUBE per GT box, in base_link at the LiDAR stamp."""
    marker_type = types["visualization_msgs/msg/Marker"]
    markers = []
    for box in keyframe.boxes:
        w, x, y, z = matrix_to_quaternion(box.rotation)  # exact (slightly tilted) orientation
        r, g, b = _CATEGORY_COLORS.get(box.category, _DEFAULT_COLOR)
        markers.append(
            marker_type(
                header=_header(types, timestamp_ns, conventions.BASE_FRAME),
                ns=box.category,
                id=int(box.index),
                type=marker_type.CUBE,
                action=marker_type.ADD,
                pose=types["geometry_msgs/msg/Pose"](
                    position=types["geometry_msgs/msg/Point"](
                        x=float(box.center[0]), y=float(box.center[1]), z=float(box.center[2])
                    ),
                    orientation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
                ),
                scale=types["geometry_msgs/msg/Vector3"](
                    x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2])
                ),
                color=types["std_msgs/msg/ColorRGBA"](r=r, g=g, b=b, a=0.5),
                # Zero lifetime = until replaced: the keyframe's boxes stay visible while paused.
                lifetime=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
                frame_locked=False,
                points=[],
                colors=[],
                texture_resource="",
                texture=types["sensor_msgs/msg/CompressedImage"](
                    header=_header(types, 0, ""), format="", data=np.zeros(0, dtype=np.uint8)
                ),
                uv_coordinates=[],
                text="",
                mesh_resource="",
                mesh_file=types["visualization_msgs/msg/MeshFile"](
                    filename="", data=np.zeros(0, dtype=np.uint8)
                ),
                mesh_use_embedded_materials=False,
            )
        )
    return types["visualization_msgs/msg/MarkerArray"](markers=markers)


def keyframe_messages(keyframe, typestore=None) -> list[BagMessage]:
    """All messages of a keyframe's bag, in the order they are written.

    Args:
        keyframe: a :class:`occ_audit_ros.nuscenes_io.Keyframe`.
        typestore: rosbags typestore (default :func:`get_kilted_typestore`).

    Returns:
        Messages sorted by time (ties: ``/clock``, ``/tf_static``, ``/tf``, then the data).
        Depth images are computed here with :func:`nuscenes_io.lidar_depth_for_camera`.
    """
    from occ_audit_ros.nuscenes_io import lidar_depth_for_camera

    types = (typestore or get_kilted_typestore()).types
    us = 1000  # nuScenes stamps are microseconds
    msgs: list[BagMessage] = []

    def add(topic: str, msgtype: str, timestamp_ns: int, msg) -> None:
        msgs.append(BagMessage(topic, msgtype, int(timestamp_ns), msg))

    lidar = keyframe.lidar
    sensor_stamps = [cam.timestamp_us * us for cam in keyframe.cameras.values()]
    sensor_stamps.append(lidar.timestamp_us * us)
    t0 = min(sensor_stamps)

    static = [
        _transform_stamped(types, cam.T_base_cam, t0, conventions.BASE_FRAME, cam.frame_id)
        for cam in keyframe.cameras.values()
    ]
    static.append(
        _transform_stamped(types, lidar.T_base_lidar, t0, conventions.BASE_FRAME, lidar.frame_id)
    )
    add(conventions.TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", t0,
        types["tf2_msgs/msg/TFMessage"](transforms=static))

    poses = [(cam.timestamp_us * us, cam.T_map_base) for cam in keyframe.cameras.values()]
    poses.append((lidar.timestamp_us * us, lidar.T_map_base))
    for stamp, T in poses:
        tf = _transform_stamped(types, T, stamp, conventions.MAP_FRAME, conventions.BASE_FRAME)
        add(conventions.TF_TOPIC, "tf2_msgs/msg/TFMessage", stamp,
            types["tf2_msgs/msg/TFMessage"](transforms=[tf]))

    for channel, cam in keyframe.cameras.items():
        stamp = cam.timestamp_us * us
        header = _header(types, stamp, cam.frame_id)
        add(conventions.camera_info_topic(channel), "sensor_msgs/msg/CameraInfo", stamp,
            _camera_info_msg(types, header, cam.K, cam.width, cam.height))
        add(conventions.image_topic(channel), "sensor_msgs/msg/Image", stamp,
            _image_msg(types, header, cam.image.astype(np.uint8, copy=False), "rgb8"))
        depth = lidar_depth_for_camera(keyframe, channel).astype("<f4", copy=False)
        add(conventions.depth_topic(channel), "sensor_msgs/msg/Image", stamp,
            _image_msg(types, header, depth, "32FC1"))

    lidar_stamp = lidar.timestamp_us * us
    add(conventions.LIDAR_TOPIC, "sensor_msgs/msg/PointCloud2", lidar_stamp,
        _pointcloud_msg(types, _header(types, lidar_stamp, lidar.frame_id), lidar.points))
    add(conventions.GT_BOXES_TOPIC, "visualization_msgs/msg/MarkerArray", lidar_stamp,
        _boxes_msg(types, keyframe, lidar_stamp))

    for stamp in sorted({m.timestamp_ns for m in msgs}):
        add(conventions.CLOCK_TOPIC, "rosgraph_msgs/msg/Clock", stamp,
            types["rosgraph_msgs/msg/Clock"](clock=_stamp(types, stamp)))

    # Stable sort: ties keep the insertion order above after the clock/TF priority.
    msgs.sort(key=lambda m: (m.timestamp_ns, _TOPIC_PRIORITY.get(m.topic, 3)))
    return msgs


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists() and not output_dir.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"output {output_dir} already exists (pass --overwrite to replace)")
    # Only replace something that is (or could be) a bag, never an arbitrary directory.
    if not output_dir.is_dir() or (
        any(output_dir.iterdir()) and not (output_dir / "metadata.yaml").is_file()
    ):
        raise FileExistsError(
            f"refusing to overwrite {output_dir}: it is not a rosbag2 directory (no metadata.yaml)"
        )


def write_keyframe_bag(
    keyframe, output_dir, *, overwrite: bool = False, compress: bool = True
) -> Path:
    """Write a keyframe as a rosbag2 (MCAP) directory.

    Args:
        keyframe: a :class:`occ_audit_ros.nuscenes_io.Keyframe`.
        output_dir: bag directory to create (holds ``metadata.yaml`` and ``<name>_0.mcap``).
        overwrite: replace an existing bag directory at ``output_dir``.
        compress: zstd-compress MCAP chunks (``ros2 bag`` reads them natively).

    Returns:
        The absolute bag directory path.

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False, or it exists and is not a
            bag directory (not replaced even with ``overwrite``).
    """
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    typestore = get_kilted_typestore()
    messages = keyframe_messages(keyframe, typestore)
    qos = _qos_profiles()

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Staging next to the target (same filesystem, so the final rename is atomic); the bag inside
    # already has the final name because rosbags names the .mcap file after its directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp",
                                    dir=output_dir.parent))
    try:
        bag_path = staging / output_dir.name
        writer = Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compress:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        writer.set_custom_data("occ_audit_ros.sample_token", keyframe.sample_token)
        writer.set_custom_data("occ_audit_ros.source", "nuScenes (CC BY-NC-SA 4.0)")
        with writer:
            connections = {}
            for m in messages:
                if m.topic not in connections:
                    connections[m.topic] = writer.add_connection(
                        m.topic,
                        m.msgtype,
                        typestore=typestore,
                        offered_qos_profiles=qos.get(m.topic, qos[None]),
                    )
                data = typestore.serialize_cdr(m.msg, m.msgtype)
                writer.write(connections[m.topic], m.timestamp_ns, data)
        if output_dir.exists() or output_dir.is_symlink():
            _check_output(output_dir, overwrite)  # re-check: it may have appeared meanwhile
            # Move the old bag aside (into staging, deleted below) then rename the new one in.
            # Two renames, not one atomic swap: POSIX has no portable directory exchange.
            output_dir.rename(staging / ".previous")
        bag_path.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _bag_summary(bag_dir: Path) -> tuple[list[tuple[str, str, int]], int]:
    """(topic, type, count) rows read back from the bag, and its size in bytes."""
    from rosbags.rosbag2 import Reader

    with Reader(bag_dir) as reader:
        rows = sorted((c.topic, c.msgtype, c.msgcount) for c in reader.connections)
    size = sum(p.stat().st_size for p in bag_dir.rglob("*") if p.is_file())
    return rows, size


def main(argv=None) -> int:
    """Command-line entry point.

    Returns:
        0 on success, 1 on a data or output error (message on stderr), 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python -m occ_audit_ros.tools.nuscenes_to_bag",
        description="Convert a nuScenes keyframe (+ MMDetection3D GT boxes) to a ROS 2 MCAP bag.",
    )
    parser.add_argument("--dataroot", type=Path, default=paths.nuscenes_keyframe_dir(),
                        help="nuScenes root with v1.0-test/ and samples/ (default: embedded)")
    parser.add_argument("--annotations", type=Path, default=paths.nuscenes_annotations_pkl(),
                        help="MMDetection3D info v1.1 pickle with the GT boxes (default: embedded)")
    parser.add_argument("--output", type=Path, required=True, help="bag directory to create")
    parser.add_argument("--sample-token", default=None, help="sample to convert (default: first)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    parser.add_argument("--no-compression", action="store_true",
                        help="do not zstd-compress MCAP chunks")
    args = parser.parse_args(argv)

    from occ_audit_ros.nuscenes_io import load_keyframe

    start = time.perf_counter()
    try:
        # Fail on an existing output before the (slower) loading.
        _check_output(args.output.absolute(), args.overwrite)
        keyframe = load_keyframe(args.dataroot, args.annotations, sample_token=args.sample_token)
        bag_dir = write_keyframe_bag(
            keyframe, args.output, overwrite=args.overwrite, compress=not args.no_compression
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start

    rows, size = _bag_summary(bag_dir)
    print(f"wrote {bag_dir} (sample {keyframe.sample_token})")
    width = max(len(topic) for topic, _, _ in rows)
    for topic, msgtype, count in rows:
        print(f"  {topic:<{width}}  {count:3d}  {msgtype}")
    print(f"{sum(c for _, _, c in rows)} messages, {size / 1e6:.1f} MB, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
