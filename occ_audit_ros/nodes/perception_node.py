"""ROS 2 perception node: multi-camera images + depth + TF -> semantic voxels, markers, points.

A thin rclpy adapter over :class:`occ_audit_ros.pipeline.PerceptionPipeline`:

* subscribes, per camera in ``cameras``: ``<ns>/image_raw``, ``<ns>/camera_info``, ``<ns>/depth``
  (sensor-data QoS) with ``ns`` = lower-case camera name, and ``/tf``, ``/tf_static``;
* synchronises one image, info and depth per camera by approximate time (``sync.slop_s``);
* processes the newest complete set on a worker thread with a queue of one (older sets are dropped
  and counted, so latency never builds up);
* publishes ``semantic_voxels`` (occ_audit_ros/SemanticVoxelGrid), ``semantic_voxel_markers``
  (visualization_msgs/MarkerArray) and ``semantic_points`` (sensor_msgs/PointCloud2), reliable; markers
  and points are built only while someone subscribes to them;
* publishes ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): counters, rates, per-stage latency;
* with a model that answers them (``model: semabs``) answers hidden-object queries (``hidden_object_query``,
  occ_audit_ros/HiddenObjectQuery, or the ``hidden_object`` service, occ_audit_ros/srv/HiddenObject) on
  the first processed frame at or after the query's stamp with ``hidden_object_result``
  (occ_audit_ros/HiddenObjectResult; the service response for a service request),
  ``hidden_object_markers`` (CUBE_LIST, alpha = probability) and ``hidden_object_points`` (PointCloud2
  x, y, z, probability), all in ``target_frame``. Every query gets exactly one answer; one the node
  cannot answer (another model, no frame yet, too many waiting, no frame in time) a refusal whose
  ``error`` says why.

``model`` picks what computes the grid, built by ``occ_audit_ros.backends.create_backend``: the
relevancy point cloud (default), Semantic Abstraction's OVSSC network, or an AGO checkpoint. The node
talks to it only through the ``Backend`` interface and its optional capabilities (``UsesRelevancy``,
``HiddenObjectQueries``, ``Reconfigurable``); a model's own parameters (``semabs.*``, ``ago.*``) are
declared only when that model is chosen. Parameter files layer: ``--params-file config/perception.yaml
--params-file config/models/<model>.yaml`` (later files win).

Inputs use sensor-data QoS, overridable per topic with the standard ``qos_overrides.<topic>.subscription.*``
parameters; incompatible QoS events on any input or output are warnings naming the topic and policy.
Transforms go into tf2_ros when it is importable, otherwise into
:class:`occ_audit_ros.tf_buffer.TransformBuffer`, both fed from the node's ``/tf`` and ``/tf_static``
subscriptions with the same graph checks and looked up with the same rule (tf2 interpolation,
``tf.tolerance_s``, ``tf.timeout_s``; :func:`occ_audit_ros.tf_buffer.tolerant_lookup`); a missing
transform skips the frame with a warning, never an identity. Parameters are range-checked by their
descriptors and :func:`occ_audit_ros.params.validate` in the on-set callback and applied in the
post-set callback. Bad input (unknown encodings, size mismatches,
missing transforms, NaN depth, stamps far in the future) is a rate-limited warning and the frame is
skipped; the node keeps running.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from occ_audit_ros import conventions
from occ_audit_ros.backends import (BACKENDS, Backend, HiddenObjectAnswer, HiddenObjectQueries, Reconfigurable,
                                    UsesRelevancy, create_backend)
from occ_audit_ros.clip_model import ClipWeightsUnavailable, load_clip
from occ_audit_ros.devices import resolve_device
from occ_audit_ros.params import COMMON_PARAMS, MODEL_OF, MODEL_PARAMS, check_preset, node_params, validate
from occ_audit_ros.pipeline import CameraInput, CameraIssue, PipelineResult, SyncWatch, UnusableCameras
from occ_audit_ros.sync import MultiCameraSynchronizer
from occ_audit_ros.tf_buffer import (ExtrapolationError, FrameGraph, TransformBuffer, TransformRefused,
                                     TransformUnavailable, checked_edge, tolerant_lookup)
from occ_audit_ros.nodes import backend_params
from occ_audit_ros.nodes.parameters import declare_parameters, first_line
from occ_audit_ros.nodes.conversions import (camera_info_to_K, check_image_matches_info, depth_from_image_msg,
                          hidden_object_to_markers, hidden_object_to_msg, hidden_object_to_pointcloud2,
                          rgb_from_compressed_msg, rgb_from_image_msg, semantic_voxels_to_markers, semantic_voxels_to_msg,
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
#: Image topic suffix per ``input.image_transport`` (image_transport's names).
_IMAGE_SUFFIX = {"raw": "image_raw", "compressed": "image_raw/compressed"}


def _suffixes(image_transport: str = "raw", depth_topic: str = "depth") -> dict[str, str]:
    """kind -> topic suffix under a camera's namespace for the ``input.*`` parameters."""
    return {"image": _IMAGE_SUFFIX[image_transport], "info": "camera_info", "depth": depth_topic}
#: Parameters that take effect while running; every other one needs a restart (changes are refused).
RUNTIME_PARAMS = frozenset({"labels", "relevancy.preset", "publish.markers", "publish.points", "sync.slop_s",
                            "tf.tolerance_s", "tf.timeout_s", "input.max_future_s", "warn_period_s",
                            "semabs.min_probability"})
#: Worker stages reported in diagnostics [s] with the default model: queue wait, message conversion +
#: TF, the pipeline's stages, publishing, and end to end (set complete -> published). Other models
#: report their own stages between convert and publish (``stages`` of the backend).
STAGES = ("queue", "convert", "relevancy", "backproject", "fuse", "publish", "end_to_end")
#: Hidden-object queries waiting for a frame (topic and service together); a query beyond this is
#: refused at once (an answer with ``error`` set), never dropped.
MAX_PENDING_QUERIES = 64
#: A query still without a frame at or after its stamp this long after it arrived is refused [s].
QUERY_TIMEOUT_S = 10.0
#: The query subscription keeps this many (reliable), so a burst reaches the node and is answered
#: (or refused) query by query instead of being overwritten in the DDS queue.
QUERY_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
#: Hidden-object results: as deep as the query queue, so that a burst of answers (refusals come at
#: once) is not overwritten in the writer's history before a reliable reader has taken it.
RESULT_QOS = QoSProfile(depth=QUERY_QOS.depth, reliability=ReliabilityPolicy.RELIABLE)


@dataclasses.dataclass
class _Query:
    """A hidden-object query waiting for its answer: the message, the node's sequence number, when it
    arrived (monotonic [s]) and, for a service request, the future its response waits on."""

    msg: Any
    seq: int
    arrived: float
    future: Future | None = None


def input_topics(cameras: list[str], image_transport: str = "raw", depth_topic: str = "depth") -> list[str]:
    """Input topics of the node for ``cameras`` resolved in the root namespace (without /tf, /tf_static);
    the node subscribes to them relative to its namespace (``cam_front/image_raw`` ...)."""
    return [f"/{conventions.relative_camera_namespace(c)}/{suffix}" for c in cameras
            for suffix in _suffixes(image_transport, depth_topic).values()]


def _rgb_of(image_msg, info_msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an Image or CompressedImage, checked against its CameraInfo size.

    Raises:
        ValueError: unknown encoding, undecodable data, or a size that differs from the info.
    """
    if isinstance(image_msg, CompressedImage):
        rgb = rgb_from_compressed_msg(image_msg)
        if rgb.shape[:2] != (int(info_msg.height), int(info_msg.width)):
            raise ValueError(f"compressed image is {rgb.shape[1]} x {rgb.shape[0]}, camera_info says "
                             f"{info_msg.width} x {info_msg.height}")
        return rgb
    check_image_matches_info(image_msg, info_msg)
    return rgb_from_image_msg(image_msg)


def output_topics() -> list[str]:
    """Fully qualified output topics of the node (root namespace)."""
    return ["/" + t for t in (conventions.SEMANTIC_VOXELS_TOPIC, conventions.VOXEL_MARKERS_TOPIC,
                              conventions.SEMANTIC_POINTS_TOPIC, conventions.HIDDEN_RESULT_TOPIC,
                              conventions.HIDDEN_MARKERS_TOPIC, conventions.HIDDEN_POINTS_TOPIC)] + ["/diagnostics"]


class _Tf2RosLookup:
    """A ``tf2_ros.Buffer`` behind the :class:`TransformBuffer` interface (``set_transform``, ``lookup``).

    The node feeds it from its own /tf and /tf_static subscriptions after the same graph checks as
    the built-in buffer (:class:`occ_audit_ros.tf_buffer.FrameGraph`: cycles, dynamic edges over
    static parents and frames beyond the cap are refused), and looks up with the same rule
    (:func:`occ_audit_ros.tf_buffer.tolerant_lookup`: tf2 interpolation, ``tolerance_ns`` past the
    latest common time, ``timeout_ns`` of waiting), so both backends answer alike.
    """

    def __init__(self, node: Node, tf2_ros, cache_ns: int = 10_000_000_000) -> None:
        self._tf2 = tf2_ros
        self.buffer = tf2_ros.Buffer(cache_time=rclpy.duration.Duration(nanoseconds=cache_ns))
        self.graph = FrameGraph(cache_ns)
        self._lock = threading.Lock()

    def set_transform(self, parent: str, child: str, matrix: np.ndarray, stamp_ns: int,
                      static: bool) -> None:  # pragma: no cover - tf2_ros is not installable in the venv
        """Add ``parent <- child`` (4, 4) at ``stamp_ns`` to the tf2 buffer once the graph admits it.

        Raises:
            ValueError: invalid names or a non-finite matrix. TransformRefused: refused by the graph.
        """
        from geometry_msgs.msg import TransformStamped

        from occ_audit_ros.nodes.conversions import matrix_to_transform, ns_to_stamp

        matrix = checked_edge(parent, child, matrix)
        with self._lock:
            self.graph.admit(parent, child, int(stamp_ns), static)
        t = TransformStamped(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=parent), child_frame_id=child,
                             transform=matrix_to_transform(matrix))
        if static:
            self.buffer.set_transform_static(t, "perception_node")
        else:
            self.buffer.set_transform(t, "perception_node")

    def _at(self, target: str, source: str, stamp_ns: int,
            timeout_ns: int):  # pragma: no cover - tf2_ros is not installable in the venv
        try:
            return self.buffer.lookup_transform(target, source, rclpy.time.Time(nanoseconds=int(stamp_ns)),
                                                timeout=rclpy.duration.Duration(nanoseconds=int(timeout_ns)))
        except self._tf2.ExtrapolationException as err:
            raise ExtrapolationError(f"tf2: {err}") from err
        except (self._tf2.LookupException, self._tf2.ConnectivityException, self._tf2.TransformException) as err:
            raise TransformUnavailable(f"tf2: {err}") from err

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 100_000_000,
               timeout_ns: int = 0) -> np.ndarray:  # pragma: no cover - tf2_ros is not installable in the venv
        """(4, 4) float64 ``target <- source`` at ``stamp_ns`` by the rule of :func:`tolerant_lookup`
        (tf2 interpolates; ``Time()`` gives the latest common time).

        Raises:
            TransformUnavailable: on any tf2 lookup, connectivity or extrapolation error beyond the tolerance.
        """
        if target == source:
            return np.eye(4)
        return tolerant_lookup(lambda t, wait: transform_to_matrix(self._at(target, source, t, wait).transform),
                               lambda: stamp_to_ns(self._at(target, source, 0, 0).header.stamp), int(stamp_ns),
                               int(tolerance_ns), int(timeout_ns), f"{target} <- {source}")


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

        self.counters = {"received_sets": 0, "partial_sets": 0, "processed": 0, "dropped": 0, "skipped": 0,
                         "rejected_msgs": 0,
                         "qos_incompatible": 0, "hidden_queries": 0, "hidden_answered": 0, "hidden_refused": 0, "tf_refused": 0}
        self._suffix = _suffixes(values["input.image_transport"], values["input.depth_topic"])
        self.stream_counts = {self._topic(c, k): 0 for c in self.cameras for k in self._suffix}
        self.last_missing: tuple = ()  # cameras left out of the last synchronised set
        self._last_input_mono_ns = time.monotonic_ns()
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
        # Both backends are fed here (not by a tf2_ros.TransformListener), so both get the same
        # graph checks (refused cycles, static re-parenting, frame cap) and the same warnings.
        self.create_subscription(self._tf_type(), conventions.TF_TOPIC, lambda m: self._on_tf(m, False), TF_QOS,
                                 event_callbacks=self._sub_events(conventions.TF_TOPIC))
        self.create_subscription(self._tf_type(), conventions.TF_STATIC_TOPIC, lambda m: self._on_tf(m, True),
                                 TF_STATIC_QOS, event_callbacks=self._sub_events(conventions.TF_STATIC_TOPIC))
        timeout = values["sync.timeout_s"]
        self.sync = MultiCameraSynchronizer(self.cameras, ("image", "info", "depth"),
                                            slop_ns=int(values["sync.slop_s"] * 1e9),
                                            tolerance_ns=int(values["sync.tolerance_s"] * 1e9),
                                            timeout_ns=int(timeout * 1e9) if timeout > 0 else None)
        msg_types = {"image": CompressedImage if values["input.image_transport"] == "compressed" else Image,
                     "info": CameraInfo, "depth": Image}
        for cam in self.cameras:
            for kind in self._suffix:
                topic = self._topic(cam, kind)[1:]  # relative: follows the node's namespace and remaps
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

        from occ_audit_ros.srv import HiddenObject

        self._queries: collections.deque[_Query] = collections.deque()
        self._query_seq = 0
        self.query_timeout_s = QUERY_TIMEOUT_S
        self.last_answer = None
        self.create_subscription(HiddenObjectQuery, conventions.HIDDEN_QUERY_TOPIC, self._on_query, QUERY_QOS,
                                 event_callbacks=self._sub_events(conventions.HIDDEN_QUERY_TOPIC))
        # The service callback waits for the worker's answer (a coroutine); its own reentrant group
        # keeps the node's other callbacks running meanwhile, the guard condition wakes the executor.
        self._wake = self.create_guard_condition(lambda: None)
        self.create_service(HiddenObject, conventions.HIDDEN_SERVICE, self._on_query_service,
                            callback_group=ReentrantCallbackGroup())
        self.create_timer(0.5, self._expire_queries)
        self.hidden_pub = pub(HiddenObjectResult, conventions.HIDDEN_RESULT_TOPIC, RESULT_QOS)
        self.hidden_marker_pub = pub(MarkerArray, conventions.HIDDEN_MARKERS_TOPIC, OUTPUT_QOS)
        self.hidden_points_pub = pub(PointCloud2, conventions.HIDDEN_POINTS_TOPIC, OUTPUT_QOS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self.create_timer(max(self.warn_period_s, 1.0), self._check_streams)
        self._init_sensor_issues()
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
        topic = self.resolve_topic_name(topic)  # relative names: log the name qos_overrides uses
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
                except TransformRefused as err:  # one warning per refused edge (rate-limited), then counted
                    self.counters["tf_refused"] += 1
                    if err.first:
                        self.warn("tf_refused", f"{err}; frames that need it are skipped until it is resolved")
                except ValueError as err:
                    self.warn("tf", f"ignoring transform {t.header.frame_id} <- {t.child_frame_id}: {err}")
        except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
            self.warn("tf", f"ignoring TF message after {err.__class__.__name__}: {err}")

    def _topic(self, cam: str, kind: str) -> str:
        """Input topic of ``(cam, kind)`` resolved in the root namespace, e.g. ``/cam_front/image_raw``."""
        return f"/{conventions.relative_camera_namespace(cam)}/{self._suffix[kind]}"

    def _make_cb(self, cam: str, kind: str):
        topic = self._topic(cam, kind)

        def callback(msg) -> None:
            try:
                self.stream_counts[topic] += 1
                stamp = stamp_to_ns(msg.header.stamp)
                if self._too_far_ahead(stamp):
                    self.counters["rejected_msgs"] += 1
                    self.warn("future", f"dropping {topic} message stamped {stamp / 1e9:.3f}: more than "
                                        f"input.max_future_s={self.values['input.max_future_s']} s ahead of the clock")
                    return
                sets = self.sync.add(cam, kind, stamp, msg)
                self._last_input_mono_ns = time.monotonic_ns()
                in_sets = {(c, "image"): None for s in sets for c in s.frames}
                self.sync_watch.observe(cam, kind, stamp, in_sets or None)
            except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
                self.counters["rejected_msgs"] += 1
                self.warn("input", f"dropping {topic} message after {err.__class__.__name__}: {err}")
                return
            self._queue_sets(sets)
        return callback

    def _queue_sets(self, sets) -> None:
        """Hand synchronised sets (:class:`~occ_audit_ros.sync.SyncedSet`) to the worker (queue of one:
        the newest wins, older ones count as dropped). A set without some cameras (lost frame, or silent
        past ``sync.timeout_s``) is processed with the present ones; a rate-limited warning and
        /diagnostics name the missing cameras."""
        for synced in sets:
            matched = {(cam, kind): m for cam, parts in synced.frames.items() for kind, m in parts.items()}
            with self._cv:
                self.counters["received_sets"] += 1
                self.last_missing = synced.missing
                if synced.missing:
                    self.counters["partial_sets"] += 1
                if self._pending is not None:
                    self.counters["dropped"] += 1  # the worker is busy: keep only the newest set
                self._pending = (matched, time.perf_counter())
                self._cv.notify()
            if synced.missing:
                self.warn("missing_camera", f"processing a set without {', '.join(synced.missing)}: no frame within "
                                            "sync.slop_s of the others (lost, or silent past sync.timeout_s)")

    def _check_streams(self) -> None:
        """Name the input topics that stay silent while others deliver (e.g. a bag without a camera);
        advance the synchroniser to the node clock so the last set of a stream that stopped is processed."""
        try:
            # Stream time moves on by the wall time since the last input: a stream that stopped still
            # has its last set processed, whatever the node's clock (bags are stamped in the past).
            stream_now = self.sync.now_ns
            if stream_now is not None:
                elapsed = time.monotonic_ns() - self._last_input_mono_ns
                self._queue_sets(self.sync.poll(stream_now + elapsed))
        except Exception as err:  # noqa: BLE001 - a timer must never take the executor down
            self.warn("input", f"synchroniser poll failed after {err.__class__.__name__}: {err}")
        silent = [t for t, n in self.stream_counts.items() if n == 0]
        if silent and len(silent) < len(self.stream_counts):
            self.warn("silent", f"no message yet on {len(silent)} of {len(self.stream_counts)} input topics; their cameras are "
                                f"left out of every set after sync.timeout_s: {', '.join(sorted(silent))}")

    def _changes(self, params) -> dict:
        """``{name: value}`` of the node's own parameters in ``params`` (lists as Python lists)."""
        return {p.name: (list(p.value) if isinstance(p.value, (list, tuple)) or hasattr(p.value, "tolist") else p.value)
                for p in params if p.name in self.param_names}

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate run-time parameter changes (rclpy on-set callback); changes nothing itself.

        Parameters outside :data:`RUNTIME_PARAMS` are refused (they need a restart), as are values
        :func:`occ_audit_ros.params.validate` refuses (types, ranges, finiteness, label limits,
        depth.min_m < depth.max_m ...), unknown presets and model parameters the backend cannot
        take. Never raises: any error is a refusal with its reason. Accepted changes take effect in
        :meth:`_after_set_parameters` (the post-set callback), so a refused set leaves everything as it was.
        """
        try:
            for p in params:
                if p.name in self.param_names and p.name not in RUNTIME_PARAMS:
                    return SetParametersResult(successful=False, reason=f"{p.name} takes effect only at start: restart")
            changes = self._changes(params)
            new_values = validate({**self.values, **changes})
            check_preset(new_values["relevancy.preset"])
            model_changes = [name for name in changes if MODEL_OF.get(name) == self.model_kind]
            if model_changes:
                if not isinstance(self.backend, Reconfigurable):
                    return SetParametersResult(successful=False, reason=f"{model_changes} take effect only at start")
                backend_params.model_config(self.model_kind, new_values)  # raises on values the model refuses
        except Exception as err:  # noqa: BLE001 - a parameter callback must never raise (the node would exit)
            text = f"{err.__class__.__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            self.warn("param", f"refusing parameter change {[p.name for p in params]}: {text[:500]}")
            return SetParametersResult(successful=False, reason=text[:2000])
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params) -> None:
        """Apply accepted run-time changes (rclpy post-set callback, after the values are stored):
        labels and preset (by the worker between frames), slop, tolerances, publish flags, model fields."""
        changes = self._changes(params)
        if not changes:
            return
        try:
            new_values = validate({**self.values, **changes})
            if any(MODEL_OF.get(name) == self.model_kind for name in changes):
                self.backend.reconfigure(backend_params.model_config(self.model_kind, new_values))
        except Exception as err:  # noqa: BLE001 - validated in _on_set_parameters already; never raise here
            self.warn("param", f"parameter change {sorted(changes)} not applied: {err}")
            return
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
        if "sync.timeout_s" in changes:
            timeout = new_values["sync.timeout_s"]
            self.sync.timeout_ns = int(timeout * 1e9) if timeout > 0 else None
        self.publish_markers = new_values["publish.markers"]
        self.publish_points = new_values["publish.points"]
        self.warn_period_s = new_values["warn_period_s"]

    def tf_request(self) -> dict:
        """Keyword arguments of every transform lookup, the same for tf2_ros and the built-in buffer:
        ``tolerance_ns`` (``tf.tolerance_s``) and ``timeout_ns`` (``tf.timeout_s``) [ns]."""
        return {"tolerance_ns": int(self.values["tf.tolerance_s"] * 1e9),
                "timeout_ns": int(self.values["tf.timeout_s"] * 1e9)}

    def _apply_preset(self, name: str) -> None:
        """Give the backend the relevancy settings of preset ``name`` ('' = the relevancy.* parameters);
        a backend without a relevancy extractor (AGO) ignores the preset."""
        if isinstance(self.backend, UsesRelevancy):
            self.backend.set_relevancy(backend_params.relevancy_config({**self.values, "relevancy.preset": name}))

    # ------------------------------------------------------------------------------------- work
    def camera_inputs(self, matched: dict) -> list[CameraInput]:
        """Convert one synchronised message set to pipeline inputs.

        A camera whose messages cannot be converted (unknown encoding, size mismatch, bad K) is left
        out and named in ``self._input_issues`` (``CameraIssue`` kind ``bad_input``); the others go on.

        Raises:
            UnusableCameras (a ValueError): when no camera's messages can be converted.
            TransformUnavailable: when a camera's transform to ``target_frame`` is unknown.
        """
        inputs = []
        self._input_issues: list[CameraIssue] = []
        target = self.config.target_frame
        for cam in self.cameras:
            if (cam, "image") not in matched:
                continue  # left out of this set by the synchroniser (named in diagnostics)
            image_msg, info_msg, depth_msg = matched[(cam, "image")], matched[(cam, "info")], matched[(cam, "depth")]
            try:
                check_image_matches_info(depth_msg, info_msg)
                rgb = _rgb_of(image_msg, info_msg)
                converted = (rgb, camera_info_to_K(info_msg), depth_from_image_msg(depth_msg))
            except ValueError as err:
                self._input_issues.append(CameraIssue(cam, "bad_input", f"{cam}: {err} (camera left out)"))
                continue
            stamp = stamp_to_ns(image_msg.header.stamp)
            T = self.tf.lookup(target, image_msg.header.frame_id, stamp, **self.tf_request())
            inputs.append(CameraInput(cam, converted[0], converted[1], T, converted[2], stamp,
                                      frame_id=image_msg.header.frame_id, depth_frame_id=depth_msg.header.frame_id))
        if not inputs:
            raise UnusableCameras(self._input_issues)
        return inputs

    # ------------------------------------------------------------------------------------- sensor issues
    def _init_sensor_issues(self) -> None:
        """State of :meth:`sensor_issues`: per (camera, kind) counts, and the never-synchronised watch
        (:class:`~occ_audit_ros.pipeline.SyncWatch`, checked once a second)."""
        self._input_issues = []
        self.sensor_issue_counts: dict[tuple[str, str], int] = {}
        self._sensor_last: dict[tuple[str, str], float] = {}  # last occurrence [monotonic s]
        self.sync_watch = SyncWatch(self.cameras, tuple(_STREAM_SUFFIX), after_s=max(3.0, 3 * self.values["sync.slop_s"]))
        self.create_timer(1.0, lambda: self.sensor_issues(self.sync_watch.unsynchronised()))

    def sensor_issues(self, issues, skipped: bool = False) -> None:
        """Report per-camera problems (``CameraIssue``): one rate-limited warning per camera and kind
        naming the camera, counted for diagnostics (WARN while any occurs). ``skipped``: the frame
        was skipped because no camera was usable."""
        for issue in issues:
            key = (issue.camera, issue.kind)
            self.sensor_issue_counts[key] = self.sensor_issue_counts.get(key, 0) + 1
            self._sensor_last[key] = time.monotonic()
            what = "skipping frame: " if skipped else ""
            self.warn(f"sensor:{issue.camera}:{issue.kind}", f"{what}{issue.message}")

    def _sensor_problems(self) -> list[str]:
        """Diagnostics lines for the camera issues seen in the last ``max(2, 2 * diagnostics.period_s)``
        seconds (empty: none), with their total counts."""
        window = max(2.0, 2.0 * float(self.values.get("diagnostics.period_s", 1.0)))
        now = time.monotonic()
        return [f"{cam}: {kind.replace('_', ' ')} ({self.sensor_issue_counts[(cam, kind)]}x)"
                for (cam, kind), t in sorted(self._sensor_last.items()) if now - t <= window]

    def _on_query(self, msg) -> None:
        """Topic query: answered (or refused) once on ``hidden_object_result``."""
        self._submit(msg, None)

    async def _on_query_service(self, request, response):
        """``hidden_object`` service: the same answer as the topic, as the response of this request."""
        future = Future()
        self._submit(request.query, future)
        result = await future
        response.result = result
        response.success = not result.error
        response.message = result.error
        return response

    def _submit(self, msg, future: Future | None) -> None:
        """Queue a query for the worker (answered on the first frame at or after its stamp), or refuse
        it at once: a model without hidden-object queries, no frame processed yet, or
        :data:`MAX_PENDING_QUERIES` already waiting. Every query gets exactly one answer."""
        try:
            with self._cv:
                self.counters["hidden_queries"] += 1
                self._query_seq += 1
                query = _Query(msg, self._query_seq, time.monotonic(), future)
                reason = None
                if not isinstance(self.backend, HiddenObjectQueries):
                    able = [k.name for k in BACKENDS.values() if issubclass(k.backend_type, HiddenObjectQueries)]
                    reason = (f"hidden-object queries need model {' or '.join(map(repr, able))} "
                              f"(model is {self.model_kind!r})")
                elif self.last_result is None:
                    reason = "no frame processed yet: queries are answered on frames, send it once one was published"
                elif len(self._queries) >= MAX_PENDING_QUERIES:
                    reason = f"{MAX_PENDING_QUERIES} queries already wait for a frame: try again later"
                else:
                    self._queries.append(query)
                    self._cv.notify()
        except Exception as err:  # noqa: BLE001 - a callback must never take the executor down
            reason = f"not accepted after {err.__class__.__name__}: {err}"
            query = _Query(msg, -1, time.monotonic(), future)
        if reason is not None:
            self._deliver(query, self._refusal(msg, reason))

    def _refusal(self, msg, reason: str) -> HiddenObjectAnswer:
        """An answer without voxels that says why ``msg`` was not answered (``error``)."""
        last = self.last_result
        return HiddenObjectAnswer(msg.target, msg.relation, msg.reference, self.backend.grid,
                                  self.config.target_frame, np.zeros(0, np.uint32), np.zeros(0, np.float32),
                                  stamp_ns=last.voxels.stamp_ns if last is not None else stamp_to_ns(msg.header.stamp),
                                  random_weights=self.backend.random_weights, model=self.backend.model_name,
                                  error=reason)

    def _expire_queries(self) -> None:
        """Timer: refuse queries that found no frame at or after their stamp within ``query_timeout_s``
        (:data:`QUERY_TIMEOUT_S`)."""
        now = time.monotonic()
        with self._cv:
            expired = [q for q in self._queries if now - q.arrived > self.query_timeout_s]
            for q in expired:
                self._queries.remove(q)
        for q in expired:
            self._deliver(q, self._refusal(q.msg, "no frame stamped at or after the query within "
                                                  f"{self.query_timeout_s} s"))

    def _answerable_queries(self) -> list[_Query]:
        """Pop the queries stamped at or before the last processed frame (call with ``_cv`` held)."""
        if self.last_result is None:
            return []
        frame_ns = self.last_result.voxels.stamp_ns
        ready = [q for q in self._queries if stamp_to_ns(q.msg.header.stamp) <= frame_ns]
        for q in ready:
            self._queries.remove(q)
        return ready

    def _deliver(self, query: _Query, answer: HiddenObjectAnswer) -> None:
        """Send ``answer`` once: the service response or ``hidden_object_result``; then markers and points
        (while subscribed), counters and one log line (a rate-limited warning for a refusal)."""
        msg = query.msg
        try:
            result = hidden_object_to_msg(answer, msg)
        except Exception as err:  # noqa: BLE001 - the client still gets an answer: a refusal
            answer = self._refusal(msg, f"answer not convertible ({err.__class__.__name__}: {err})")
            result = hidden_object_to_msg(answer, msg)
        try:
            if query.future is not None:
                query.future.set_result(result)
                self._wake.trigger()
            else:
                self.hidden_pub.publish(result)
        finally:
            self.last_answer = answer  # before the counters: a client polling them then finds this answer
            self.counters["hidden_refused" if answer.error else "hidden_answered"] += 1
        try:
            if self.hidden_marker_pub.get_subscription_count() > 0:
                self.hidden_marker_pub.publish(hidden_object_to_markers(answer))
            if self.hidden_points_pub.get_subscription_count() > 0:
                self.hidden_points_pub.publish(hidden_object_to_pointcloud2(answer))
        except Exception as err:  # noqa: BLE001
            self.warn("query", f"hidden-object markers/points not published after {err.__class__.__name__}: {err}")
        if answer.error:
            self.warn("query", f"hidden-object query {msg.target!r} {msg.relation!r} {msg.reference!r} "
                               f"(id {msg.id}) not answered: {answer.error}")
        else:
            self.get_logger().info(
                f"{'[RANDOM WEIGHTS] ' if answer.random_weights else ''}hidden object {msg.target!r} "
                f"{msg.relation} {msg.reference!r} (id {msg.id}): {len(answer.indices)} voxels with p >= "
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
                if getattr(err, "issues", None):  # UnusableCameras: every camera named
                    self.sensor_issues(err.issues, skipped=True)
                else:
                    self.warn("input", f"skipping frame: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - a running node must survive any single frame
                self.counters["skipped"] += 1
                self.warn("error", f"skipping frame after {err.__class__.__name__}: {err}")
                continue
            t_pub = time.perf_counter()
            try:
                self.publish(result)
                self.sensor_issues(self._input_issues + result.issues)
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

    def _answer_safely(self, query: _Query) -> None:
        """Answer ``query`` on the last frame (the worker); an error becomes a refusal, so the client
        gets exactly one answer either way."""
        msg = query.msg
        try:
            answer = self.backend.hidden_object(msg.target, msg.relation, msg.reference)
        except Exception as err:  # noqa: BLE001 - a running node must survive any single query
            answer = self._refusal(msg, f"failed after {err.__class__.__name__}: {err}")
        try:
            self._deliver(query, answer)
        except Exception as err:  # noqa: BLE001
            self.warn("query", f"hidden-object answer not sent after {err.__class__.__name__}: {err}")
        with self._cv:
            self._cv.notify_all()

    def publish(self, result: PipelineResult) -> None:
        """Publish the grid, and markers / points when enabled and subscribed; log one summary line.

        The worker then counts the frame as processed and stores it in ``last_result`` with its
        per-stage timings (``wait_for_frames`` returns only after that)."""
        voxels = result.voxels
        self.grid_pub.publish(semantic_voxels_to_msg(voxels))
        # Markers and points are built only while someone subscribes (the grid always).
        if self.publish_markers and self.marker_pub.get_subscription_count() > 0:
            self.marker_pub.publish(semantic_voxels_to_markers(voxels))
        if self.publish_points and self.points_pub.get_subscription_count() > 0:
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
        problems += self._sensor_problems()
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        pipeline = DiagnosticStatus(level=level, name="perception_node: pipeline", hardware_id="occ_audit_ros",
                                    message="; ".join(problems) or "ok",
                                    values=[KeyValue(key=k, value=v) for k, v in values.items()])
        silent = sorted(t for t, n in self.stream_counts.items() if n == 0)
        missing = list(self.last_missing)
        message = "; ".join(([f"silent: {', '.join(silent)}"] if silent else [])
                            + ([f"missing camera: {', '.join(missing)}"] if missing else [])) or "ok"
        inputs = DiagnosticStatus(
            level=DiagnosticStatus.WARN if (silent and len(silent) < len(self.stream_counts)) or missing
            else DiagnosticStatus.OK,
            name="perception_node: inputs", hardware_id="occ_audit_ros", message=message,
            values=[KeyValue(key=t, value=str(n)) for t, n in self.stream_counts.items()]
            + [KeyValue(key="missing_cameras", value=",".join(missing))])
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


#: Parameters rclpy declares on every node itself (not in :mod:`occ_audit_ros.params`).
_RCLPY_OWN_PARAMS = ("use_sim_time", "start_type_description_service")


def check_ros_args(argv: list[str], overrides: dict[str, Any] | None = None) -> None:
    """Check the parameter files and ``-p`` overrides of a ``perception_node`` command line before rclpy
    parses them and before any model is loaded.

    ``argv`` is the full command line (program name first). Inside each ``--ros-args`` section (up to
    ``--``) every ``--params-file FILE`` must be readable YAML whose top level is a mapping; the
    sections that apply to this node (``/**``, its name or ``/name``; the name follows ``-r
    __node:=NAME``) must hold ``ros__parameters``. Their values, merged in order, then the ``-p
    name:=value`` overrides (values read as YAML, as rcl does), must pass
    :func:`occ_audit_ros.params.validate` and :func:`occ_audit_ros.params.check_preset`, with
    ``overrides`` (a node's ``parameter_overrides``, which win over both) applied last. Parameters of
    another model than the chosen one are left out here (the node ignores them with a warning), as are
    rclpy's own parameters and ``qos_overrides.*``.

    Raises:
        ValueError: the first problem, in one line naming the file (and the YAML line) or the override.
    """
    from pathlib import Path

    import yaml

    from occ_audit_ros.launch_static import LaunchParseError, flatten_params_file
    from occ_audit_ros.params import PARAMS_BY_NAME, QOS_OVERRIDE_PREFIX

    files: list[str] = []
    cli_overrides: list[str] = []
    node_name = "perception_node"
    in_ros, i = False, 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg in ("--params-file", "-p", "--param", "-r", "--remap") and i + 1 < len(argv):
            value = argv[i + 1]
            i += 1
            if arg == "--params-file":
                files.append(value)
            elif arg in ("-p", "--param"):
                cli_overrides.append(value)
            elif value.startswith(("__node:=", "__name:=")):
                node_name = value.split(":=", 1)[1]
        i += 1
    values: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ValueError(f"parameter file {f}: no such file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"parameter file {f}: not valid YAML{at}: {problem}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"parameter file {f}: cannot read: {err}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ValueError(f"parameter file {f}: not a ROS 2 parameter file (top level is a "
                             f"{type(data).__name__}, not a mapping of node names)")
        if not any(k in data for k in ("/**", node_name, "/" + node_name)):
            continue  # sections for other nodes only: rcl applies none of them to this node
        try:
            values.update(flatten_params_file(path, node_name))
        except (LaunchParseError, AttributeError, TypeError) as err:
            raise ValueError(f"parameter file {f}: not a ROS 2 parameter file: {err}") from None
    for item in cli_overrides:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"-p {item!r}: expected name:=value")
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[name] = text  # rcl keeps an unparsable value as a string
    values.update({k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items()})
    values = {k: v for k, v in values.items()
              if not k.startswith(QOS_OVERRIDE_PREFIX) and k not in _RCLPY_OWN_PARAMS}
    model = values.get("model", PARAMS_BY_NAME["model"].default)
    values = {k: v for k, v in values.items() if MODEL_OF.get(k, model) == model}
    where = f"parameter files {files}" if files else "parameters"
    if cli_overrides or overrides:
        where += f" with overrides {cli_overrides + [f'{k}:={v!r}' for k, v in (overrides or {}).items()]}"
    try:
        checked = validate(values)
        check_preset(checked["relevancy.preset"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``perception_node``: ``perception_node [--ros-args --params-file config/perception.yaml
    [--params-file config/models/<model>.yaml]]`` (several files load in order, later ones win).

    Returns 0 after Ctrl-C / shutdown, 1 when the model cannot be built (weights, checkpoint), 2 on a
    bad command line or parameter file (:func:`check_ros_args`, one line on stderr, before rclpy is
    initialised or any model is loaded)."""
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(prog="perception_node", description=__doc__.splitlines()[0])
    try:
        check_ros_args(list(argv))
        own = rclpy.utilities.remove_ros_args(argv)[1:]
    except Exception as err:  # noqa: BLE001 - ValueError above, rcl's RCLError for what rcl parses itself
        print(f"perception_node: error: {first_line(err)}", file=sys.stderr)
        return 2
    parser.parse_args(own)
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
