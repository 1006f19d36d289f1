"""ROS 2 perception node: multi-camera images + depth + TF -> semantic voxels, markers, points.

A thin rclpy adapter over :class:`occ_audit_ros.pipeline.PerceptionPipeline`:

* subscribes, per camera in ``cameras``: ``<ns>/image_raw``, ``<ns>/camera_info``, ``<ns>/depth``
  (sensor-data QoS) with ``ns`` = lower-case camera name, and ``/tf``, ``/tf_static``;
* synchronises one image, info and depth per camera by approximate time (``sync.slop_s``);
* processes the newest complete set on a worker thread with a queue of one (older sets are dropped
  and counted, so latency never builds up);
* publishes ``semantic_voxels`` (occ_audit_ros/SemanticVoxelGrid), ``semantic_voxel_markers``
  (visualization_msgs/MarkerArray) and ``semantic_points`` (sensor_msgs/PointCloud2), reliable;
* publishes ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): counters, rates, per-stage latency;
* with a model that answers them (``model: semabs``) answers hidden-object queries (``hidden_object_query``,
  occ_audit_ros/HiddenObjectQuery) on the first processed frame at or after the query's stamp with
  ``hidden_object_result`` (occ_audit_ros/HiddenObjectResult), ``hidden_object_markers`` (CUBE_LIST,
  alpha = probability) and ``hidden_object_points`` (PointCloud2 x, y, z, probability), all in
  ``target_frame``.

``model`` picks what computes the grid, built by ``occ_audit_ros.backends.create_backend``: the
relevancy point cloud (default), Semantic Abstraction's OVSSC network, or an AGO checkpoint. The node
talks to it only through the ``Backend`` interface and its optional capabilities (``UsesRelevancy``,
``HiddenObjectQueries``, ``Reconfigurable``); a model's own parameters (``semabs.*``, ``ago.*``) are
declared only when that model is chosen. Parameter files layer: ``--params-file config/perception.yaml
--params-file config/models/<model>.yaml`` (later files win).

Inputs use sensor-data QoS, overridable per topic with the standard ``qos_overrides.<topic>.subscription.*``
parameters; incompatible QoS events on any input or output are warnings naming the topic and policy.
Transforms come from tf2_ros when it is importable, otherwise from
:class:`occ_audit_ros.tf_buffer.TransformBuffer` over ``/tf`` and ``/tf_static``; a missing transform
skips the frame with a warning, never an identity. Bad input (unknown encodings, size mismatches,
missing transforms, NaN depth, stamps far in the future) is a rate-limited warning and the frame is
skipped; the node keeps running.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from occ_audit_ros import conventions
from occ_audit_ros.backends import (BACKENDS, Backend, HiddenObjectAnswer, HiddenObjectQueries, Reconfigurable,
                                    UsesRelevancy, create_backend)
from occ_audit_ros.clip_model import ClipWeightsUnavailable, load_clip
from occ_audit_ros.devices import resolve_device
from occ_audit_ros.params import COMMON_PARAMS, MODEL_OF, MODEL_PARAMS, check_preset, node_params, validate
from occ_audit_ros.pipeline import CameraInput, PipelineResult
from occ_audit_ros.sync import ApproximateSynchronizer
from occ_audit_ros.tf_buffer import TransformBuffer, TransformUnavailable
from occ_audit_ros.nodes import backend_params
from occ_audit_ros.nodes.parameters import declare_parameters
from occ_audit_ros.nodes.conversions import (camera_info_to_K, check_image_matches_info, depth_from_image_msg,
                          hidden_object_to_markers, hidden_object_to_msg, hidden_object_to_pointcloud2,
                          rgb_from_image_msg, semantic_voxels_to_markers, semantic_voxels_to_msg,
                          semantic_voxels_to_pointcloud2, stamp_to_ns, transform_to_matrix)

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
def sensor_qos() -> QoSProfile:
    """A fresh sensor-data profile (best effort, keep last 5, volatile) for one input subscription.

    Fresh per subscription because rclpy's QoS overriding writes the overridden policies into the
    profile object it is given (the shared ``qos_profile_sensor_data`` would change for everyone).
    """
    return QoSProfile(history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: The three synchronised input streams of a camera: kind -> topic suffix under the camera namespace.
_STREAM_SUFFIX = {"image": "image_raw", "info": "camera_info", "depth": "depth"}
#: Parameters that take effect while running; every other one needs a restart (changes are refused).
RUNTIME_PARAMS = frozenset({"labels", "relevancy.preset", "publish.markers", "publish.points", "sync.slop_s",
                            "tf.tolerance_s", "input.max_future_s", "warn_period_s", "semabs.min_probability"})
#: Worker stages reported in diagnostics [s] with the default model: queue wait, message conversion +
#: TF, the pipeline's stages, publishing, and end to end (set complete -> published). Other models
#: report their own stages between convert and publish (``stages`` of the backend).
STAGES = ("queue", "convert", "relevancy", "backproject", "fuse", "publish", "end_to_end")
#: Hidden-object queries waiting for a frame; beyond this the oldest is dropped with a warning.
MAX_PENDING_QUERIES = 16


def input_topics(cameras: list[str]) -> list[str]:
    """Fully qualified input topics of the node for ``cameras`` (without /tf, /tf_static)."""
    return [f"{conventions.camera_namespace(c)}/{suffix}" for c in cameras for suffix in _STREAM_SUFFIX.values()]


def output_topics() -> list[str]:
    """Fully qualified output topics of the node (root namespace)."""
    return ["/" + t for t in (conventions.SEMANTIC_VOXELS_TOPIC, conventions.VOXEL_MARKERS_TOPIC,
                              conventions.SEMANTIC_POINTS_TOPIC, conventions.HIDDEN_RESULT_TOPIC,
                              conventions.HIDDEN_MARKERS_TOPIC, conventions.HIDDEN_POINTS_TOPIC)] + ["/diagnostics"]


class _Tf2RosLookup:
    """tf2_ros.Buffer + TransformListener behind the :class:`TransformBuffer` ``lookup`` signature."""

    def __init__(self, node: Node, tf2_ros) -> None:
        self._tf2 = tf2_ros
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 0) -> np.ndarray:
        """(4, 4) float64 ``target <- source`` at ``stamp_ns`` (tf2 interpolates; tolerance unused).

        Raises:
            TransformUnavailable: on any tf2 lookup, connectivity or extrapolation error.
        """
        try:
            t = self.buffer.lookup_transform(target, source, rclpy.time.Time(nanoseconds=int(stamp_ns)))
        except (self._tf2.LookupException, self._tf2.ConnectivityException, self._tf2.ExtrapolationException) as err:
            raise TransformUnavailable(f"tf2: {err}") from err
        return transform_to_matrix(t.transform)


class PerceptionNode(Node):
    """The ``perception_node`` executable; parameters in ``occ_audit_ros/params.py``.

    Declares the common parameters, reads ``model``, then declares that model's group only.
    The backend (:class:`occ_audit_ros.backends.Backend`) is ``self.backend``.

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
        self._last_warn: dict[str, float] = {}
        self.warn_counts: dict[str, list[int]] = {}  # key -> [logged, suppressed]
        self.warn_period_s = 0.0
        declare_parameters(self, COMMON_PARAMS)
        self.model_kind: str = self.get_parameter("model").value
        self.param_specs = node_params(self.model_kind)  # ValueError for an unknown model
        declare_parameters(self, MODEL_PARAMS[self.model_kind])
        self.param_names = frozenset(spec.name for spec in self.param_specs)
        values = {spec.name: self.get_parameter(spec.name).value for spec in self.param_specs}
        values = {k: (list(v) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else v) for k, v in values.items()}
        self.values = validate(values)
        check_preset(self.values["relevancy.preset"])
        config = backend_params.pipeline_config(values)
        self.cameras: list[str] = list(values["cameras"])
        self.publish_markers = values["publish.markers"]
        self.publish_points = values["publish.points"]
        self.warn_period_s = values["warn_period_s"]
        other = sorted(n for n in getattr(self, "_parameter_overrides", {}) if MODEL_OF.get(n, self.model_kind)
                       != self.model_kind)
        if other:
            self.get_logger().warning(f"ignoring {other}: parameters of model {MODEL_OF[other[0]]!r}, "
                                      f"but model is {self.model_kind!r}")

        self.config = config
        self.clip = None
        if BACKENDS[self.model_kind].uses_clip:  # AGO brings its own image and text encoders
            self.clip = load_clip(values["clip_model"], device=values["device"])
            if self.clip.random_weights:
                self.get_logger().warning(
                    f"clip_model={self.clip.name}: RANDOMLY INITIALISED CLIP WEIGHTS. Every output is marked "
                    "random_weights=true and is NOT a real perception output.")
        self.backend: Backend = self._build_backend(values)
        self.stages = ("queue", "convert") + tuple(self.backend.stages) + ("publish", "end_to_end")
        self._pending_preset: str | None = None  # set by a run-time change, applied by the worker
        self._pending_vocab: list[str] | None = None  # new labels, applied by the worker between frames
        grid = self.backend.grid
        self.get_logger().info(
            f"model {self.model_kind} ({self.backend.model_name}); {len(config.labels)} labels; grid {grid.dims} "
            f"x {grid.voxel_size} m in {config.target_frame}; cameras {self.cameras}")

        self.counters = {"received_sets": 0, "processed": 0, "dropped": 0, "skipped": 0, "rejected_msgs": 0,
                         "qos_incompatible": 0, "hidden_queries": 0, "hidden_answered": 0, "hidden_refused": 0}
        self.stream_counts = {t: 0 for t in input_topics(self.cameras)}
        self.latency: dict[str, collections.deque] = {k: collections.deque(maxlen=50) for k in self.stages}

        try:
            import tf2_ros
        except ImportError:
            tf2_ros = None
        if tf2_ros is not None:  # pragma: no cover - not installable in the venv
            self.tf_backend = "tf2_ros"
            self.tf = _Tf2RosLookup(self, tf2_ros)
        else:
            self.tf_backend = "occ_audit_ros.tf_buffer"
            self.tf = TransformBuffer()
            self.create_subscription(self._tf_type(), conventions.TF_TOPIC, lambda m: self._on_tf(m, False), TF_QOS,
                                     event_callbacks=self._sub_events(conventions.TF_TOPIC))
            self.create_subscription(self._tf_type(), conventions.TF_STATIC_TOPIC, lambda m: self._on_tf(m, True),
                                     TF_STATIC_QOS, event_callbacks=self._sub_events(conventions.TF_STATIC_TOPIC))
        streams = [(cam, kind) for cam in self.cameras for kind in ("image", "info", "depth")]
        self.sync = ApproximateSynchronizer(streams, int(values["sync.slop_s"] * 1e9))
        msg_types = {"image": Image, "info": CameraInfo, "depth": Image}
        for cam in self.cameras:
            ns = conventions.camera_namespace(cam)
            for kind, suffix in _STREAM_SUFFIX.items():
                topic = f"{ns}/{suffix}"
                self.create_subscription(msg_types[kind], topic, self._make_cb(cam, kind), sensor_qos(),
                                         event_callbacks=self._sub_events(topic),
                                         qos_overriding_options=QoSOverridingOptions.with_default_policies())

        from occ_audit_ros.msg import SemanticVoxelGrid

        def pub(msg_type, topic, qos):
            return self.create_publisher(msg_type, topic, qos, event_callbacks=PublisherEventCallbacks(
                incompatible_qos=lambda info: self._on_incompatible_qos(topic, "offered", info)))

        self.grid_pub = pub(SemanticVoxelGrid, conventions.SEMANTIC_VOXELS_TOPIC, OUTPUT_QOS)
        self.marker_pub = pub(MarkerArray, conventions.VOXEL_MARKERS_TOPIC, OUTPUT_QOS)
        self.points_pub = pub(PointCloud2, conventions.SEMANTIC_POINTS_TOPIC, OUTPUT_QOS)
        self.diag_pub = pub(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        from occ_audit_ros.msg import HiddenObjectQuery, HiddenObjectResult

        self._queries: collections.deque = collections.deque()
        self.last_answer = None
        self.create_subscription(HiddenObjectQuery, conventions.HIDDEN_QUERY_TOPIC, self._on_query, OUTPUT_QOS,
                                 event_callbacks=self._sub_events(conventions.HIDDEN_QUERY_TOPIC))
        self.hidden_pub = pub(HiddenObjectResult, conventions.HIDDEN_RESULT_TOPIC, OUTPUT_QOS)
        self.hidden_marker_pub = pub(MarkerArray, conventions.HIDDEN_MARKERS_TOPIC, OUTPUT_QOS)
        self.hidden_points_pub = pub(PointCloud2, conventions.HIDDEN_POINTS_TOPIC, OUTPUT_QOS)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.create_timer(max(self.warn_period_s, 1.0), self._check_streams)
        self._diag_prev = (time.monotonic(), dict(self.counters), sum(self.stream_counts.values()))
        if values["diagnostics.period_s"] > 0:
            self.create_timer(values["diagnostics.period_s"], self.publish_diagnostics)
        self.last_result: PipelineResult | None = None
        self._pending: tuple[dict, float] | None = None
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()

    def _build_backend(self, values: dict) -> Backend:
        """The :class:`~occ_audit_ros.backends.Backend` of the ``model`` parameter (``create_backend``).

        Raises:
            FileNotFoundError / ValueError: missing or unusable checkpoints, a grid outside the workspace.
        """
        backend = create_backend(self.model_kind, self.config, backend_params.model_config(self.model_kind, values),
                                 clip=self.clip, device=resolve_device(values["device"]))
        if backend.grid != self.config.grid:
            self.get_logger().info(f"model {self.model_kind}: publishing its own grid {backend.grid} instead of grid.*")
        if backend.random_weights and not (self.clip is not None and self.clip.random_weights):
            self.get_logger().warning(f"model {self.model_kind} ({backend.model_name}) has RANDOMLY INITIALISED "
                                      "weights: every output is marked random_weights=true")
        return backend

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
        """Log ``text`` at most once per ``warn_period_s`` per ``key``; count logged and suppressed ones."""
        now = time.monotonic()
        counts = self.warn_counts.setdefault(key, [0, 0])
        if now - self._last_warn.get(key, -1e18) >= self.warn_period_s:
            self._last_warn[key] = now
            self.get_logger().warning(text)
            counts[0] += 1  # after the write: a counted warning is already in the log
        else:
            counts[1] += 1

    def _sub_events(self, topic: str) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(
            incompatible_qos=lambda info: self._on_incompatible_qos(topic, "requested", info))

    def _on_incompatible_qos(self, topic: str, side: str, info) -> None:
        """QoS event: a peer's QoS cannot match ours on ``topic`` (no messages will flow)."""
        self.counters["qos_incompatible"] += 1
        policy = qos_policy_name_from_kind(info.last_policy_kind)
        ours = "subscription" if side == "requested" else "publisher"
        self.warn(f"qos:{topic}", f"incompatible QoS on {topic}: our {ours} and a peer disagree on {policy} "
                                  f"({info.total_count} incompatible peers so far); nothing flows between them. "
                                  f"Inputs accept any reliability (sensor data, best effort); outputs are reliable "
                                  f"and volatile; override inputs with qos_overrides.{topic}.subscription.*")

    def _too_far_ahead(self, stamp_ns: int) -> bool:
        now = self.get_clock().now().nanoseconds
        return now > 0 and stamp_ns - now > self.values["input.max_future_s"] * 1e9

    def _on_tf(self, msg, static: bool) -> None:
        try:
            for t in msg.transforms:
                stamp = stamp_to_ns(t.header.stamp)
                if not static and self._too_far_ahead(stamp):
                    self.counters["rejected_msgs"] += 1
                    self.warn("future", f"ignoring transform {t.header.frame_id} <- {t.child_frame_id} stamped "
                                        f"{stamp / 1e9:.3f}, more than input.max_future_s ahead of the clock")
                    continue
                try:
                    self.tf.set_transform(t.header.frame_id, t.child_frame_id, transform_to_matrix(t.transform),
                                          stamp, static)
                except ValueError as err:
                    self.warn("tf", f"ignoring transform {t.header.frame_id} <- {t.child_frame_id}: {err}")
        except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
            self.warn("tf", f"ignoring TF message after {err.__class__.__name__}: {err}")

    def _make_cb(self, cam: str, kind: str):
        topic = f"{conventions.camera_namespace(cam)}/{_STREAM_SUFFIX[kind]}"

        def callback(msg) -> None:
            try:
                self.stream_counts[topic] += 1
                stamp = stamp_to_ns(msg.header.stamp)
                if self._too_far_ahead(stamp):
                    self.counters["rejected_msgs"] += 1
                    self.warn("future", f"dropping {topic} message stamped {stamp / 1e9:.3f}: more than "
                                        f"input.max_future_s={self.values['input.max_future_s']} s ahead of the clock")
                    return
                matched = self.sync.add((cam, kind), stamp, msg)
            except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
                self.counters["rejected_msgs"] += 1
                self.warn("input", f"dropping {topic} message after {err.__class__.__name__}: {err}")
                return
            if matched is None:
                return
            with self._cv:
                self.counters["received_sets"] += 1
                if self._pending is not None:
                    self.counters["dropped"] += 1  # the worker is busy: keep only the newest set
                self._pending = (matched, time.perf_counter())
                self._cv.notify()
        return callback

    def _check_streams(self) -> None:
        """Name the input topics that stay silent while others deliver (e.g. a bag without a camera)."""
        silent = [t for t, n in self.stream_counts.items() if n == 0]
        if silent and len(silent) < len(self.stream_counts):
            self.warn("silent", f"no message yet on {len(silent)} of {len(self.stream_counts)} input topics, so no "
                                f"frame can be synchronised: {', '.join(sorted(silent))}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate run-time parameter changes; apply labels, preset, slop, tolerances, publish flags.

        Parameters outside :data:`RUNTIME_PARAMS` are refused (they need a restart), as are empty or
        duplicate label lists and unknown presets.
        """
        changes = {}
        for p in params:
            if p.name not in self.param_names:
                continue  # use_sim_time, qos_overrides.* (read-only) ...
            if p.name not in RUNTIME_PARAMS:
                return SetParametersResult(successful=False, reason=f"{p.name} takes effect only at start: restart")
            value = p.value
            changes[p.name] = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
        try:
            new_values = validate({**self.values, **changes})
            check_preset(new_values["relevancy.preset"])
        except ValueError as err:
            self.warn("param", f"refusing parameter change {changes}: {err}")
            return SetParametersResult(successful=False, reason=str(err))
        model_changes = [name for name in changes if MODEL_OF.get(name) == self.model_kind]
        if model_changes:
            if not isinstance(self.backend, Reconfigurable):
                return SetParametersResult(successful=False, reason=f"{model_changes} take effect only at start")
            try:
                self.backend.reconfigure(backend_params.model_config(self.model_kind, new_values))
            except (TypeError, ValueError) as err:
                self.warn("param", f"refusing parameter change {changes}: {err}")
                return SetParametersResult(successful=False, reason=str(err))
        self.values = new_values
        if "labels" in changes:
            with self._cv:  # applied by the worker between frames (it may be processing one now)
                self._pending_vocab = list(new_values["labels"])
            self.get_logger().info(f"labels changed to {new_values['labels']} from the next frame")
        if "relevancy.preset" in changes:
            with self._cv:
                self._pending_preset = new_values["relevancy.preset"] or ""
            self.get_logger().info(f"relevancy preset -> {new_values['relevancy.preset']!r} from the next frame")
        if "sync.slop_s" in changes:
            self.sync.slop_ns = int(new_values["sync.slop_s"] * 1e9)
        self.publish_markers = new_values["publish.markers"]
        self.publish_points = new_values["publish.points"]
        self.warn_period_s = new_values["warn_period_s"]
        return SetParametersResult(successful=True)

    def _apply_preset(self, name: str) -> None:
        """Give the backend the relevancy settings of preset ``name`` ('' = the relevancy.* parameters);
        a backend without a relevancy extractor (AGO) ignores the preset."""
        if isinstance(self.backend, UsesRelevancy):
            self.backend.set_relevancy(backend_params.relevancy_config({**self.values, "relevancy.preset": name}))

    # ------------------------------------------------------------------------------------- work
    def camera_inputs(self, matched: dict) -> list[CameraInput]:
        """Convert one synchronised message set to pipeline inputs.

        Raises:
            ValueError: on unusable images / infos (unknown encoding, size mismatch, bad K).
            TransformUnavailable: when a camera's transform to ``target_frame`` is unknown.
        """
        inputs = []
        target = self.config.target_frame
        for cam in self.cameras:
            image_msg, info_msg, depth_msg = matched[(cam, "image")], matched[(cam, "info")], matched[(cam, "depth")]
            check_image_matches_info(image_msg, info_msg)
            check_image_matches_info(depth_msg, info_msg)
            stamp = stamp_to_ns(image_msg.header.stamp)
            T = self.tf.lookup(target, image_msg.header.frame_id, stamp,
                               tolerance_ns=int(self.values["tf.tolerance_s"] * 1e9))
            inputs.append(CameraInput(cam, rgb_from_image_msg(image_msg), camera_info_to_K(info_msg), T,
                                      depth_from_image_msg(depth_msg), stamp))
        return inputs

    def _on_query(self, msg) -> None:
        """Queue a hidden-object query for the worker (answered on the first frame at or after its stamp)."""
        try:
            with self._cv:
                self.counters["hidden_queries"] += 1
                if len(self._queries) >= MAX_PENDING_QUERIES:
                    old = self._queries.popleft()
                    self.counters["hidden_refused"] += 1
                    self.warn("query", f"dropping hidden-object query {old.target!r} {old.relation!r} "
                                       f"{old.reference!r}: more than {MAX_PENDING_QUERIES} queries wait for a frame")
                self._queries.append(msg)
                self._cv.notify()
        except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
            self.warn("query", f"ignoring hidden-object query after {err.__class__.__name__}: {err}")

    def _answerable_queries(self) -> list:
        """Pop the queries stamped at or before the last processed frame (call with ``_cv`` held)."""
        if self.last_result is None:
            return []
        frame_ns = self.last_result.voxels.stamp_ns
        ready = [q for q in self._queries if stamp_to_ns(q.header.stamp) <= frame_ns]
        for q in ready:
            self._queries.remove(q)
        return ready

    def _answer(self, query) -> None:
        """Answer one hidden-object query on the last frame and publish result, markers and points.

        An unanswerable query (a model without :class:`HiddenObjectQueries`, unknown relation, no VOOL
        checkpoint ...) is a rate-limited warning and an empty result, so a client waiting for an
        answer gets one."""
        if isinstance(self.backend, HiddenObjectQueries):
            answer = self.backend.hidden_object(query.target, query.relation, query.reference)
        else:
            able = [k.name for k in BACKENDS.values() if issubclass(k.backend_type, HiddenObjectQueries)]
            answer = HiddenObjectAnswer(query.target, query.relation, query.reference, self.backend.grid,
                                        self.config.target_frame, np.zeros(0, np.uint32), np.zeros(0, np.float32),
                                        stamp_ns=self.last_result.voxels.stamp_ns,
                                        random_weights=self.backend.random_weights, model=self.backend.model_name,
                                        error=f"hidden-object queries need model {' or '.join(map(repr, able))} "
                                              f"(model is {self.model_kind!r})")
        self.hidden_pub.publish(hidden_object_to_msg(answer, query))
        self.hidden_marker_pub.publish(hidden_object_to_markers(answer))
        self.hidden_points_pub.publish(hidden_object_to_pointcloud2(answer))
        self.last_answer = answer  # before the counters: a client polling them then finds this answer
        if answer.error:
            self.counters["hidden_refused"] += 1
            self.warn("query", f"hidden-object query {query.target!r} {query.relation!r} {query.reference!r} "
                               f"not answered: {answer.error}")
        else:
            self.counters["hidden_answered"] += 1
            self.get_logger().info(
                f"{'[RANDOM WEIGHTS] ' if answer.random_weights else ''}hidden object {query.target!r} "
                f"{query.relation} {query.reference!r}: {len(answer.indices)} voxels with p >= "
                f"{answer.min_probability}, max p = "
                f"{float(answer.probabilities.max()) if len(answer.indices) else 0.0:.2f}")

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:  # a frame to process, or queries stamped at or before the last frame
                    if self._stop:
                        return
                    queries = [] if self._pending is not None else self._answerable_queries()
                    if self._pending is not None or queries:
                        break
                    self._cv.wait()
                pending, self._pending = self._pending, None
                preset, self._pending_preset = self._pending_preset, None
                vocab, self._pending_vocab = self._pending_vocab, None
            if vocab is not None:
                try:
                    self.backend.set_labels(vocab)
                except ValueError as err:  # validated on the change already; never stop the worker
                    self.warn("param", f"labels {vocab} not applied: {err}")
            if pending is None:
                for query in queries:
                    self._answer_safely(query)
                continue
            matched, t_ready = pending
            t_start = time.perf_counter()
            try:
                if preset is not None:
                    self._apply_preset(preset)
                inputs = self.camera_inputs(matched)
                t_conv = time.perf_counter()
                result = self.backend.process(inputs)
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
            t_pub = time.perf_counter()
            try:
                self.publish(result)
            except Exception as err:  # noqa: BLE001
                self.counters["skipped"] += 1
                self.warn("publish", f"could not publish frame after {err.__class__.__name__}: {err}")
                continue
            t_end = time.perf_counter()
            stages = {"queue": t_start - t_ready, "convert": t_conv - t_start, "publish": t_end - t_pub,
                      "end_to_end": t_end - t_ready,
                      **{k: result.timings_s[k] for k in self.backend.stages}}
            result.timings_s.update({k: stages[k] for k in ("queue", "convert", "publish", "end_to_end")})
            with self._cv:
                for k, v in stages.items():
                    self.latency[k].append(v)
                self.counters["processed"] += 1
                self.last_result = result
                queries = self._answerable_queries()
                self._cv.notify_all()
            for query in queries:
                self._answer_safely(query)

    def _answer_safely(self, query) -> None:
        try:
            self._answer(query)
        except Exception as err:  # noqa: BLE001 - a running node must survive any single query
            self.counters["hidden_refused"] += 1
            self.warn("query", f"hidden-object query failed after {err.__class__.__name__}: {err}")
        with self._cv:
            self._cv.notify_all()

    def publish(self, result: PipelineResult) -> None:
        """Publish the grid, and markers / points when enabled; log one summary line.

        The worker then counts the frame as processed and stores it in ``last_result`` with its
        per-stage timings (``wait_for_frames`` returns only after that)."""
        voxels = result.voxels
        self.grid_pub.publish(semantic_voxels_to_msg(voxels))
        if self.publish_markers:
            self.marker_pub.publish(semantic_voxels_to_markers(voxels))
        if self.publish_points:
            self.points_pub.publish(semantic_voxels_to_pointcloud2(voxels))
        t = result.timings_s
        self.get_logger().info(
            f"{'[RANDOM WEIGHTS] ' if voxels.random_weights else ''}frame {voxels.stamp_ns / 1e9:.3f}: "
            f"{len(voxels.indices)} voxels, {sum(result.points_per_camera.values())} depth points; "
            + ", ".join(f"{k.replace('_', ' ')} {t[k]:.3f} s" for k in self.backend.stages)
            + f", total {t['total']:.2f} s")

    def diagnostics(self) -> DiagnosticArray:
        """diagnostic_msgs/DiagnosticArray: pipeline status (counters, rates over the last period,
        latency per stage: mean and max of the last 50 frames [s], warnings) and input status (per topic)."""
        now = time.monotonic()
        prev_t, prev_counters, prev_msgs = self._diag_prev
        counters = dict(self.counters)
        msgs = sum(self.stream_counts.values())
        dt = max(now - prev_t, 1e-9)
        self._diag_prev = (now, counters, msgs)
        delta = {k: counters[k] - prev_counters.get(k, 0) for k in counters}
        values = {k: str(v) for k, v in counters.items()}
        values.update({f"{k}_hz": f"{delta[k] / dt:.3f}" for k in ("received_sets", "processed", "dropped", "skipped")})
        values["input_msgs_hz"] = f"{(msgs - prev_msgs) / dt:.3f}"
        with self._cv:
            latency = {k: list(d) for k, d in self.latency.items()}
        for k, lat in latency.items():
            values[f"latency_{k}_mean_s"] = f"{np.mean(lat):.4f}" if lat else "nan"
            values[f"latency_{k}_max_s"] = f"{np.max(lat):.4f}" if lat else "nan"
        values["warnings_logged"] = str(sum(c[0] for c in self.warn_counts.values()))
        values["warnings_suppressed"] = str(sum(c[1] for c in self.warn_counts.values()))
        values.update({"tf_backend": self.tf_backend, "labels": str(len(self.values["labels"])),
                       "relevancy_preset": self.values["relevancy.preset"] or "(parameters)",
                       "model": self.model_kind, "model_name": self.backend.model_name,
                       "clip_model": self.clip.name if self.clip is not None else "(none)",
                       "random_weights": str(self.backend.random_weights).lower()})
        problems = []
        if delta["skipped"]:
            problems.append(f"{delta['skipped']} frames skipped")
        if delta["dropped"]:
            problems.append(f"{delta['dropped']} frames dropped (worker busy)")
        if delta["qos_incompatible"]:
            problems.append("incompatible QoS")
        if delta["rejected_msgs"]:
            problems.append(f"{delta['rejected_msgs']} messages rejected")
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        pipeline = DiagnosticStatus(level=level, name="perception_node: pipeline", hardware_id="occ_audit_ros",
                                    message="; ".join(problems) or "ok",
                                    values=[KeyValue(key=k, value=v) for k, v in values.items()])
        silent = sorted(t for t, n in self.stream_counts.items() if n == 0)
        inputs = DiagnosticStatus(
            level=DiagnosticStatus.WARN if silent and len(silent) < len(self.stream_counts) else DiagnosticStatus.OK,
            name="perception_node: inputs", hardware_id="occ_audit_ros",
            message=f"silent: {', '.join(silent)}" if silent else "ok",
            values=[KeyValue(key=t, value=str(n)) for t, n in self.stream_counts.items()])
        return DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[pipeline, inputs])

    def publish_diagnostics(self) -> None:
        """Timer callback: publish :meth:`diagnostics` on /diagnostics."""
        self.diag_pub.publish(self.diagnostics())

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
    """Entry point of ``perception_node``: ``perception_node [--ros-args --params-file config/perception.yaml
    [--params-file config/models/<model>.yaml]]`` (several files load in order, later ones win)."""
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    try:
        node = PerceptionNode()
    except (ClipWeightsUnavailable, ValueError) as err:
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
