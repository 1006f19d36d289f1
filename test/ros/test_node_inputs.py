"""Perception node inputs as drivers and converted bags carry them: CompressedImage (JPEG passthrough)
end to end, and a camera that never sends (processed without it, named on /diagnostics).

Real rclpy, real bags written by ``nuscenes_to_bag`` from the simulated scene of ``test/sim_scene.py``
(first keyframe only, so that each replay gives exactly one complete set)."""

import dataclasses

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader

from node_checks import wait_until
from node_fixtures import RosContext
from occ_audit_ros import conventions
from occ_audit_ros.nodes.bag_player import BagPlayer
from occ_audit_ros.nodes.perception_node import PerceptionNode
from occ_audit_ros.tools.nuscenes_to_bag import write_scene_bag

CAMERAS = ["CAM_FRONT", "CAM_BACK"]


@pytest.fixture(scope="module")
def first_sample(tmp_path_factory):
    """The simulated scene reduced to its first keyframe, and its bags with compressed and raw images."""
    from sim_scene import simulated_scene

    from occ_audit_ros import nuscenes_io as nio

    root, _ = simulated_scene(3, True)
    nusc = nio.open_tables(root)
    scene = nio.load_scene(nusc, nio.scene_names(nusc)[0], sweeps=False)
    token = scene.samples[0][0]
    scene = dataclasses.replace(scene, samples=scene.samples[:1],
                                records=[r for r in scene.records if r.sample_token == token])
    out = tmp_path_factory.mktemp("first_sample")
    bags = {fmt: write_scene_bag(scene, out / fmt, image_format=fmt, depth=True) for fmt in ("compressed", "raw")}
    return scene, bags


@pytest.fixture
def ros():
    ctx = RosContext()  # own DDS domain, executor thread
    yield ctx.add
    ctx.close()


def make_node(**overrides):
    params = {"clip_model": "random-tiny", "relevancy.output_stride": 4, "warn_period_s": 0.0,
              "cameras": CAMERAS, **overrides}
    return PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])



def _replay(ros, bag, node, topics=None, wait_for=None):
    image_topic = (conventions.compressed_image_topic if node.values["input.image_transport"] == "compressed"
                   else conventions.image_topic)
    player = ros(BagPlayer(bag, rate=0.0, topics=topics or [],
                           wait_for_subscribers=wait_for or [image_topic(c) for c in node.cameras],
                           wait_for_subscribers_timeout=20.0))
    summary = player.play()
    assert not summary.unmatched_topics
    return summary


def test_compressed_input_gives_the_grid_of_raw_input(ros, first_sample):
    """The JPEG of a CompressedImage decodes (Pillow) to the pixels the raw bag carries (the same JPEG
    decoded by Pillow in the converter), so the two grids are identical."""
    scene, bags = first_sample
    with Reader(bags["compressed"]) as reader:
        topics = {c.topic for c in reader.connections}
    assert conventions.compressed_image_topic("CAM_FRONT") in topics and conventions.image_topic("CAM_FRONT") not in topics
    results = {}
    for fmt in ("compressed", "raw"):
        node = ros(make_node(**{"input.image_transport": fmt}))
        _replay(ros, bags[fmt], node)
        assert node.wait_for_frames(1, 120.0), (fmt, node.counters)
        assert node.counters["partial_sets"] == 0 and node.counters["skipped"] == 0, node.counters
        results[fmt] = node.last_result
    comp, raw = results["compressed"].voxels, results["raw"].voxels
    assert set(results["compressed"].points_per_camera) == set(CAMERAS)
    assert results["compressed"].points_per_camera == results["raw"].points_per_camera
    assert len(comp.indices) > 100
    assert comp.stamp_ns == raw.stamp_ns == scene.records[0].timestamp_us * 1000
    np.testing.assert_array_equal(comp.indices, raw.indices)
    np.testing.assert_array_equal(comp.label_ids, raw.label_ids)
    np.testing.assert_array_equal(comp.scores, raw.scores)
    for cam in CAMERAS:
        np.testing.assert_array_equal(results["compressed"].relevancy[cam], results["raw"].relevancy[cam])


class DiagnosticsSink(Node):
    """Collects /diagnostics."""

    def __init__(self):
        super().__init__("diagnostics_sink")
        self.got: list[DiagnosticArray] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self.got.append,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))


def test_missing_camera_is_processed_without_and_named_on_diagnostics(ros, first_sample, capfd):
    """CAM_FRONT never sends: after sync.timeout_s the set of CAM_BACK alone is processed; /diagnostics
    names CAM_FRONT in ``missing_cameras`` with level WARN, and a warning names it too."""
    _, bags = first_sample
    node = ros(make_node(**{"input.image_transport": "compressed", "diagnostics.period_s": 0.2}))
    sink = ros(DiagnosticsSink())
    with Reader(bags["compressed"]) as reader:
        topics = sorted({c.topic for c in reader.connections if not c.topic.startswith("/cam_front/")})
    _replay(ros, bags["compressed"], node, topics=topics,
            wait_for=[conventions.compressed_image_topic("CAM_BACK")])
    assert node.wait_for_frames(1, 120.0), node.counters
    assert node.counters["received_sets"] == node.counters["partial_sets"] == 1, node.counters
    assert set(node.last_result.points_per_camera) == {"CAM_BACK"}

    def inputs_status():
        for array in list(sink.got):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name == "perception_node: inputs" and values.get("missing_cameras"):
                    return status, values
        return None

    assert wait_until(lambda: inputs_status() is not None, 30.0)
    status, values = inputs_status()
    assert values["missing_cameras"] == "CAM_FRONT"
    assert status.level == DiagnosticStatus.WARN and status.level > DiagnosticStatus.OK
    assert "missing camera: CAM_FRONT" in status.message
    assert values["/cam_front/image_raw/compressed"] == "0" and int(values["/cam_back/image_raw/compressed"]) == 1
    assert "processing a set without CAM_FRONT" in capfd.readouterr().err
