"""The perception node over real rclpy on the real nuScenes keyframe (tiny random CLIP).

The keyframe goes through the real bag converter and the real bag player; a sink node subscribes to
the node's outputs like RViz would.
"""

import copy
import time

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from node_checks import wait_until
from node_fixtures import RosContext, whole_set_params
from occ_audit_ros import conventions
from occ_audit_ros.nodes.bag_player import BagPlayer, resolve_message_type
from occ_audit_ros.nodes.conversions import msg_to_semantic_voxels, pointcloud2_to_numpy, stamp_to_ns
from occ_audit_ros.nodes.perception_node import PerceptionNode
from occ_audit_ros.params import DRIVING_LABELS
from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag


@pytest.fixture(scope="module")
def keyframe_bag(keyframe, tmp_path_factory):
    return write_keyframe_bag(keyframe, tmp_path_factory.mktemp("bag") / "keyframe")


@pytest.fixture
def ros():
    ctx = RosContext()  # own DDS domain, executor thread
    yield ctx.add
    ctx.close()


class Sink(Node):
    """Collects the node's outputs."""

    def __init__(self):
        super().__init__("sink")
        from occ_audit_ros.msg import SemanticVoxelGrid

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.got = {"grid": [], "markers": [], "points": []}
        self.create_subscription(SemanticVoxelGrid, "/semantic_voxels", lambda m: self.got["grid"].append(m), qos)
        self.create_subscription(MarkerArray, "/semantic_voxel_markers", lambda m: self.got["markers"].append(m), qos)
        self.create_subscription(PointCloud2, "/semantic_points", lambda m: self.got["points"].append(m), qos)

    def wait(self, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(v) >= n for v in self.got.values()):
                return True
            time.sleep(0.05)
        return False


def make_node(**overrides):
    params = {"clip_model": "random-tiny", "relevancy.output_stride": 4, "warn_period_s": 0.0, **overrides}
    return PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_node_publishes_outputs_from_replayed_keyframe(ros, keyframe_bag, keyframe):
    node = ros(make_node(**whole_set_params(conventions.CAMERA_CHANNELS)))
    sink = ros(Sink())
    player = ros(BagPlayer(keyframe_bag, rate=0.0, wait_for_subscribers=[conventions.image_topic(c) for c in node.cameras],
                           wait_for_subscribers_timeout=20.0))
    player.play()
    assert node.wait_for_frames(1, 120.0), node.counters
    assert sink.wait(1)
    assert node.last_missing == () and node.counters["partial_sets"] == 0, node.counters

    grid = sink.got["grid"][0]
    newest_camera_stamp = max(c.timestamp_us for c in keyframe.cameras.values()) * 1000
    assert grid.header.frame_id == "base_link"
    assert stamp_to_ns(grid.header.stamp) == newest_camera_stamp
    assert list(grid.dimensions) == [200, 200, 16] and abs(grid.voxel_size - 0.4) < 1e-6
    assert (grid.origin.x, grid.origin.y, grid.origin.z) == pytest.approx((-40.0, -40.0, -1.0))
    assert list(grid.labels) == DRIVING_LABELS
    assert grid.random_weights and grid.model == "random-tiny"
    voxels = msg_to_semantic_voxels(grid)
    assert len(voxels.indices) > 1000
    assert voxels.label_ids.max() < len(DRIVING_LABELS)
    # The LiDAR-derived voxels lie around the car, within the grid and mostly near the ground.
    centers = voxels.centers()
    assert np.median(np.linalg.norm(centers[:, :2], axis=1)) < 30.0

    points = sink.got["points"][0]
    assert points.header.frame_id == "base_link" and points.header.stamp == grid.header.stamp
    cloud = pointcloud2_to_numpy(points)
    assert len(cloud) == len(voxels.indices)
    np.testing.assert_allclose(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), centers, atol=1e-5)
    np.testing.assert_array_equal(cloud["label"], voxels.label_ids)

    markers = sink.got["markers"][0].markers
    cubes = [m for m in markers if m.type == Marker.CUBE_LIST]
    assert sum(len(m.points) for m in cubes) == len(voxels.indices)
    assert all(m.header.frame_id == "base_link" for m in markers)
    assert any(m.ns == "warning" for m in markers)  # random weights are flagged in RViz too
    assert node.counters["processed"] == 1 and node.counters["skipped"] == 0


def _bag_messages(bag):
    out = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(deserialize_message(bytes(raw), resolve_message_type(conn.msgtype)))
    return out


def test_bad_input_is_skipped_and_node_recovers(ros, keyframe_bag):
    node = ros(make_node(cameras=["CAM_FRONT"]))
    src = ros(Node("bad_source"))
    msgs = _bag_messages(keyframe_bag)
    static_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    tf_static = src.create_publisher(type(msgs["/tf_static"][0]), "/tf_static", static_qos)
    tf_static.publish(msgs["/tf_static"][0])
    topics = {kind: f"/cam_front/{kind}" for kind in ("image_raw", "camera_info", "depth")}
    pubs = {k: src.create_publisher(type(msgs[t][0]), t, 10) for k, t in topics.items()}
    deadline = time.monotonic() + 20
    while any(p.get_subscription_count() == 0 for p in pubs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    good = {k: msgs[t][0] for k, t in topics.items()}

    def send(image, info, depth, counter=None):
        # Best effort: a publisher can see the subscription before the subscriber has matched it,
        # so the first messages may be lost; resend (same stamps) until the node reacts.
        deadline = time.monotonic() + 60.0
        before = node.counters[counter] if counter else 0
        until = (lambda: node.counters[counter] > before) if counter else None
        while True:
            pubs["camera_info"].publish(info)
            pubs["depth"].publish(depth)
            pubs["image_raw"].publish(image)
            if until is None or wait_until(until, 2.0) or time.monotonic() > deadline:
                return

    # 1. image smaller than its camera_info; 2. unknown encoding; 3. all-NaN/inf depth in an unknown frame.
    small = Image(header=good["image_raw"].header, height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
    send(small, good["camera_info"], good["depth"], counter="skipped")
    assert wait_until(lambda: node.counters["skipped"] >= 1), node.counters
    weird = copy.deepcopy(good["image_raw"])
    weird.encoding = "yuv422_yuy2_weird"
    send(weird, good["camera_info"], good["depth"], counter="skipped")
    assert wait_until(lambda: node.counters["skipped"] >= 2), node.counters
    nan_depth = copy.deepcopy(good["depth"])
    nan_depth.data = np.full(nan_depth.height * nan_depth.width, np.nan, np.float32).tobytes()
    unknown_frame = copy.deepcopy(good["image_raw"])
    unknown_frame.header.frame_id = "no_such_frame"
    send(unknown_frame, good["camera_info"], nan_depth, counter="skipped")
    assert wait_until(lambda: node.counters["skipped"] >= 3), node.counters
    assert node.counters["processed"] == 0
    # A valid frame afterwards is processed.
    send(good["image_raw"], good["camera_info"], good["depth"], counter="processed")
    assert node.wait_for_frames(1, 60.0), node.counters



def test_missing_clip_weights_is_one_clear_error(capsys):
    from occ_audit_ros.nodes.perception_node import main

    code = main(["perception_node", "--ros-args", "-p", "clip_model:=/nonexistent/clip-vit-base-patch32"])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not exist" in err and "huggingface-cli download" in err


def test_bag_without_a_camera_is_named_in_a_warning(ros, keyframe_bag, capfd):
    node = ros(make_node())
    with Reader(keyframe_bag) as reader:
        topics = sorted({c.topic for c in reader.connections if not c.topic.startswith("/cam_front/")})
    player = ros(BagPlayer(keyframe_bag, rate=0.0, topics=topics, wait_for_subscribers=["/cam_back/image_raw"],
                           wait_for_subscribers_timeout=20.0))
    player.play()
    assert wait_until(lambda: node.stream_counts["/cam_back/image_raw"] == 1)
    # The five present cameras are processed once CAM_FRONT is past sync.timeout_s.
    assert node.wait_for_frames(1, 120.0), node.counters
    time.sleep(1.5)  # the silent-stream check runs every second with warn_period_s 0
    err = capfd.readouterr().err
    assert "no message yet on 3 of 18 input topics" in err
    assert "/cam_front/image_raw" in err and "/cam_front/depth" in err
    assert node.counters["received_sets"] >= 1 and node.counters["partial_sets"] == node.counters["received_sets"]
    assert node.last_missing == ("CAM_FRONT",)
    assert set(node.last_result.points_per_camera) == set(node.cameras) - {"CAM_FRONT"}


def test_model_parameters_are_declared_only_with_their_model(ros, capfd):
    """model relevancy: no semabs.* / ago.* parameter exists on the node (ROS lists only the common
    ones); a model parameter given anyway is named in a warning and cannot be set."""
    from rclpy.exceptions import ParameterNotDeclaredException

    from occ_audit_ros.params import COMMON_PARAMS, MODEL_PARAMS

    node = ros(make_node(**{"semabs.camera": "CAM_BACK"}))
    listed = set(node.list_parameters([], 0).names)
    assert {p.name for p in COMMON_PARAMS} <= listed
    assert not any(node.has_parameter(p.name) for group in MODEL_PARAMS.values() for p in group)
    assert not any(n.startswith(("semabs.", "ago.")) for n in listed)
    assert "ignoring ['semabs.camera']: parameters of model 'semabs', but model is 'relevancy'" in capfd.readouterr().err
    with pytest.raises(ParameterNotDeclaredException):
        node.set_parameters([Parameter("semabs.min_probability", value=0.5)])
