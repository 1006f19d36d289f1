"""ROS 2 perception node: multi-camera images + depth + TF -> semantic voxels, markers, points.

A thin rclpy adapter over :class:`occ_audit_ros.pipeline.PerceptionPipeline`:

* subscribes, per camera in ``cameras``: ``<ns>/image_raw``, ``<ns>/camera_info``, ``<ns>/depth``
  (sensor-data QoS) with ``ns`` = lower-case camera name, and ``/tf``, ``/tf_static``;
* synchronises one image, info and depth per camera by approximate time (``sync.slop_s``);
* processes the newest complete set on a worker thread with a queue of one (older sets are dropped
  and counted, so latency never builds up);
* publishes ``semantic_voxels`` (occ_audit_ros/SemanticVoxelGrid), ``semantic_voxel_markers``
  (visualization_msgs/MarkerArray) and ``semantic_points`` (sensor_msgs/PointCloud2), reliable.

Bad input (unknown encodings, size mismatches, missing transforms, NaN depth) is a rate-limited
warning and the frame is skipped; the node keeps running.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from .. import conventions
from ..clip_model import ClipWeightsUnavailable, load_clip
from ..params import PERCEPTION_PARAMS
from ..pipeline import CameraInput, PerceptionPipeline, PipelineResult, pipeline_config_from_params
from ..sync import ApproximateSynchronizer
from ..tf_buffer import TransformBuffer, TransformUnavailable
from .conversions import (camera_info_to_K, check_image_matches_info, depth_from_image_msg, rgb_from_image_msg,
                          semantic_voxels_to_markers, semantic_voxels_to_msg, semantic_voxels_to_pointcloud2,
                          stamp_to_ns, transform_to_matrix)

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
#: The three synchronised input streams of a camera: kind -> topic suffix under the camera namespace.
_STREAM_SUFFIX = {"image": "image_raw", "info": "camera_info", "depth": "depth"}


class PerceptionNode(Node):
    """The ``perception_node`` executable; parameters in ``occ_audit_ros/params.py``.

    Args:
        **kwargs: forwarded to ``rclpy.node.Node`` (``parameter_overrides``, ``cli_args``, ...).

    Raises:
        ClipWeightsUnavailable: when ``clip_model`` cannot be loaded (the message says how to
            provide weights).
        ValueError: on invalid parameter values.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Set before anything can fail: destroy_node() runs on a half-built node too (context shutdown).
        self._cv = threading.Condition()
        self._stop = False
        self._worker: threading.Thread | None = None
        super().__init__("perception_node", **kwargs)
        for spec in PERCEPTION_PARAMS:
            self.declare_parameter(spec.name, spec.default,
                                   ParameterDescriptor(description=spec.description, read_only=spec.read_only))
        values = {spec.name: self.get_parameter(spec.name).value for spec in PERCEPTION_PARAMS}
        values = {k: (list(v) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else v) for k, v in values.items()}
        config = pipeline_config_from_params(values)
        self.cameras: list[str] = list(values["cameras"])
        self.publish_markers = values["publish.markers"]
        self.publish_points = values["publish.points"]
        self.warn_period_s = values["warn_period_s"]

        clip = load_clip(values["clip_model"], device=values["device"])
        if clip.random_weights:
            self.get_logger().warning(
                f"clip_model={clip.name}: RANDOMLY INITIALISED CLIP WEIGHTS. Every output is marked "
                "random_weights=true and is NOT a real perception output.")
        self.pipeline = PerceptionPipeline(clip, config)
        self.get_logger().info(
            f"CLIP {clip.name} on {clip.device}; {len(config.labels)} labels; grid {config.grid.dims} "
            f"x {config.grid.voxel_size} m in {config.target_frame}; cameras {self.cameras}")

        self.tf = TransformBuffer()
        self.create_subscription(self._tf_type(), conventions.TF_TOPIC, lambda m: self._on_tf(m, False), TF_QOS)
        self.create_subscription(self._tf_type(), conventions.TF_STATIC_TOPIC, lambda m: self._on_tf(m, True),
                                 TF_STATIC_QOS)
        streams = [(cam, kind) for cam in self.cameras for kind in ("image", "info", "depth")]
        self.sync = ApproximateSynchronizer(streams, int(values["sync.slop_s"] * 1e9))
        msg_types = {"image": Image, "info": CameraInfo, "depth": Image}
        for cam in self.cameras:
            ns = conventions.camera_namespace(cam).lstrip("/")
            for kind, suffix in _STREAM_SUFFIX.items():
                self.create_subscription(msg_types[kind], f"{ns}/{suffix}", self._make_cb(cam, kind),
                                         qos_profile_sensor_data)

        from occ_audit_ros.msg import SemanticVoxelGrid

        self.grid_pub = self.create_publisher(SemanticVoxelGrid, conventions.SEMANTIC_VOXELS_TOPIC, OUTPUT_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, conventions.VOXEL_MARKERS_TOPIC, OUTPUT_QOS)
        self.points_pub = self.create_publisher(PointCloud2, conventions.SEMANTIC_POINTS_TOPIC, OUTPUT_QOS)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.counters = {"received_sets": 0, "processed": 0, "dropped": 0, "skipped": 0}
        self.stream_counts = {f"{conventions.camera_namespace(cam)}/{suffix}": 0
                              for cam in self.cameras for suffix in _STREAM_SUFFIX.values()}
        self.create_timer(max(self.warn_period_s, 1.0), self._check_streams)
        self.last_result: PipelineResult | None = None
        self._pending: dict | None = None
        self._last_warn: dict[str, float] = {}
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()

    @staticmethod
    def _tf_type():
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("tf2_msgs is not importable: run scripts/build_msgs.py (venv) or install "
                              "ros-<distro>-tf2-msgs") from err
        return TFMessage

    # ------------------------------------------------------------------------------------- input
    def warn(self, key: str, text: str) -> None:
        """Log ``text`` at most once per ``warn_period_s`` per ``key``."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e18) >= self.warn_period_s:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def _on_tf(self, msg, static: bool) -> None:
        for t in msg.transforms:
            try:
                self.tf.set_transform(t.header.frame_id, t.child_frame_id, transform_to_matrix(t.transform),
                                      stamp_to_ns(t.header.stamp), static)
            except ValueError as err:
                self.warn("tf", f"ignoring transform {t.header.frame_id} <- {t.child_frame_id}: {err}")

    def _make_cb(self, cam: str, kind: str):
        topic = f"{conventions.camera_namespace(cam)}/{_STREAM_SUFFIX[kind]}"

        def callback(msg) -> None:
            self.stream_counts[topic] += 1
            matched = self.sync.add((cam, kind), stamp_to_ns(msg.header.stamp), msg)
            if matched is None:
                return
            with self._cv:
                self.counters["received_sets"] += 1
                if self._pending is not None:
                    self.counters["dropped"] += 1  # the worker is busy: keep only the newest set
                self._pending = matched
                self._cv.notify()
        return callback

    def _check_streams(self) -> None:
        """Name the input topics that stay silent while others deliver (e.g. a bag without a camera)."""
        silent = [t for t, n in self.stream_counts.items() if n == 0]
        if silent and len(silent) < len(self.stream_counts):
            self.warn("silent", f"no message yet on {len(silent)} of {len(self.stream_counts)} input topics, so no "
                                f"frame can be synchronised: {', '.join(sorted(silent))}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "labels":
                try:
                    self.pipeline.set_labels(list(p.value))
                except ValueError as err:
                    return SetParametersResult(successful=False, reason=str(err))
                self.get_logger().info(f"labels changed to {list(p.value)}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------- work
    def camera_inputs(self, matched: dict) -> list[CameraInput]:
        """Convert one synchronised message set to pipeline inputs.

        Raises:
            ValueError: on unusable images / infos (unknown encoding, size mismatch, bad K).
            TransformUnavailable: when a camera's transform to ``target_frame`` is unknown.
        """
        inputs = []
        target = self.pipeline.config.target_frame
        for cam in self.cameras:
            image_msg, info_msg, depth_msg = matched[(cam, "image")], matched[(cam, "info")], matched[(cam, "depth")]
            check_image_matches_info(image_msg, info_msg)
            check_image_matches_info(depth_msg, info_msg)
            stamp = stamp_to_ns(image_msg.header.stamp)
            T = self.tf.lookup(target, image_msg.header.frame_id, stamp)
            inputs.append(CameraInput(cam, rgb_from_image_msg(image_msg), camera_info_to_K(info_msg), T,
                                      depth_from_image_msg(depth_msg), stamp))
        return inputs

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                matched, self._pending = self._pending, None
            try:
                inputs = self.camera_inputs(matched)
                result = self.pipeline.process(inputs)
            except TransformUnavailable as err:
                self.counters["skipped"] += 1
                self.warn("tf", f"skipping frame: {err}")
                continue
            except ValueError as err:
                self.counters["skipped"] += 1
                self.warn("input", f"skipping frame: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - a running node must survive any single frame
                self.counters["skipped"] += 1
                self.warn("error", f"skipping frame after {err.__class__.__name__}: {err}")
                continue
            self.publish(result)

    def publish(self, result: PipelineResult) -> None:
        """Publish the grid, and markers / points when enabled; log one summary line."""
        voxels = result.voxels
        self.grid_pub.publish(semantic_voxels_to_msg(voxels))
        if self.publish_markers:
            self.marker_pub.publish(semantic_voxels_to_markers(voxels))
        if self.publish_points:
            self.points_pub.publish(semantic_voxels_to_pointcloud2(voxels))
        with self._cv:
            self.counters["processed"] += 1
            self.last_result = result
            self._cv.notify_all()
        t = result.timings_s
        self.get_logger().info(
            f"{'[RANDOM WEIGHTS] ' if voxels.random_weights else ''}frame {voxels.stamp_ns / 1e9:.3f}: "
            f"{len(voxels.indices)} voxels, {sum(result.points_per_camera.values())} depth points; "
            f"relevancy {t['relevancy']:.2f} s, back-projection {t['backproject']:.3f} s, "
            f"fusion {t['fuse']:.3f} s, total {t['total']:.2f} s")

    def wait_for_frames(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` frames were published (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self.counters["processed"] < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``perception_node``: ``perception_node [--ros-args --params-file config/perception.yaml]``."""
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    try:
        node = PerceptionNode()
    except ClipWeightsUnavailable as err:
        print(f"perception_node: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
