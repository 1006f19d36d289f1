"""The main job: the embedded nuScenes keyframe through the perception node, end to end.

1. nuScenes keyframe (nuscenes-devkit) -> ROS 2 bag (mcap): TF, 6 cameras, LiDAR depth, GT boxes;
2. real rclpy: the bag player replays it, the perception node runs, a recorder writes what the node
   publishes into an output bag;
3. the output bag is read back: a BEV picture of the semantic occupancy with the GT boxes, and the
   per-camera relevancy overlays;
4. a summary: voxels per label, latency per stage, where the files are.

    occ_audit_demo [--clip-model random|DIR|HUB_ID] [--model relevancy|semabs|ago] [--output output/demo]
        [--rate 1.0] [--params-file BASE.yaml [--params-file MORE.yaml ...]]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

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
    p.add_argument("--dataroot", type=Path, default=paths.nuscenes_keyframe_dir(), help="nuScenes table root")
    p.add_argument("--annotations", type=Path, default=paths.nuscenes_annotations_pkl(),
                   help="MMDetection3D info pickle with the GT boxes")
    p.add_argument("--rate", type=float, default=1.0, help="replay rate factor")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the node's output")
    p.add_argument("--hidden-query", default=None, metavar="TARGET;RELATION;REFERENCE",
                   help="after the frame, send this hidden-object query (needs a model that answers them: "
                        "--model semabs) and draw its answer")
    return p


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
    files = params_files(None, base) + [Path(f) for f in more]
    if args.model:
        files += params_files(args.model)[1:]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"parameter file {f} not found")

    print(f"[1/4] nuScenes keyframe {args.dataroot} -> ROS 2 bag", flush=True)
    keyframe = load_keyframe(args.dataroot, args.annotations)
    input_bag = write_keyframe_bag(keyframe, out / "input_bag", overwrite=True)
    output_bag = out / "output_bag"
    _remove_previous(output_bag)

    print(f"[2/4] replaying {input_bag} through perception_node over rclpy (clip_model={args.clip_model})", flush=True)
    rclpy.init(args=["--ros-args"])
    nodes = []
    try:
        cli = ["--ros-args"] + [a for f in files for a in ("--params-file", str(f))]
        node = PerceptionNode(cli_args=cli + ["-p", f"clip_model:={args.clip_model}", "-p", f"device:={args.device}"])
        nodes.append(node)
        record = dict(OUTPUT_TOPICS)
        if args.hidden_query:
            record["/" + conventions.HIDDEN_RESULT_TOPIC] = "occ_audit_ros/msg/HiddenObjectResult"
        recorder = BagRecorder(output_bag, topics=[f"{t}:{ty}" for t, ty in record.items()],
                               msg_dirs=[str(paths.resource("msg"))])
        nodes.append(recorder)
        cam_topics = [conventions.image_topic(c) for c in node.cameras]
        player = BagPlayer(input_bag, rate=args.rate, wait_for_subscribers=cam_topics,
                           wait_for_subscribers_timeout=30.0)
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
        answer = _send_hidden_query(node, args.hidden_query, args.timeout) if args.hidden_query else None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and min(recorder.counts.get(t, 0) for t in record) < 1:
            time.sleep(0.05)
        counts = recorder.counts
        recorder.close()
        result = node.last_result
        counters = dict(node.counters)
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
    title = f"scene-0061 keyframe, {voxels.model}" + (" (RANDOM WEIGHTS)" if voxels.random_weights else "")
    bev = save_bev_png(voxels, out / "bev_semantic_occupancy.png", boxes=keyframe.boxes, title=title)
    hidden_png = None
    if answer is not None and not answer.error:
        from occ_audit_ros.viz import save_hidden_object_png

        cam = getattr(node.backend, "camera", None)
        hidden_png = save_hidden_object_png(voxels, answer, out / "hidden_object.png",
                                            image=keyframe.cameras[cam].image if cam else None,
                                            title=f"scene-0061 keyframe: '{answer.target} {answer.relation} "
                                                  f"{answer.reference}', {voxels.model}")
    overlays = []
    for cam, maps in result.relevancy.items():
        overlays.append(save_relevancy_overlay_png(keyframe.cameras[cam].image, maps, voxels.labels,
                                                   out / f"relevancy_{cam}.png", random_weights=voxels.random_weights))

    print("[4/4] summary", flush=True)
    lines = []
    if voxels.random_weights:
        lines.append(f"!! RANDOM-WEIGHT OUTPUT: clip_model={args.clip_model} (model {voxels.model}) has random weights; "
                     "the labels below are NOT a real perception result. Pass --clip-model DIR with real CLIP "
                     "ViT-B/32 weights.")
    lines.append(f"input bag:  {input_bag} ({playback.messages_published} messages replayed in {playback.wall_duration_s:.2f} s)")
    lines.append(f"output bag: {output_bag} (" + ", ".join(f"{t}: {counts.get(t, 0)}" for t in record) + ")")
    lines.append(f"node counters: {counters}")
    lines.append(f"semantic voxels: {len(voxels.indices)} occupied of {voxels.spec.num_voxels} "
                 f"(grid {voxels.spec.dims} x {voxels.spec.voxel_size} m in {voxels.frame_id})")
    for label, n in voxels.counts_per_label().items():
        lines.append(f"  {label:<14} {n:7d}")
    lines.append(f"latency per stage (s, last frame, {len(result.points_per_camera)} cameras): " +
                 ", ".join(f"{k} {v:.3f}" for k, v in result.timings_s.items()))
    lines.append(f"depth points per camera: {result.points_per_camera}")
    if answer is not None:
        lines.append(f"hidden-object query '{answer.target} {answer.relation} {answer.reference}': "
                     + (f"NOT ANSWERED: {answer.error}" if answer.error else
                        f"{len(answer.indices)} voxels with p >= {answer.min_probability}, max p = "
                        f"{float(answer.probabilities.max()) if len(answer.indices) else 0.0:.3f}; picture {hidden_png}"))
    lines.append(f"BEV picture: {bev}")
    lines.append("relevancy overlays: " + ", ".join(str(p) for p in overlays))
    lines.append(f"demo wall time: {time.perf_counter() - t_start:.1f} s")
    print("\n".join(lines), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``occ_audit_demo``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
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
