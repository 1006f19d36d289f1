"""Replay across processes: ``bag_player`` in a child process, ``perception_node`` in this one.

The player publishes reliable; the node's camera inputs default to sensor data (best effort), which
loses full-size images between processes. ``config/replay.yaml`` (loaded by the replay launch and the
demo) makes them reliable: every full-size keyframe image, camera_info and depth must arrive.
"""

import os
import random
import subprocess
import sys
import threading
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import ReliabilityPolicy

from occ_audit_ros import conventions, paths
from occ_audit_ros.params import params_files

REPLAY = paths.resource("config/replay.yaml")


def _node(context, files, extra=()):
    from occ_audit_ros.nodes.perception_node import PerceptionNode

    cli = ["--ros-args"] + [a for f in files for a in ("--params-file", str(f))]
    return PerceptionNode(context=context, cli_args=cli + ["-p", "clip_model:=random-tiny", "-p", "device:=cpu",
                                                           *extra])


def _input_reliability(node) -> dict[str, ReliabilityPolicy]:
    return {s.topic_name: s.qos_profile.reliability for s in node.subscriptions
            if s.topic_name in node.stream_counts}


def test_live_defaults_stay_best_effort_and_replay_overlay_is_reliable():
    context = Context()
    rclpy.init(context=context, domain_id=random.randint(20, 200))
    nodes = []
    try:
        live = _node(context, params_files())
        nodes.append(live)
        assert set(_input_reliability(live).values()) == {ReliabilityPolicy.BEST_EFFORT}
        # a camera subset: the overrides of the other cameras' topics are ignored, not an error
        replay = _node(context, [*params_files(), REPLAY], ["-r", "__node:=perception_node", "-p",
                                                            "cameras:=[CAM_FRONT,CAM_BACK]"])
        nodes.append(replay)
        qos = _input_reliability(replay)
        assert len(qos) == 6 and set(qos.values()) == {ReliabilityPolicy.RELIABLE}, qos
    finally:
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=context)


def test_player_process_to_node_delivers_every_full_size_image(keyframe, tmp_path):
    """Player (child process) -> node (this process) with the replay overlay: all 6 full-size images
    (1600 x 900), their camera_info and depth arrive."""
    from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

    bag = write_keyframe_bag(keyframe, tmp_path / "bag")
    domain = random.randint(20, 200)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = executor = proc = None
    try:
        node = _node(context, [*params_files(), REPLAY])
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        topics = sorted(node.stream_counts)
        assert len(topics) == 3 * len(conventions.CAMERA_CHANNELS)
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain),
                   PYTHONPATH=str(paths.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "occ_audit_ros.nodes.bag_player", "--bag", str(bag), "--as-fast-as-possible",
             "--wait-for-subscribers", *topics, "--wait-for-subscribers-timeout", "60", "--delay", "1.0",
             "--progress-period", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output
        assert "not acknowledged" not in output and "no subscriber" not in output, output
        deadline = time.monotonic() + 30.0
        while min(node.stream_counts.values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = [t for t, n in node.stream_counts.items() if n < 1]
        assert not missing, f"never arrived: {missing}\n{output}"
        sizes = {(c.image.shape[1], c.image.shape[0]) for c in keyframe.cameras.values()}
        assert sizes == {(1600, 900)}  # full-size nuScenes images went through
        assert node.wait_for_frames(1, 120.0), node.counters
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
