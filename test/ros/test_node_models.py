"""The perception node with its learned models over real rclpy on the real nuScenes keyframe:
``model: semabs`` (shipped OVSSC + VOOL checkpoints, hidden-object queries) and ``model: ago`` (the
shipped simulator checkpoint). Each output is checked against the ROS-free model run
directly on the same keyframe data, so the node is shown to be a faithful adapter."""

import time

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from node_checks import wait_until
from node_fixtures import RosContext, whole_set_params
from occ_audit_ros import conventions, paths
from occ_audit_ros.nodes.bag_player import BagPlayer
from occ_audit_ros.nodes.conversions import msg_to_semantic_voxels, pointcloud2_to_numpy, stamp_to_ns
from occ_audit_ros.nodes.perception_node import PerceptionNode
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera
from occ_audit_ros.params import AGO_PARAMS, SEMABS_PARAMS
from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

LABELS = ["car", "road", "building", "tree"]
CENTER = np.array([6.0, 0.0, 0.9])  # LiDAR returns exist 5-7 m ahead of the car (the LiDAR is blind nearer)
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def keyframe_bag(keyframe, tmp_path_factory):
    return write_keyframe_bag(keyframe, tmp_path_factory.mktemp("bag") / "keyframe")


@pytest.fixture
def ros():
    ctx = RosContext()
    yield ctx.add
    ctx.close()


class Sink(Node):
    """Collects the hidden-object outputs like a client and RViz would."""

    def __init__(self):
        super().__init__("hidden_sink")
        from occ_audit_ros.msg import HiddenObjectQuery, HiddenObjectResult, SemanticVoxelGrid

        self.got = {"grid": [], "result": [], "markers": [], "points": []}
        self.create_subscription(SemanticVoxelGrid, "/semantic_voxels", lambda m: self.got["grid"].append(m), QOS)
        self.create_subscription(HiddenObjectResult, "/hidden_object_result", lambda m: self.got["result"].append(m), QOS)
        self.create_subscription(MarkerArray, "/hidden_object_markers", lambda m: self.got["markers"].append(m), QOS)
        self.create_subscription(PointCloud2, "/hidden_object_points", lambda m: self.got["points"].append(m), QOS)
        self.query_pub = self.create_publisher(HiddenObjectQuery, "/hidden_object_query", QOS)
        self.Query = HiddenObjectQuery

    def wait(self, key, n, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.got[key]) >= n:
                return True
            time.sleep(0.05)
        return False


class QueryClient(Node):
    """Sends hidden-object queries as a client would: bursts on the topic (a deep reliable queue,
    the results collected) and single requests to the service."""

    def __init__(self):
        super().__init__("hidden_client")
        from occ_audit_ros.msg import HiddenObjectQuery, HiddenObjectResult
        from occ_audit_ros.srv import HiddenObject

        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.results = []
        self.create_subscription(HiddenObjectResult, "/hidden_object_result", self.results.append, deep)
        self.query_pub = self.create_publisher(HiddenObjectQuery, "/hidden_object_query", deep)
        self.client = self.create_client(HiddenObject, "/hidden_object")
        self.Query, self.Request = HiddenObjectQuery, HiddenObject.Request

    def call(self, timeout_s: float = 120.0, **query):
        """One service request; its response."""
        assert self.client.wait_for_service(timeout_sec=20.0)
        future = self.client.call_async(self.Request(query=self.Query(**query)))
        assert wait_until(future.done, timeout_s), "no service response"
        return future.result()


def _play(ros, bag, node, cameras):
    with Reader(bag) as reader:
        prefixes = tuple(conventions.camera_namespace(c) + "/" for c in cameras)
        topics = sorted({c.topic for c in reader.connections
                         if not c.topic.startswith("/cam_") or c.topic.startswith(prefixes)})
    player = ros(BagPlayer(bag, rate=0.0, topics=topics, wait_for_subscribers=[conventions.image_topic(c) for c in cameras],
                           wait_for_subscribers_timeout=20.0))
    player.play()
    assert node.wait_for_frames(1, 180.0), node.counters
    assert node.last_missing == () and node.counters["partial_sets"] == 0, node.counters


def _semabs_node():
    params = {"clip_model": "random-tiny", "model": "semabs", "cameras": ["CAM_FRONT"], "labels": LABELS,
              "relevancy.output_stride": 8, "grid.lower": list(CENTER - 1.0), "grid.upper": list(CENTER + 1.0),
              "grid.voxel_size": 0.125, "semabs.workspace_center": list(CENTER), "semabs.num_points": 4000,
              "semabs.min_probability": 0.0, "warn_period_s": 0.0, "diagnostics.period_s": 0.0,
              **whole_set_params(["CAM_FRONT"])}
    return PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_semabs_node_ovssc_and_hidden_object_query(ros, keyframe_bag, keyframe):
    from occ_audit_ros.relevancy import RelevancyExtractor
    from occ_audit_ros.semabs.inference import SemAbsPredictor

    node = ros(_semabs_node())
    # only the chosen model's group is declared
    assert all(node.has_parameter(p.name) for p in SEMABS_PARAMS)
    assert not any(node.has_parameter(p.name) for p in AGO_PARAMS)
    sink = ros(Sink())
    client = ros(QueryClient())
    # before the first frame: a clear refusal, not silence
    early = client.call(target="car", relation="behind", reference="building", id=1)
    assert not early.success and "no frame processed yet" in early.message and early.result.query.id == 1
    _play(ros, keyframe_bag, node, ["CAM_FRONT"])
    assert sink.wait("grid", 1)
    grid = sink.got["grid"][0]
    assert grid.header.frame_id == "base_link" and grid.random_weights
    assert list(grid.dimensions) == [16, 16, 16] and list(grid.labels) == LABELS
    assert grid.model.endswith("ovssc_sim.safetensors")
    voxels = msg_to_semantic_voxels(grid)

    # Independent run of the ROS-free model on the keyframe's own data (image, LiDAR depth, calibration).
    cam = keyframe.cameras["CAM_FRONT"]
    depth = lidar_depth_for_camera(keyframe, "CAM_FRONT").astype(np.float32)
    depth[~((depth >= 1.0) & (depth <= 80.0))] = np.nan
    extractor = RelevancyExtractor(node.clip, node.config.relevancy)
    pred = SemAbsPredictor.from_checkpoints(extractor, paths.resource("models/semabs/ovssc_sim.safetensors"),
                                            paths.resource("models/semabs/vool_sim.safetensors"), num_points=4000,
                                            random_weights=True)
    ws_center = (np.asarray(pred.workspace.lower) + np.asarray(pred.workspace.upper)) / 2
    T_ws_cam = cam.T_base_cam.copy()
    T_ws_cam[:3, 3] += ws_center - CENTER  # workspace = base_link shifted: CENTER onto the cube's centre
    lin = (np.arange(16) + 0.5) * 0.125 - 1.0
    centers = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3) + CENTER  # base_link, C order
    res = pred.ovssc(cam.image, depth, cam.K, T_ws_cam, LABELS, queries=(centers - CENTER + ws_center).astype(np.float32))
    expected = np.flatnonzero(res.label_ids >= 0)
    np.testing.assert_array_equal(voxels.indices, expected)
    np.testing.assert_array_equal(voxels.label_ids, res.label_ids[expected])
    np.testing.assert_allclose(voxels.scores, res.probabilities[res.label_ids[expected], expected], rtol=1e-5)
    np.testing.assert_allclose(voxels.centers(), centers[expected], atol=1e-5)

    # Hidden-object query over rclpy: result, markers (alpha = probability) and points in base_link.
    n_markers, n_points = len(sink.got["markers"]), len(sink.got["points"])  # (the early refusal's, empty)
    sink.query_pub.publish(sink.Query(target="car", relation="behind", reference="building"))
    assert sink.wait("result", 1) and sink.wait("markers", n_markers + 1) and sink.wait("points", n_points + 1), \
        node.counters
    result = sink.got["result"][0]
    v = pred.vool(cam.image, depth, cam.K, T_ws_cam, "car", "behind", "building", context_labels=LABELS,
                  queries=(centers - CENTER + ws_center).astype(np.float32))
    assert result.header.frame_id == "base_link" and stamp_to_ns(result.header.stamp) == stamp_to_ns(grid.header.stamp)
    assert (result.query.target, result.query.relation, result.query.reference) == ("car", "behind", "building")
    assert list(result.dimensions) == [16, 16, 16] and result.random_weights
    np.testing.assert_array_equal(np.asarray(result.indices), np.arange(16 ** 3))  # min_probability 0: all voxels
    np.testing.assert_allclose(np.asarray(result.probabilities), v.probabilities, rtol=1e-5, atol=1e-6)
    cubes = [m for m in sink.got["markers"][n_markers].markers if m.type == Marker.CUBE_LIST]
    assert len(cubes) == 1 and cubes[0].header.frame_id == "base_link" and len(cubes[0].points) == 16 ** 3
    np.testing.assert_allclose([c.a for c in cubes[0].colors], v.probabilities, atol=1e-6)
    cloud = pointcloud2_to_numpy(sink.got["points"][n_points])
    np.testing.assert_allclose(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), centers, atol=1e-5)
    np.testing.assert_allclose(cloud["probability"], v.probabilities, rtol=1e-5, atol=1e-6)

    # A threshold set at run time keeps only the likelier voxels; an unknown relation gets an empty answer.
    from rclpy.parameter import Parameter as P

    assert node.set_parameters([P("semabs.min_probability", value=0.5)])[0].successful
    sink.query_pub.publish(sink.Query(target="car", relation="behind", reference="building"))
    sink.query_pub.publish(sink.Query(target="car", relation="underneath", reference="building"))
    assert sink.wait("result", 3), node.counters
    kept, refused = sink.got["result"][1], sink.got["result"][2]
    np.testing.assert_array_equal(np.asarray(kept.indices), np.flatnonzero(v.probabilities >= 0.5))
    assert len(refused.indices) == 0 and refused.query.relation == "underneath" and refused.error
    assert node.counters["hidden_answered"] == 2 and node.counters["hidden_refused"] == 2  # + the early one
    assert node.counters["processed"] == 1 and node.counters["skipped"] == 0

    # The service gives the topic's answer, with the request's id.
    response = client.call(target="car", relation="behind", reference="building", id=42)
    assert response.success and response.message == "" and response.result.query.id == 42
    np.testing.assert_array_equal(np.asarray(response.result.indices), np.asarray(kept.indices))
    np.testing.assert_array_equal(np.asarray(response.result.probabilities), np.asarray(kept.probabilities))

    # A burst of queries stamped after the last frame: those beyond the node's cap are refused at
    # once, the others when no frame comes in time; each query gets exactly one answer.
    from occ_audit_ros.nodes.conversions import ns_to_stamp
    from occ_audit_ros.nodes.perception_node import MAX_PENDING_QUERIES

    node.query_timeout_s = 600.0  # nothing expires while the burst arrives: the cap alone decides
    n = MAX_PENDING_QUERIES + 100
    later = ns_to_stamp(stamp_to_ns(grid.header.stamp) + 10**9)
    for i in range(1000, 1000 + n):
        msg = sink.Query(id=i, target="car", relation="behind", reference="building")
        msg.header.stamp = later
        client.query_pub.publish(msg)
    burst = lambda: [r for r in client.results if r.query.id >= 1000]  # noqa: E731 (not the earlier answers)
    assert wait_until(lambda: len(burst()) >= n - MAX_PENDING_QUERIES, 60.0), (len(burst()), node.counters)
    node.query_timeout_s = 0.5  # now the waiting ones expire
    assert wait_until(lambda: len(burst()) >= n, 60.0), (len(burst()), node.counters)
    time.sleep(0.5)
    assert sorted(r.query.id for r in burst()) == list(range(1000, 1000 + n))
    reasons = [r.error for r in burst()]
    assert sum("already wait for a frame" in e for e in reasons) == n - MAX_PENDING_QUERIES
    assert sum("no frame stamped at or after the query" in e for e in reasons) == MAX_PENDING_QUERIES


def test_semabs_grid_outside_the_workspace_is_a_clear_error():
    import rclpy

    from node_fixtures import private_domain_id

    rclpy.init(domain_id=private_domain_id())
    try:
        params = {"clip_model": "random-tiny", "model": "semabs", "cameras": ["CAM_FRONT"],
                  "grid.lower": [-40.0, -40.0, -1.0], "grid.upper": [-38.0, -38.0, 1.0]}
        with pytest.raises(ValueError, match="inside the SemAbs workspace"):
            PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    finally:
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def ago_checkpoint():
    """The shipped AGO checkpoint (driving simulator, grounding head, real MiniLM text; docs/ago.md)."""
    return paths.resource("models/ago/closed_ground_sim")


def test_ago_node_equals_the_predictor(ros, keyframe_bag, keyframe, ago_checkpoint):
    from occ_audit_ros.ago.infer import AgoPredictor

    labels = ["car", "pedestrian", "road", "fire hydrant"]  # any words: the vocabulary is text
    params = {"model": "ago", "ago.checkpoint": str(ago_checkpoint), "labels": labels, "warn_period_s": 0.0,
              "diagnostics.period_s": 0.0, **whole_set_params(conventions.CAMERA_CHANNELS)}
    node = ros(PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    assert node.clip is None  # AGO brings its own encoders; no CLIP is loaded
    assert all(node.has_parameter(p.name) for p in AGO_PARAMS)
    assert not any(node.has_parameter(p.name) for p in SEMABS_PARAMS)
    sink = ros(Sink())
    _play(ros, keyframe_bag, node, node.cameras)
    assert sink.wait("grid", 1)
    voxels = msg_to_semantic_voxels(sink.got["grid"][0])
    pred = AgoPredictor.from_checkpoint(ago_checkpoint)
    pred.set_vocabulary(labels)
    cams = list(keyframe.cameras.values())
    res = pred.predict([c.image for c in cams], [c.K for c in cams], [c.T_base_cam for c in cams],
                       [lidar_depth_for_camera(keyframe, c.channel) for c in cams])
    assert voxels.frame_id == "base_link" and voxels.labels == labels
    assert voxels.spec.dims == pred.spec.dims == (100, 100, 8)  # the checkpoint's grid, not grid.*
    assert len(res.voxels.indices) > 0
    np.testing.assert_array_equal(voxels.indices, res.voxels.indices)
    np.testing.assert_array_equal(voxels.label_ids, res.voxels.label_ids)
    np.testing.assert_allclose(voxels.scores, res.voxels.scores, rtol=1e-4, atol=1e-5)
    # hidden-object queries need model semabs: an empty answer and a warning, the node keeps running
    sink.query_pub.publish(sink.Query(target="car", relation="behind", reference="road"))
    assert sink.wait("result", 1) and len(sink.got["result"][0].indices) == 0
    assert node.counters["hidden_refused"] == 1
