"""The main job: nuScenes data through the perception node, end to end.

1. nuScenes -> ROS 2 bag (mcap): by default the embedded keyframe (TF, 6 cameras, LiDAR depth, GT
   boxes); with ``--scene NAME`` a whole scene (``nuscenes_to_bag.write_scene_bag``: every keyframe,
   with ``--sweeps`` every 12 Hz camera sweep, JPEG passthrough, LiDAR depth per image); with
   ``--bag`` an existing converted scene bag;
2. real rclpy: the bag player replays it, the perception node runs, a recorder writes what the node
   publishes into an output bag;
3. the output bag is read back: a BEV picture of the semantic occupancy with the GT boxes (an
   animated GIF over the scene when the node published more than one grid), and the per-camera
   relevancy overlays of the last frame;
4. a summary: frames received / processed / dropped, voxels per label, latency per stage (mean over
   the processed frames), where the files are.

    occ_audit_demo [--clip-model random|DIR|HUB_ID] [--model relevancy|semabs|ago] [--output output/demo]
        [--rate 1.0] [--params-file BASE.yaml [--params-file MORE.yaml ...]]
        [--dataroot D --version V --scene NAME [--sweeps] [--image-format compressed|raw] | --bag BAG]
        [--cameras CAM_FRONT,CAM_BACK]
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from occ_audit_ros import conventions, paths
from occ_audit_ros.clip_model import ClipWeightsUnavailable
from occ_audit_ros.params import MODEL_PARAMS, params_files

OUTPUT_TOPICS = {
    "/" + conventions.SEMANTIC_VOXELS_TOPIC: "occ_audit_ros/msg/SemanticVoxelGrid",
    "/" + conventions.VOXEL_MARKERS_TOPIC: "visualization_msgs/msg/MarkerArray",
    "/" + conventions.SEMANTIC_POINTS_TOPIC: "sensor_msgs/msg/PointCloud2",
}


def build_arg_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occ_audit_demo``."""
    p = argparse.ArgumentParser(prog="occ_audit_demo", description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="random",
                   help="CLIP directory or hub id; default 'random' (ViT-B/32 layout, random weights: "
                        "the pipeline runs for real but its labels are meaningless)")
    p.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda)")
    p.add_argument("--output", type=Path, default=Path("output/demo"), help="output directory")
    p.add_argument("--params-file", type=Path, action="append", default=None,
                   help="perception node YAML, repeatable: loaded in order, later files win "
                        "(default config/perception.yaml)")
    p.add_argument("--model", default=None, choices=tuple(MODEL_PARAMS),
                   help="add config/models/<model>.yaml after the parameter files")
    p.add_argument("--dataroot", type=Path, default=paths.nuscenes_keyframe_dir(),
                   help="nuScenes root (holds <version>/, samples/, sweeps/); default the embedded keyframe")
    p.add_argument("--version", default=None,
                   help="with --scene: table folder (v1.0-mini, v1.0-trainval, v1.0-test; default the only one)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scene", default=None, metavar="NAME",
                       help="convert this whole scene of --dataroot and replay it (instead of the embedded keyframe)")
    which.add_argument("--bag", type=Path, default=None,
                       help="replay this scene bag written by nuscenes_to_bag --depth (no conversion)")
    p.add_argument("--sweeps", action="store_true",
                   help="with --scene: every 12 Hz camera sweep, not only the 2 Hz keyframes")
    p.add_argument("--image-format", choices=("compressed", "raw"), default="compressed",
                   help="with --scene: images as CompressedImage (JPEG passthrough, default) or rgb8 Image")
    p.add_argument("--cameras", default=None, metavar="CAM,CAM",
                   help="comma-separated cameras the node uses (default: the parameter files' cameras)")
    p.add_argument("--annotations", type=Path, default=paths.nuscenes_annotations_pkl(),
                   help="MMDetection3D info pickle with the GT boxes")
    p.add_argument("--rate", type=float, default=1.0, help="replay rate factor (0 = as fast as possible)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the node's output")
    p.add_argument("--hidden-query", default=None, metavar="TARGET;RELATION;REFERENCE",
                   help="after the frame, send this hidden-object query (needs a model that answers them: "
                        "--model semabs) and draw its answer")
    return p


#: Overlay of a replay: reliable camera inputs (best-effort full-size images are lost between processes).
REPLAY_PARAMS_FILE = "config/replay.yaml"


def check_args(args: argparse.Namespace) -> None:
    """Check every argument of the demo before anything is converted, loaded or started.

    Checks: ``--rate`` >= 0 and finite, ``--timeout`` > 0, ``--bag`` a rosbag2 directory (with
    metadata.yaml), ``--dataroot`` an existing directory (when no ``--bag``), ``--cameras`` known
    nuScenes channels without repeats, ``--hidden-query`` of three non-empty parts, and every
    parameter file (base, replay overlay, model overlay, extra files: merged in load order) readable
    YAML with a ``perception_node`` (or ``/**``) section whose parameters validate
    (:func:`occ_audit_ros.params.validate`).

    Raises:
        ValueError: the first bad argument, in one line naming the option (and the file).
        FileNotFoundError: a missing bag, data root or parameter file.
    """
    import yaml

    from occ_audit_ros.launch_static import LaunchParseError, flatten_params_file
    from occ_audit_ros.params import QOS_OVERRIDE_PREFIX, validate

    if not (math.isfinite(args.rate) and args.rate >= 0):
        raise ValueError(f"--rate must be >= 0 (0 = as fast as possible), got {args.rate}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.bag is not None:
        if not (args.bag / "metadata.yaml").is_file():
            raise FileNotFoundError(f"--bag {args.bag}: not a rosbag2 directory (no metadata.yaml)")
    elif not Path(args.dataroot).is_dir():
        raise FileNotFoundError(f"--dataroot {args.dataroot}: no such directory")
    cams = None
    if args.cameras is not None:
        cams = [c.strip() for c in args.cameras.split(",") if c.strip()]
        bad = [c for c in cams if c not in conventions.CAMERA_CHANNELS]
        if not cams or bad or len(set(cams)) != len(cams):
            raise ValueError(f"--cameras {args.cameras!r}: expected distinct comma-separated channels of "
                             f"{list(conventions.CAMERA_CHANNELS)}" + (f"; unknown {bad}" if bad else ""))
    if args.hidden_query is not None:
        parts = [x.strip() for x in args.hidden_query.split(";")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"--hidden-query {args.hidden_query!r}: expected TARGET;RELATION;REFERENCE")
    base, *more = args.params_file or [None]
    files = params_files(None, base) + [paths.resource(REPLAY_PARAMS_FILE)] + [Path(f) for f in more]
    if args.model:
        files += params_files(args.model)[1:]
    values = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"parameter file {f} not found")
        try:
            values.update(flatten_params_file(f, "perception_node"))
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise ValueError(f"parameter file {f}: not valid YAML{at}: "
                             f"{getattr(err, 'problem', None) or err}") from None
        except (LaunchParseError, AttributeError, TypeError) as err:
            raise ValueError(f"parameter file {f}: not a ROS 2 parameter file: {err}") from None
    if cams is not None:
        values["cameras"] = cams
    try:
        validate({k: v for k, v in values.items() if not k.startswith(QOS_OVERRIDE_PREFIX)})
    except ValueError as err:
        raise ValueError(f"parameter files {[str(f) for f in files]}: {err}") from None


def _remove_previous(path: Path) -> None:
    """Delete a bag directory this demo wrote before (only if it looks like a bag)."""
    for p in (path, path.with_name(path.name + ".partial")):
        if p.is_dir() and (not any(p.iterdir()) or (p / "metadata.yaml").exists() or p.name.endswith(".partial")):
            shutil.rmtree(p)
        elif p.exists():
            raise FileExistsError(f"{p} exists and is not a bag written by this demo; move it away")


def read_voxel_grids(bag: Path):
    """All SemanticVoxelGrid messages of a bag, as :class:`~occ_audit_ros.voxel_grid.SemanticVoxels`."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from occ_audit_ros.msg import SemanticVoxelGrid

    from occ_audit_ros.nodes.conversions import msg_to_semantic_voxels

    out = []
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/" + conventions.SEMANTIC_VOXELS_TOPIC]
        for _, _, raw in reader.messages(connections=conns):
            out.append(msg_to_semantic_voxels(deserialize_message(bytes(raw), SemanticVoxelGrid)))
    return out


def _send_hidden_query(node, spec: str, timeout_s: float):
    """Publish one HiddenObjectQuery ``TARGET;RELATION;REFERENCE`` from a client node and wait for the
    perception node to answer it; returns its :class:`~occ_audit_ros.backends.HiddenObjectAnswer`.

    Raises:
        ValueError: when ``spec`` does not have three ';'-separated parts.
        TimeoutError: when no answer comes within ``timeout_s``.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from occ_audit_ros.msg import HiddenObjectQuery

    parts = [p.strip() for p in spec.split(";")]
    if len(parts) != 3:
        raise ValueError(f"--hidden-query must be TARGET;RELATION;REFERENCE, got {spec!r}")
    before = node.counters["hidden_answered"] + node.counters["hidden_refused"]
    pub = node.create_publisher(HiddenObjectQuery, "/" + conventions.HIDDEN_QUERY_TOPIC,
                                QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + timeout_s
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.publish(HiddenObjectQuery(target=parts[0], relation=parts[1], reference=parts[2]))
    while node.counters["hidden_answered"] + node.counters["hidden_refused"] <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer to the hidden-object query within {timeout_s:.0f} s")
        time.sleep(0.05)
    return node.last_answer


def _bag_topics(bag: Path) -> set[str]:
    """Topics of a bag that hold at least one message."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic for c in reader.connections if c.msgcount > 0}


def bag_image_transport(bag: Path) -> str:
    """``input.image_transport`` that fits a bag: ``"compressed"`` when it holds any
    ``/<cam>/image_raw/compressed`` topic, else ``"raw"``."""
    return "compressed" if any(t.endswith("/image_raw/compressed") for t in _bag_topics(bag)) else "raw"


def check_bag_cameras(bag: Path, cameras: list[str], transport: str) -> None:
    """Check that ``bag`` holds image (of ``transport``), ``camera_info`` and depth for every camera.

    Raises:
        ValueError: naming the first missing topic (the node needs all three per camera; convert with
            ``nuscenes_to_bag --depth``, or pick ``--cameras``).
    """
    topics = _bag_topics(bag)
    image_topic = conventions.compressed_image_topic if transport == "compressed" else conventions.image_topic
    for cam in cameras:
        for need in (image_topic(cam), conventions.camera_info_topic(cam), conventions.depth_topic(cam)):
            if need not in topics:
                raise ValueError(f"bag {bag} has no {need} (the node needs image, camera_info and depth per "
                                 "camera: convert with nuscenes_to_bag --depth, or pick --cameras)")


class _MapBox:
    """A GT box of a scene bag (``/gt/boxes`` CUBE marker in ``map``) moved into ``base_link`` for
    :func:`~occ_audit_ros.viz.save_bev_png`: ``center`` (3,) [m], ``size`` (3,) (length, width,
    height) [m], ``yaw`` [rad] about +z of ``base_link``, ``category``."""

    def __init__(self, T_base_box: np.ndarray, size: np.ndarray, category: str) -> None:
        self.center = T_base_box[:3, 3]
        self.size = size
        self.yaw = math.atan2(T_base_box[1, 0], T_base_box[0, 0])
        self.category = category


def scene_boxes_for(bag: Path, stamps_ns: list[int]) -> list[list[_MapBox]]:
    """GT boxes of a scene bag in ``base_link`` at each of ``stamps_ns``.

    Per stamp: the ``/gt/boxes`` MarkerArray (``map``) nearest in time, moved into ``base_link`` with
    the ``/tf`` ``map`` -> ``base_link`` transform nearest in time (the bag has one per sensor stamp).
    Empty lists when the bag has no boxes (``v1.0-test``) or no ``/tf``.

    Args:
        bag: a bag written by ``nuscenes_to_bag`` for a scene.
        stamps_ns: grid stamps [ns since the epoch].

    Returns:
        One list of boxes (``center``, ``size``, ``yaw``, ``category``) per stamp.
    """
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from visualization_msgs.msg import Marker, MarkerArray

    from occ_audit_ros.geometry import pose_xyzw_to_matrix
    from occ_audit_ros.nodes.bag_player import resolve_message_type
    from occ_audit_ros.nodes.conversions import stamp_to_ns, transform_to_matrix

    poses: dict[int, np.ndarray] = {}
    box_sets: dict[int, list] = {}
    tf_type = resolve_message_type("tf2_msgs/msg/TFMessage")
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in (conventions.TF_TOPIC, conventions.GT_BOXES_TOPIC)]
        for conn, stamp, raw in reader.messages(connections=conns):
            if conn.topic == conventions.TF_TOPIC:
                for tf in deserialize_message(bytes(raw), tf_type).transforms:
                    if (tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")) == (
                            conventions.MAP_FRAME, conventions.BASE_FRAME):
                        poses[stamp_to_ns(tf.header.stamp)] = transform_to_matrix(tf.transform)
            else:
                cubes = []
                for m in deserialize_message(bytes(raw), MarkerArray).markers:
                    if m.type != Marker.CUBE or m.action != Marker.ADD:
                        continue
                    p, q = m.pose.position, m.pose.orientation
                    T = pose_xyzw_to_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), norm_tolerance=1e-3)
                    cubes.append((T, np.array([m.scale.x, m.scale.y, m.scale.z]),
                                  (m.text.split() or [m.ns])[0]))
                box_sets[stamp] = cubes
    out = []
    pose_stamps = np.array(sorted(poses), dtype=np.int64)
    box_stamps = np.array(sorted(box_sets), dtype=np.int64)
    for t in stamps_ns:
        if not len(pose_stamps) or not len(box_stamps):
            out.append([])
            continue
        T_map_base = poses[int(pose_stamps[np.argmin(np.abs(pose_stamps - t))])]
        T_base_map = np.linalg.inv(T_map_base)
        cubes = box_sets[int(box_stamps[np.argmin(np.abs(box_stamps - t))])]
        out.append([_MapBox(T_base_map @ T, size, cat) for T, size, cat in cubes])
    return out


def camera_images_at(bag: Path, cameras, stamp_ns: int) -> dict:
    """Camera -> (H, W, 3) uint8 RGB of the image (raw or compressed) nearest to ``stamp_ns`` in ``bag``
    (for the relevancy overlays of a scene's last frame)."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CompressedImage, Image

    from occ_audit_ros.nodes.conversions import rgb_from_compressed_msg, rgb_from_image_msg

    best: dict[str, tuple[int, bytes, bool]] = {}
    topics = {conventions.image_topic(c): (c, False) for c in cameras}
    topics.update({conventions.compressed_image_topic(c): (c, True) for c in cameras})
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, stamp, raw in reader.messages(connections=conns):
            cam, compressed = topics[conn.topic]
            if cam not in best or abs(stamp - stamp_ns) < abs(best[cam][0] - stamp_ns):
                best[cam] = (stamp, bytes(raw), compressed)
    return {cam: (rgb_from_compressed_msg(deserialize_message(raw, CompressedImage)) if compressed
                  else rgb_from_image_msg(deserialize_message(raw, Image)))
            for cam, (_, raw, compressed) in best.items()}


def save_bev_animation(grids, path: Path, boxes_per_frame=None, title: str = "", frame_dpi: float = 60.0) -> Path:
    """Animated GIF (Pillow) of the BEV picture (:func:`~occ_audit_ros.viz.save_bev_png`) of every grid.

    Each frame is shown for its stamp difference to the next grid (bag time, at least 50 ms; the
    last one as long as the one before), so the animation plays at the scene's own speed. Written
    atomically.

    Args:
        grids: :class:`~occ_audit_ros.voxel_grid.SemanticVoxels` in time order (at least one).
        path: the ``.gif`` to write.
        boxes_per_frame: optional list (one per grid) of boxes in the grid's frame.
        title: title prefix of every frame (frame number and scene time are appended).
        frame_dpi: resolution of the frames (the figure is 10 x 8 inch).

    Returns:
        The written path.

    Raises:
        ValueError: when ``grids`` is empty.
    """
    import io
    import tempfile

    from PIL import Image

    from occ_audit_ros.atomic import atomic_path
    from occ_audit_ros.viz import save_bev_png

    if not grids:
        raise ValueError("no grid to animate")
    t0 = grids[0].stamp_ns
    frames = []
    with tempfile.TemporaryDirectory(prefix=".bev_frames_", dir=path.parent) as tmp:
        for i, voxels in enumerate(grids):
            png = save_bev_png(voxels, Path(tmp) / "frame.png",
                               boxes=boxes_per_frame[i] if boxes_per_frame else None,
                               title=f"{title} frame {i + 1}/{len(grids)}, t = {(voxels.stamp_ns - t0) / 1e9:.2f} s",
                               dpi=frame_dpi)
            with Image.open(io.BytesIO(png.read_bytes())) as im:
                frames.append(im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT))
    gaps = [max(50, round((b.stamp_ns - a.stamp_ns) / 1e6)) for a, b in zip(grids, grids[1:])]
    durations = gaps + [gaps[-1] if gaps else 500]
    with atomic_path(path, suffix=".gif") as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def _wait_until_drained(node, settle_s: float, timeout_s: float) -> None:
    """After playback: wait until the node's counters stop changing for ``settle_s`` (the synchroniser
    flushes its last set after ``sync.timeout_s``; the worker finishes its queue), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        with node._cv:
            now = (dict(node.counters), node._pending is None)
        if now != last:
            last, since = now, time.monotonic()
        elif now[1] and time.monotonic() - since >= settle_s:
            return
        time.sleep(0.05)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns a process exit code (0 ok, 1 data/model/output error)."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from occ_audit_ros.nodes.bag_player import BagPlayer
    from occ_audit_ros.nodes.bag_recorder import BagRecorder
    from occ_audit_ros.nodes.perception_node import PerceptionNode
    from occ_audit_ros.nuscenes_io import load_keyframe
    from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag
    from occ_audit_ros.viz import save_bev_png, save_relevancy_overlay_png

    t_start = time.perf_counter()
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base, *more = args.params_file or [None]
    # the replay overlay (reliable camera inputs, config/replay.yaml) after the base; the caller's own
    # files come after it and win
    files = params_files(None, base) + [paths.resource(REPLAY_PARAMS_FILE)] + [Path(f) for f in more]
    if args.model:
        files += params_files(args.model)[1:]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"parameter file {f} not found")

    scene_mode = args.scene is not None or args.bag is not None
    keyframe = None
    scene_name = None
    if args.bag is not None:
        input_bag = args.bag.resolve()
        if not (input_bag / "metadata.yaml").is_file():
            raise FileNotFoundError(f"--bag {input_bag}: not a rosbag2 directory (no metadata.yaml)")
        scene_name = input_bag.name
        print(f"[1/4] taking the converted bag {input_bag}", flush=True)
    elif args.scene is not None:
        from occ_audit_ros import nuscenes_io as nio
        from occ_audit_ros.tools.nuscenes_to_bag import write_scene_bag

        scene_name = args.scene
        print(f"[1/4] nuScenes scene {args.scene} of {args.dataroot} -> ROS 2 bag "
              f"({'sweeps' if args.sweeps else 'keyframes'}, {args.image_format} images, LiDAR depth)", flush=True)
        t_conv = time.perf_counter()
        scene = nio.load_scene(nio.open_tables(args.dataroot, args.version), args.scene, sweeps=args.sweeps)
        input_bag = write_scene_bag(scene, out / "input_bag", image_format=args.image_format, depth=True,
                                    overwrite=True, progress=sys.stderr.isatty())
        print(f"      {len(scene.samples)} samples, {len(scene.records)} sensor records over "
              f"{scene.duration_s:.1f} s converted in {time.perf_counter() - t_conv:.1f} s", flush=True)
    else:
        print(f"[1/4] nuScenes keyframe {args.dataroot} -> ROS 2 bag", flush=True)
        keyframe = load_keyframe(args.dataroot, args.annotations)
        input_bag = write_keyframe_bag(keyframe, out / "input_bag", overwrite=True)
    output_bag = out / "output_bag"
    _remove_previous(output_bag)
    extra = []
    if args.cameras:
        cams = [c.strip() for c in args.cameras.split(",") if c.strip()]
        extra += ["-p", "cameras:=[" + ",".join(cams) + "]"]
    transport = None
    if scene_mode:
        transport = bag_image_transport(input_bag)
        extra += ["-p", f"input.image_transport:={transport}"]

    print(f"[2/4] replaying {input_bag} through perception_node over rclpy (clip_model={args.clip_model})", flush=True)
    rclpy.init(args=["--ros-args"])
    nodes = []
    try:
        cli = ["--ros-args"] + [a for f in files for a in ("--params-file", str(f))]
        node = PerceptionNode(cli_args=cli + ["-p", f"clip_model:={args.clip_model}", "-p", f"device:={args.device}"]
                              + extra)
        nodes.append(node)
        with node._cv:  # every frame's stage latencies, for the means of the summary
            node.latency = {k: collections.deque() for k in node.stages}
        record = dict(OUTPUT_TOPICS)
        if args.hidden_query:
            record["/" + conventions.HIDDEN_RESULT_TOPIC] = "occ_audit_ros/msg/HiddenObjectResult"
        recorder = BagRecorder(output_bag, topics=[f"{t}:{ty}" for t, ty in record.items()],
                               msg_dirs=[str(paths.resource("msg"))])
        nodes.append(recorder)
        image_topic = conventions.compressed_image_topic if transport == "compressed" else conventions.image_topic
        if scene_mode:
            check_bag_cameras(input_bag, node.cameras, transport)
        cam_topics = [image_topic(c) for c in node.cameras]
        play_topics = []
        if scene_mode:  # only what the node reads (not LiDAR, GT boxes or other cameras)
            play_topics = [conventions.TF_TOPIC, conventions.TF_STATIC_TOPIC, conventions.CLOCK_TOPIC] + [
                t for c in node.cameras for t in (image_topic(c), conventions.camera_info_topic(c),
                                                  conventions.depth_topic(c))]
        if scene_mode:  # every stream of a set matched before the first message (best-effort inputs)
            cam_topics = play_topics[3:]
        player = BagPlayer(input_bag, rate=args.rate, wait_for_subscribers=cam_topics,
                           wait_for_subscribers_timeout=30.0, topics=play_topics, delay=0.5 if scene_mode else 0.0)
        nodes.append(player)
        executor = MultiThreadedExecutor(num_threads=4)
        for n in nodes:
            executor.add_node(n)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        recorder.wait_until_subscribed(list(record), timeout_s=30.0)
        playback = player.play()
        if not node.wait_for_frames(1, args.timeout):
            print(f"error: the perception node published nothing within {args.timeout:.0f} s "
                  f"(counters {node.counters})", file=sys.stderr)
            return 1
        if scene_mode:
            _wait_until_drained(node, settle_s=max(2.0, 2 * node.values["sync.timeout_s"] + 1.5),
                                timeout_s=args.timeout)
        answer = _send_hidden_query(node, args.hidden_query, args.timeout) if args.hidden_query else None
        grid_topic = "/" + conventions.SEMANTIC_VOXELS_TOPIC
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and (min(recorder.counts.get(t, 0) for t in record) < 1
                                               or recorder.counts.get(grid_topic, 0) < node.counters["processed"]):
            time.sleep(0.05)
        counts = recorder.counts
        recorder.close()
        with node._cv:
            result = node.last_result
            counters = dict(node.counters)
            latency = {k: list(v) for k, v in node.latency.items()}
        image_msgs = sum(n for t, n in node.stream_counts.items() if t.endswith(("image_raw", "compressed")))
    finally:
        for n in reversed(nodes):
            n.destroy_node()
        rclpy.try_shutdown()

    print(f"[3/4] reading {output_bag} back and drawing", flush=True)
    grids = read_voxel_grids(output_bag)
    if not grids:
        print(f"error: {output_bag} holds no {conventions.SEMANTIC_VOXELS_TOPIC} message", file=sys.stderr)
        return 1
    voxels = grids[-1]
    label = f"{scene_name}" if scene_mode else "scene-0061 keyframe"
    title = f"{label}, {voxels.model}" + (" (RANDOM WEIGHTS)" if voxels.random_weights else "")
    animation = None
    if scene_mode:
        boxes = scene_boxes_for(input_bag, [g.stamp_ns for g in grids])
        bev = save_bev_png(voxels, out / "bev_semantic_occupancy.png", boxes=boxes[-1], title=title + ", last frame")
        if len(grids) > 1:
            animation = save_bev_animation(grids, out / "bev_semantic_occupancy.gif", boxes, title=title)
        images = camera_images_at(input_bag, list(result.relevancy), voxels.stamp_ns)
    else:
        bev = save_bev_png(voxels, out / "bev_semantic_occupancy.png", boxes=keyframe.boxes, title=title)
        images = {cam: keyframe.cameras[cam].image for cam in keyframe.cameras}
    for stale in ((out / "bev_semantic_occupancy.gif",) if animation is None else ()):
        stale.unlink(missing_ok=True)  # an animation of an earlier run would not match this one
    hidden_png = None
    if answer is not None and not answer.error:
        from occ_audit_ros.viz import save_hidden_object_png

        cam = getattr(node.backend, "camera", None)
        hidden_png = save_hidden_object_png(voxels, answer, out / "hidden_object.png",
                                            image=images.get(cam) if cam else None,
                                            title=f"{label}: '{answer.target} {answer.relation} "
                                                  f"{answer.reference}', {voxels.model}")
    overlays = []
    for cam, maps in result.relevancy.items():
        if cam in images:
            overlays.append(save_relevancy_overlay_png(images[cam], maps, voxels.labels, out / f"relevancy_{cam}.png",
                                                       random_weights=voxels.random_weights))

    print("[4/4] summary", flush=True)
    lines = []
    if voxels.random_weights:
        lines.append(f"!! RANDOM-WEIGHT OUTPUT: clip_model={args.clip_model} (model {voxels.model}) has random weights; "
                     "the labels below are NOT a real perception result. Pass --clip-model DIR with real CLIP "
                     "ViT-B/32 weights.")
    lines.append(f"input bag:  {input_bag} ({playback.messages_published} messages replayed in {playback.wall_duration_s:.2f} s)")
    lines.append(f"output bag: {output_bag} (" + ", ".join(f"{t}: {counts.get(t, 0)}" for t in record) + ")")
    lines.append(f"node counters: {counters}")
    lines.append(f"frames: {image_msgs} camera images received in {counters['received_sets']} synchronised sets "
                 f"({counters['partial_sets']} without some camera); {counters['processed']} processed, "
                 f"{counters['dropped']} dropped (worker busy), {counters['skipped']} skipped; "
                 f"{len(grids)} grids in the output bag")
    lines.append(f"semantic voxels: {len(voxels.indices)} occupied of {voxels.spec.num_voxels} "
                 f"(grid {voxels.spec.dims} x {voxels.spec.voxel_size} m in {voxels.frame_id})")
    for label, n in voxels.counts_per_label().items():
        lines.append(f"  {label:<14} {n:7d}")
    lines.append(f"latency per stage (s, mean over {counters['processed']} frames, {len(result.points_per_camera)} "
                 "cameras): " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in latency.items() if v))
    lines.append(f"depth points per camera: {result.points_per_camera}")
    if answer is not None:
        lines.append(f"hidden-object query '{answer.target} {answer.relation} {answer.reference}': "
                     + (f"NOT ANSWERED: {answer.error}" if answer.error else
                        f"{len(answer.indices)} voxels with p >= {answer.min_probability}, max p = "
                        f"{float(answer.probabilities.max()) if len(answer.indices) else 0.0:.3f}; picture {hidden_png}"))
    lines.append(f"BEV picture: {bev}" + (f"; animation over {len(grids)} frames: {animation}" if animation else ""))
    lines.append("relevancy overlays: " + ", ".join(str(p) for p in overlays))
    lines.append(f"demo wall time: {time.perf_counter() - t_start:.1f} s")
    print("\n".join(lines), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``occ_audit_demo``: 0 done, 1 data/model/output error (a missing file included),
    2 a bad argument value (checked by :func:`check_args` before anything is loaded)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)  # every argument before a conversion or a model load
    except FileNotFoundError as err:  # missing data, bag or parameter file: a data error (1)
        print(f"occ_audit_demo: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))  # a bad value: one line, exit status 2
    try:
        return run(args)
    except ClipWeightsUnavailable as err:
        print(f"occ_audit_demo: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"occ_audit_demo: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
