"""Convert a nuScenes keyframe into a ROS 2 bag (rosbag2, MCAP storage) without a running ROS graph.

The messages are built by :mod:`occ_audit_ros.nodes.conversions` (the builders the nodes publish
with) and serialised by ``rclpy.serialization``; ``rosbags`` writes the MCAP file, taking each
connection's message definition and type hash from its ROS 2 Kilted typestore. Needs the ROS 2
Python message packages and rclpy (a ROS 2 install, or the venv of ``scripts/setup_env.sh``).

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
from occ_audit_ros.nodes import conversions as cv

__all__ = [
    "BagMessage",
    "POINTCLOUD_DTYPE",
    "get_kilted_typestore",
    "keyframe_messages",
    "write_keyframe_bag",
    "IMAGE_FORMATS",
    "scene_message_plan",
    "scene_messages",
    "write_scene_bag",
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
        msgtype: ROS 2 type name of ``msg``, e.g. ``"sensor_msgs/msg/Image"``.
        timestamp_ns: bag receive time, nanoseconds since the epoch (= header stamp).
        msg: the rclpy message object.
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


def _ros_type_name(msg: Any) -> str:
    """ROS 2 type name of an rclpy message object, e.g. ``"sensor_msgs/msg/Image"``."""
    package = type(msg).__module__.split(".")[0]
    return f"{package}/msg/{type(msg).__name__}"


def _pointcloud_msg(points: np.ndarray, stamp_ns: int, frame_id: str):
    """PointCloud2 (:data:`POINTCLOUD_DTYPE`) from the (N, 5) float32 nuScenes sweep (x, y, z, intensity, ring)."""
    cloud = np.zeros(len(points), dtype=POINTCLOUD_DTYPE)
    for i, name in enumerate(("x", "y", "z", "intensity")):
        cloud[name] = points[:, i]
    cloud["ring"] = points[:, 4].astype(np.uint16)  # rings are exact small integers in the file
    return cv.numpy_to_pointcloud2(cloud, stamp_ns, frame_id, is_dense=bool(np.isfinite(points[:, :3]).all()))


def keyframe_messages(keyframe) -> list[BagMessage]:
    """All messages of a keyframe's bag, in the order they are written.

    The messages are the rclpy message objects of :mod:`occ_audit_ros.nodes.conversions`, the same
    builders the nodes publish with.

    Args:
        keyframe: a :class:`occ_audit_ros.nuscenes_io.Keyframe`.

    Returns:
        Messages sorted by time (ties: ``/clock``, ``/tf_static``, ``/tf``, then the data).
        Depth images are computed here with :func:`nuscenes_io.lidar_depth_for_camera`.

    Raises:
        ImportError: when ``tf2_msgs`` or ``rosgraph_msgs`` is not importable (a ROS 2 install
            has both; in a venv ``scripts/build_msgs.py`` builds ``tf2_msgs``).
        ValueError: on a transform or box rotation that is not a proper rigid transform.
    """
    from rosgraph_msgs.msg import Clock
    from tf2_msgs.msg import TFMessage

    from occ_audit_ros.nuscenes_io import lidar_depth_for_camera

    us = 1000  # nuScenes stamps are microseconds
    msgs: list[BagMessage] = []

    def add(topic: str, timestamp_ns: int, msg) -> None:
        msgs.append(BagMessage(topic, _ros_type_name(msg), int(timestamp_ns), msg))

    lidar = keyframe.lidar
    sensor_stamps = [cam.timestamp_us * us for cam in keyframe.cameras.values()]
    sensor_stamps.append(lidar.timestamp_us * us)
    t0 = min(sensor_stamps)

    static = [
        cv.matrix_to_transform_stamped(cam.T_base_cam, t0, conventions.BASE_FRAME, cam.frame_id)
        for cam in keyframe.cameras.values()
    ]
    static.append(cv.matrix_to_transform_stamped(lidar.T_base_lidar, t0, conventions.BASE_FRAME, lidar.frame_id))
    add(conventions.TF_STATIC_TOPIC, t0, TFMessage(transforms=static))

    poses = [(cam.timestamp_us * us, cam.T_map_base) for cam in keyframe.cameras.values()]
    poses.append((lidar.timestamp_us * us, lidar.T_map_base))
    for stamp, T in poses:
        tf = cv.matrix_to_transform_stamped(T, stamp, conventions.MAP_FRAME, conventions.BASE_FRAME)
        add(conventions.TF_TOPIC, stamp, TFMessage(transforms=[tf]))

    for channel, cam in keyframe.cameras.items():
        stamp = cam.timestamp_us * us
        add(conventions.camera_info_topic(channel), stamp,
            cv.camera_info_from_K(cam.K, cam.width, cam.height, stamp, cam.frame_id))
        add(conventions.image_topic(channel), stamp,
            cv.numpy_to_image(cam.image.astype(np.uint8, copy=False), "rgb8", stamp, cam.frame_id))
        depth = lidar_depth_for_camera(keyframe, channel).astype("<f4", copy=False)
        add(conventions.depth_topic(channel), stamp, cv.numpy_to_image(depth, "32FC1", stamp, cam.frame_id))

    lidar_stamp = lidar.timestamp_us * us
    add(conventions.LIDAR_TOPIC, lidar_stamp, _pointcloud_msg(lidar.points, lidar_stamp, lidar.frame_id))
    # Boxes keep their exact (slightly tilted) orientation in base_link; zero marker lifetime keeps
    # them visible while playback is paused.
    add(conventions.GT_BOXES_TOPIC, lidar_stamp,
        cv.boxes_to_markers(keyframe.boxes, lidar_stamp, conventions.BASE_FRAME, _CATEGORY_COLORS, _DEFAULT_COLOR,
                            alpha=0.5))

    for stamp in sorted({m.timestamp_ns for m in msgs}):
        add(conventions.CLOCK_TOPIC, stamp, Clock(clock=cv.ns_to_stamp(stamp)))

    # Stable sort: ties keep the insertion order above after the clock/TF priority.
    msgs.sort(key=lambda m: (m.timestamp_ns, _TOPIC_PRIORITY.get(m.topic, 3)))
    return msgs


#: ``--image-format`` choices: ``compressed`` passes the dataset's JPEG bytes through as
#: ``sensor_msgs/CompressedImage``, ``raw`` decodes them to rgb8 ``sensor_msgs/Image``.
IMAGE_FORMATS = ("compressed", "raw")


def _detection_class(category: str) -> str:
    """Detection class of a nuScenes category (``vehicle.car`` -> ``car``) for the marker colour."""
    for key, cls in (("bicycle", "bicycle"), ("motorcycle", "motorcycle"), ("pedestrian", "pedestrian"),
                     ("trafficcone", "traffic_cone"), ("barrier", "barrier"), ("bus", "bus"),
                     ("construction", "construction_vehicle"), ("trailer", "trailer"),
                     ("truck", "truck"), ("car", "car")):
        if key in category:
            return cls
    return category


def _scene_box_markers(boxes, stamp_ns: int):
    """MarkerArray of a sample's boxes in ``map``: a DELETEALL (clears the previous sample's boxes)
    then one CUBE per box with ``ns`` = instance token (category when the source has no instances),
    ``id`` = 0 (index without instances) and ``text`` = ``"category attr1,attr2"``."""
    from visualization_msgs.msg import Marker

    view = [_MarkerBox(b) for b in boxes]
    array = cv.boxes_to_markers(view, stamp_ns, conventions.MAP_FRAME, _CATEGORY_COLORS, _DEFAULT_COLOR,
                                alpha=0.5)
    for marker, box in zip(array.markers, boxes, strict=True):
        if box.instance_token:
            marker.ns, marker.id = box.instance_token, 0
        else:
            marker.ns, marker.id = box.category, int(box.index)
        marker.text = box.category + (" " + ",".join(box.attributes) if box.attributes else "")
    from std_msgs.msg import Header

    clear = Marker(header=Header(stamp=cv.ns_to_stamp(stamp_ns), frame_id=conventions.MAP_FRAME),
                   action=Marker.DELETEALL)
    array.markers.insert(0, clear)
    return array


@dataclass
class _MarkerBox:
    """Adapter of an :class:`~occ_audit_ros.nuscenes_io.AnnotationBox` for ``boxes_to_markers``."""

    box: Any

    @property
    def center(self):
        return self.box.center

    @property
    def size(self):
        return self.box.size

    @property
    def rotation(self):
        return self.box.rotation

    @property
    def category(self):
        return _detection_class(self.box.category)

    @property
    def index(self):
        return self.box.index


def scene_message_plan(scene, *, image_format: str = "compressed", depth: bool = False,
                       boxes: dict | None = None) -> list[tuple[int, int, str, Any]]:
    """What a scene's bag holds, in write order, with each message still to be built.

    Topics (header stamps = ``sample_data`` timestamps, bag time = header stamp):

    * ``/tf_static``: one TFMessage at the first stamp, ``base_link`` -> each sensor frame
      (``calibrated_sensor``, constant over the scene).
    * ``/tf``: ``map`` -> ``base_link`` at every record's own stamp (``ego_pose``; one per stamp).
    * per camera record: ``/<cam>/camera_info``, then ``/<cam>/image_raw/compressed`` (the file's
      JPEG/PNG bytes, ``format`` ``"jpeg"``/``"png"``) or ``/<cam>/image_raw`` (rgb8), then with
      ``depth`` ``/<cam>/depth`` (32FC1 from the nearest LiDAR record, NaN = no return).
    * per LiDAR record: ``/lidar_top/points`` (:data:`POINTCLOUD_DTYPE`).
    * per sample with boxes: ``/gt/boxes`` in ``map`` at the sample stamp (see
      :func:`_scene_box_markers`).
    * ``/clock`` at every distinct stamp, before the data of that stamp.

    Args:
        scene: :class:`~occ_audit_ros.nuscenes_io.SceneRecords`.
        image_format: one of :data:`IMAGE_FORMATS`.
        depth: add the LiDAR-projected depth image per camera record.
        boxes: sample token -> boxes (default ``scene.boxes``, the ``sample_annotation`` rows).

    Returns:
        ``(timestamp_ns, priority, topic, build)`` sorted by time then priority; ``build()`` returns
        the rclpy message (files are read only then).

    Raises:
        ValueError: unknown ``image_format``.
    """
    from rosgraph_msgs.msg import Clock
    from tf2_msgs.msg import TFMessage

    from occ_audit_ros import nuscenes_io as nio

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {image_format!r} is not one of {IMAGE_FORMATS}")
    us = 1000
    boxes = scene.boxes if boxes is None else boxes
    plan: list[tuple[int, int, str, Any]] = []
    t0 = scene.records[0].timestamp_us * us
    static = [cv.matrix_to_transform_stamped(T, t0, conventions.BASE_FRAME, conventions.sensor_frame(ch))
              for ch, T in scene.calibration.items()]
    plan.append((t0, 1, conventions.TF_STATIC_TOPIC, lambda: TFMessage(transforms=static)))
    lidar_cache: dict[str, np.ndarray] = {}

    def lidar_points(rec):
        if rec.token not in lidar_cache:
            lidar_cache.clear()  # records come in time order: keep the last sweep only
            lidar_cache[rec.token] = nio.read_lidar_points(rec)
        return lidar_cache[rec.token]

    def compressed(rec, stamp):
        from sensor_msgs.msg import CompressedImage
        from std_msgs.msg import Header

        data, fmt = nio.read_image_file(rec)
        return CompressedImage(header=Header(stamp=cv.ns_to_stamp(stamp), frame_id=rec.frame_id),
                               format=fmt, data=data)

    def raw(rec, stamp):
        image = nio.decode_image(rec)
        if (rec.width, rec.height) != (0, 0) and image.shape[:2] != (rec.height, rec.width):
            raise ValueError(f"camera image {rec.path} is {image.shape[1]}x{image.shape[0]}, the table "
                             f"says {rec.width}x{rec.height}")
        return cv.numpy_to_image(image, "rgb8", stamp, rec.frame_id)

    def depth_image(rec, stamp):
        lidar = nio.nearest_lidar(scene, rec.timestamp_us)
        d = nio.lidar_depth_for_record(rec, lidar, lidar_points(lidar)).astype("<f4", copy=False)
        return cv.numpy_to_image(d, "32FC1", stamp, rec.frame_id)

    def points(rec, stamp):
        return _pointcloud_msg(lidar_points(rec), stamp, rec.frame_id)

    seen_tf = set()
    for rec in scene.records:
        stamp = rec.timestamp_us * us
        if stamp not in seen_tf:
            seen_tf.add(stamp)
            tf = cv.matrix_to_transform_stamped(rec.T_map_base, stamp, conventions.MAP_FRAME, conventions.BASE_FRAME)
            plan.append((stamp, 2, conventions.TF_TOPIC, lambda tf=tf: TFMessage(transforms=[tf])))
        if rec.is_camera:
            if not rec.width or not rec.height:
                w, h = _image_size(rec)
                rec.width, rec.height = w, h
            plan.append((stamp, 3, conventions.camera_info_topic(rec.channel),
                         lambda r=rec, s=stamp: cv.camera_info_from_K(r.K, r.width, r.height, s, r.frame_id)))
            if image_format == "compressed":
                plan.append((stamp, 4, conventions.compressed_image_topic(rec.channel),
                             lambda r=rec, s=stamp: compressed(r, s)))
            else:
                plan.append((stamp, 4, conventions.image_topic(rec.channel), lambda r=rec, s=stamp: raw(r, s)))
            if depth:
                plan.append((stamp, 5, conventions.depth_topic(rec.channel),
                             lambda r=rec, s=stamp: depth_image(r, s)))
        else:
            plan.append((stamp, 4, conventions.LIDAR_TOPIC, lambda r=rec, s=stamp: points(r, s)))
    for token, ts in scene.samples:
        if boxes.get(token):
            stamp = ts * us
            plan.append((stamp, 6, conventions.GT_BOXES_TOPIC,
                         lambda b=boxes[token], s=stamp: _scene_box_markers(b, s)))
    for stamp in sorted({item[0] for item in plan}):
        plan.append((stamp, 0, conventions.CLOCK_TOPIC, lambda s=stamp: Clock(clock=cv.ns_to_stamp(s))))
    plan.sort(key=lambda item: (item[0], item[1]))  # stable: ties keep the record order
    return plan


def _image_size(rec) -> tuple[int, int]:
    """(width, height) of a camera record's file from its header (Pillow, no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(rec.path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"camera image {rec.path} does not open: {exc}") from exc


def scene_messages(plan) -> Any:
    """Build the messages of a :func:`scene_message_plan` one at a time (an iterator of
    :class:`BagMessage`); each message is built once, when it is written."""
    for stamp, _, topic, build in plan:
        msg = build()
        yield BagMessage(topic, _ros_type_name(msg), int(stamp), msg)


def write_scene_bag(scene, output_dir, *, image_format: str = "compressed", depth: bool = False,
                    boxes: dict | None = None, overwrite: bool = False, compress: bool = True,
                    progress: bool = False) -> Path:
    """Write a whole scene (see :func:`scene_message_plan`) as a rosbag2 (MCAP) directory.

    The bag is written into a hidden staging directory beside ``output_dir`` and renamed into
    place only when complete; on any error nothing is left at ``output_dir``.

    Args:
        scene: :class:`~occ_audit_ros.nuscenes_io.SceneRecords` (keyframes, or with sweeps).
        output_dir: bag directory to create.
        image_format: ``"compressed"`` (JPEG passthrough) or ``"raw"`` (rgb8).
        depth: add ``/<cam>/depth`` per camera record.
        boxes: sample token -> boxes; default the scene's ``sample_annotation`` boxes.
        overwrite: replace an existing bag directory.
        compress: zstd-compress MCAP chunks.
        progress: tqdm bar on stderr.

    Returns:
        The absolute bag directory.

    Raises:
        FileExistsError: as :func:`write_keyframe_bag`.
        FileNotFoundError: an image or LiDAR file vanished while writing.
        ValueError: a file that does not decode, an unknown ``image_format``.
    """
    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    plan = scene_message_plan(scene, image_format=image_format, depth=depth, boxes=boxes)
    custom = {"occ_audit_ros.scene": scene.name, "occ_audit_ros.nuscenes_version": scene.version,
              "occ_audit_ros.image_format": image_format}
    return _write_bag(output_dir, scene_messages(plan), custom, overwrite=overwrite, compress=compress,
                      total=len(plan), progress=progress, desc=scene.name)


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
    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    messages = keyframe_messages(keyframe)
    return _write_bag(output_dir, messages, {"occ_audit_ros.sample_token": keyframe.sample_token},
                      overwrite=overwrite, compress=compress)


def _write_bag(output_dir: Path, messages, custom_data: dict[str, str], *, overwrite: bool,
               compress: bool, total: int | None = None, progress: bool = False,
               desc: str = "") -> Path:
    """Serialise ``messages`` (BagMessage, in write order; any iterable) into a staged bag and
    rename it into place; nothing is left under ``output_dir`` when anything fails."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    typestore = get_kilted_typestore()
    qos = _qos_profiles()

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Staging next to the target (same filesystem, so the final rename is atomic); the bag inside
    # already has the final name because rosbags names the .mcap file after its directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp",
                                    dir=output_dir.parent))
    bar = None
    try:
        bag_path = staging / output_dir.name
        writer = Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compress:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        for key, value in custom_data.items():
            writer.set_custom_data(key, value)
        writer.set_custom_data("occ_audit_ros.source", "nuScenes (CC BY-NC-SA 4.0)")
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="msg", desc=desc or output_dir.name, file=sys.stderr)
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
                # CDR of the rclpy message; the connection's msgdef comes from the typestore.
                data = serialize_message(m.msg)
                writer.write(connections[m.topic], m.timestamp_ns, data)
                if bar is not None:
                    bar.update(1)
        if output_dir.exists() or output_dir.is_symlink():
            _check_output(output_dir, overwrite)  # re-check: it may have appeared meanwhile
            # Move the old bag aside (into staging, deleted below) then rename the new one in.
            # Two renames, not one atomic swap: POSIX has no portable directory exchange.
            output_dir.rename(staging / ".previous")
        bag_path.rename(output_dir)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _bag_summary(bag_dir: Path) -> tuple[list[tuple[str, str, int]], int]:
    """(topic, type, count) rows read back from the bag, and its size in bytes."""
    from rosbags.rosbag2 import Reader

    with Reader(bag_dir) as reader:
        rows = sorted((c.topic, c.msgtype, c.msgcount) for c in reader.connections)
    size = sum(p.stat().st_size for p in bag_dir.rglob("*") if p.is_file())
    return rows, size


def _print_summary(bag_dir: Path, title: str, seconds: float) -> None:
    rows, size = _bag_summary(bag_dir)
    print(f"wrote {bag_dir} ({title})")
    width = max(len(topic) for topic, _, _ in rows)
    for topic, msgtype, count in rows:
        print(f"  {topic:<{width}}  {count:5d}  {msgtype}")
    print(f"{sum(c for _, _, c in rows)} messages, {size / 1e6:.1f} MB, {seconds:.1f} s", flush=True)


#: Tables a conversion cannot do without (an empty one is an error), and the references checked
#: between tables: (table, field, referenced table).
_REQUIRED_TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor")
_TABLE_REFERENCES = (("sample", "scene_token", "scene"), ("sample_data", "sample_token", "sample"),
                     ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
                     ("sample_data", "ego_pose_token", "ego_pose"), ("calibrated_sensor", "sensor_token", "sensor"))


def diagnose_tables(dataroot: Path, version: str | None) -> str | None:
    """After a failed load: the first broken nuScenes table of ``dataroot``, in one line naming its file.

    Reads every table JSON of the version folder and reports the first that is not valid JSON (with
    line and column), is not a list of objects with a ``token``, is empty although the conversion
    needs it, or references a token missing from another table. Run only on the error path (it reads
    every table a second time).

    Returns:
        The message, or None when the tables look intact (the failure lies elsewhere).
    """
    import json

    from occ_audit_ros import nuscenes_io as nio

    try:
        table_dir = Path(dataroot) / nio.resolve_version(Path(dataroot), version)
    except (FileNotFoundError, ValueError):
        return None
    tokens: dict[str, set] = {}
    rows: dict[str, list] = {}
    for table in nio.NUSCENES_TABLES:
        f = table_dir / f"{table}.json"
        if not f.is_file():
            if table in _REQUIRED_TABLES:
                return f"nuScenes table {f} not found"
            continue
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            return f"nuScenes table {f}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        except (OSError, UnicodeDecodeError) as err:
            return f"nuScenes table {f}: cannot read: {err}"
        if not isinstance(data, list) or not all(isinstance(r, dict) and "token" in r for r in data):
            return f"nuScenes table {f}: expected a JSON list of records with a 'token', got {type(data).__name__}"
        if not data and table in _REQUIRED_TABLES:
            return f"nuScenes table {f} is empty"
        rows[table] = data
        tokens[table] = {r["token"] for r in data}
    for table, field, target in _TABLE_REFERENCES:
        for r in rows.get(table, ()):
            if r.get(field) not in tokens.get(target, ()):
                return (f"nuScenes table {table_dir / (table + '.json')}: record {r['token']} has {field} "
                        f"{r.get(field)!r}, not in {table_dir / (target + '.json')}")
    return None


def main(argv=None) -> int:
    """Command-line entry point.

    Without ``--scene`` / ``--all`` one keyframe is converted (``--sample-token``, boxes from the
    MMDetection3D pickle); with them whole scenes (see :func:`scene_message_plan`): ``--output`` is
    the bag for a single ``--scene``, else a folder that receives one bag per scene.

    Returns:
        0 on success, 1 on a data or output error (message on stderr), 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="nuscenes_to_bag",
        description="Convert nuScenes scenes (or one keyframe) to ROS 2 MCAP bags.",
    )
    parser.add_argument("--dataroot", type=Path, default=paths.nuscenes_keyframe_dir(),
                        help="nuScenes root with <version>/, samples/ (and sweeps/) (default: embedded)")
    parser.add_argument("--version", default=None,
                        help="table folder: v1.0-mini, v1.0-trainval or v1.0-test (default: the only one "
                             "under --dataroot)")
    parser.add_argument("--output", type=Path, required=True,
                        help="bag directory to create (with --all or several --scene: a folder of bags)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--scene", action="append", default=None, metavar="NAME",
                       help="convert this whole scene (repeatable), e.g. scene-0061")
    which.add_argument("--all", action="store_true", help="convert every scene of the version")
    which.add_argument("--sample-token", default=None, help="keyframe mode: this sample (default: first)")
    parser.add_argument("--sweeps", action="store_true",
                        help="scenes: every camera (12 Hz) and LiDAR (20 Hz) sweep, not only keyframes")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="compressed",
                        help="scenes: JPEG passthrough as CompressedImage (default) or decoded rgb8 Image")
    parser.add_argument("--depth", action="store_true",
                        help="scenes: add /<cam>/depth (LiDAR projected into each image)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="MMDetection3D info v1.1 pickle with GT boxes (keyframe mode default: "
                             "embedded; scenes: instead of the sample_annotation table)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    parser.add_argument("--no-compression", action="store_true",
                        help="do not zstd-compress MCAP chunks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from occ_audit_ros import nuscenes_io as nio

    try:
        if not (args.scene or args.all):
            start = time.perf_counter()
            # Fail on an existing output before the (slower) loading.
            _check_output(args.output.absolute(), args.overwrite)
            annotations = args.annotations or paths.nuscenes_annotations_pkl()
            version = nio.resolve_version(args.dataroot, args.version or (
                nio.NUSCENES_VERSION if (args.dataroot / nio.NUSCENES_VERSION).is_dir() else None))
            keyframe = nio.load_keyframe(args.dataroot, annotations, sample_token=args.sample_token,
                                         version=version)
            bag_dir = write_keyframe_bag(
                keyframe, args.output, overwrite=args.overwrite, compress=not args.no_compression
            )
            _print_summary(bag_dir, f"sample {keyframe.sample_token}", time.perf_counter() - start)
            return 0

        nusc = nio.open_tables(args.dataroot, args.version)
        names = nio.scene_names(nusc) if args.all else list(dict.fromkeys(args.scene))
        single = len(names) == 1 and not args.all
        targets = {n: args.output if single else args.output / n for n in names}
        # Check every scene and output before writing anything.
        scenes = {}
        for name in names:
            _check_output(targets[name].absolute(), args.overwrite)
            scenes[name] = nio.load_scene(nusc, name, sweeps=args.sweeps)
        total_start = time.perf_counter()
        for name, scene in scenes.items():
            start = time.perf_counter()
            boxes = None
            if args.annotations is not None:
                boxes = nio.pickle_boxes_for_scene(args.annotations, scene)
            bag_dir = write_scene_bag(scene, targets[name], image_format=args.image_format, depth=args.depth,
                                      boxes=boxes, overwrite=args.overwrite, compress=not args.no_compression,
                                      progress=not args.no_progress)
            keys = sum(r.is_key_frame for r in scene.records)
            _print_summary(bag_dir, f"{name}: {len(scene.samples)} samples, {keys} keyframe and "
                           f"{len(scene.records) - keys} sweep records over {scene.duration_s:.1f} s",
                           time.perf_counter() - start)
        if len(scenes) > 1:
            print(f"{len(scenes)} scenes in {time.perf_counter() - total_start:.1f} s")
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # a broken table fails deep inside the devkit: name the file when one is to blame
        broken = None if isinstance(exc, FileExistsError) else diagnose_tables(args.dataroot, args.version)
        text = broken or (f"{exc.__class__.__name__}: {exc}" if isinstance(exc, (KeyError, TypeError, AttributeError,
                                                                                  IndexError)) else str(exc))
        print(f"{parser.prog}: error: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
