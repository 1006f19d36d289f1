"""Shared helpers of the node tests: an rclpy context with a spinning executor, a node factory."""

import os
import threading

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from occ_audit_ros.nodes.perception_node import PerceptionNode, input_topics


def private_domain_id() -> int:
    """A DDS domain for this process (1..100), so parallel test runs and benchmarks on one machine
    do not hear each other's /cam_front/image_raw."""
    return 1 + os.getpid() % 100


class RosContext:
    """rclpy.init (own DDS domain) + a MultiThreadedExecutor spinning on a thread; ``add(node)``
    returns the node."""

    def __init__(self):
        rclpy.init(domain_id=private_domain_id())
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.nodes = []
        self.thread.start()

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self):
        self.executor.shutdown()
        for node in reversed(self.nodes):
            node.destroy_node()
        rclpy.try_shutdown()


def small_node(**overrides) -> PerceptionNode:
    """A perception node on one camera with the tiny random CLIP and a few labels."""
    params = {"clip_model": "random-tiny", "cameras": ["CAM_FRONT"], "labels": ["car", "road", "tree"],
              "relevancy.output_stride": 4, "grid.lower": [-20.0, -20.0, -1.0], "grid.upper": [20.0, 20.0, 5.4],
              "warn_period_s": 0.0, "diagnostics.period_s": 0.25, **overrides}
    return PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def whole_set_params(cameras) -> dict:
    """Parameters for a node that is fed one keyframe bag as fast as it plays and whose first output
    is compared with the model run directly on all of the keyframe's cameras.

    Reliable image, camera_info and depth inputs (as ``config/replay.yaml``): under load best effort
    can drop a full-size image. ``sync.timeout_s`` 0: the set waits for every camera, however slowly
    the burst is delivered, instead of going out without the late ones after 0.25 s of wall time.
    """
    return {"sync.timeout_s": 0.0,
            **{f"qos_overrides.{topic}.subscription.reliability": "reliable" for topic in input_topics(list(cameras))}}
