"""Fuzz the perception node over real rclpy: malformed messages -> alive, rate-limited warnings,
valid frames answered afterwards; run-time parameter validation; QoS overrides and events; diagnostics.

CI sends OCC_AUDIT_FUZZ_N malformed items (default 400, about 1,100 messages);
``benchmarks/node_latency.py --fuzz 1000`` runs the full count.
"""

import os
import re
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from occ_audit_ros.nodes.conversions import msg_to_semantic_voxels, stamp_to_ns
from node_checks import InputDriver, run_fuzz, synthetic_frame, tf_message_type, wait_until
from node_fixtures import RosContext, small_node

FUZZ_N = int(os.environ.get("OCC_AUDIT_FUZZ_N", "400"))


@pytest.fixture
def ros():
    ctx = RosContext()
    yield ctx
    ctx.close()


class Sink(Node):
    def __init__(self):
        super().__init__("fuzz_sink")
        from occ_audit_ros.msg import SemanticVoxelGrid

        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.grids, self.diags = [], []
        self.create_subscription(SemanticVoxelGrid, "/semantic_voxels", self.grids.append, qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, qos)


def _valid_until_answered(node, driver, sink, frame, stamp_ns, timeout_s=60.0):
    """Send the valid frame (stamped ``stamp_ns``) until a grid with that stamp arrives."""
    deadline = time.monotonic() + timeout_s
    f = frame.restamped(stamp_ns)
    while time.monotonic() < deadline:
        driver.send_frame(f)
        if wait_until(lambda: any(stamp_to_ns(g.header.stamp) == stamp_ns for g in sink.grids), 2.0):
            return next(g for g in sink.grids if stamp_to_ns(g.header.stamp) == stamp_ns)
    raise AssertionError(f"no answer to a valid frame; counters {node.counters}")


def test_fuzz_node_survives_and_rate_limits(ros, capfd):
    period = 1.0
    node = ros.add(small_node(warn_period_s=period))
    sink = ros.add(Sink())
    driver = ros.add(InputDriver())
    good = synthetic_frame()
    driver.send({"tf_static": good.tf_static})
    assert driver.wait_for_subscribers()
    first = _valid_until_answered(node, driver, sink, good, 1_000_000_000)
    assert len(msg_to_semantic_voxels(first).indices) > 0
    processed_before = node.counters["processed"]
    capfd.readouterr()

    t0 = time.monotonic()
    stats = run_fuzz(node, driver, good, FUZZ_N, seed=1)
    n_msgs, kinds = stats["messages"], stats["kinds"]
    # Empty / blank / duplicate label lists and unknown presets are refused, the old labels stay.
    for bad in ([], [""], ["car", "car"], ["  "]):
        res = node.set_parameters([Parameter("labels", Parameter.Type.STRING_ARRAY, bad)])[0]
        assert not res.successful
    assert not node.set_parameters([Parameter("relevancy.preset", value="no_such_preset")])[0].successful
    assert not node.set_parameters([Parameter("grid.voxel_size", value=0.2)])[0].successful  # restart-only
    assert node.backend.config.labels == ["car", "road", "tree"]
    # Let the worker drain, then a valid frame is answered.
    time.sleep(0.5)
    grid = _valid_until_answered(node, driver, sink, good, 3_000_000_000_000)
    elapsed = time.monotonic() - t0
    assert node._worker.is_alive() and ros.thread.is_alive()
    assert node.counters["processed"] > processed_before
    assert list(grid.labels) == ["car", "road", "tree"] and len(msg_to_semantic_voxels(grid).indices) > 0
    assert node.counters["skipped"] + node.counters["rejected_msgs"] > FUZZ_N // 2, node.counters
    assert len(kinds) >= 10, kinds
    if FUZZ_N >= 350:
        assert n_msgs >= 1000, n_msgs

    # Rate limiting: per kind at most one warning per period (+1 for the window edges), and the
    # log holds exactly the counted ones.
    # warn() counts a warning once it is written, so one read holds every counted line (reading stderr
    # repeatedly while the node writes can drop lines: capfd truncates the file between reads).
    err = capfd.readouterr().err
    logged = {k: c[0] for k, c in node.warn_counts.items()}
    n_warn_lines = len(re.findall(r"\[WARN\].*perception_node", err))
    suppressed = sum(c[1] for c in node.warn_counts.values())
    for key, n in logged.items():
        assert n <= elapsed / period + 2, (key, n, elapsed)
    print(f"fuzz: {FUZZ_N} items, {n_msgs} messages in {elapsed:.1f} s; kinds {kinds}; counters {node.counters}; "
          f"warnings logged {logged}, suppressed {suppressed}")
    assert suppressed > sum(logged.values()), (logged, suppressed)
    assert n_warn_lines == sum(logged.values()), (n_warn_lines, logged)

    # A valid label change takes effect on the next frame.
    assert node.set_parameters([Parameter("labels", value=["tree", "car"])])[0].successful
    grid = _valid_until_answered(node, driver, sink, good, 3_001_000_000_000)
    assert list(grid.labels) == ["tree", "car"]

    # /diagnostics: counters, rates, per-stage latency.
    assert wait_until(lambda: len(sink.diags) >= 2, 5.0)
    status = {s.name: s for s in sink.diags[-1].status}
    pipe = {kv.key: kv.value for kv in status["perception_node: pipeline"].values}
    assert processed_before < int(pipe["processed"]) <= node.counters["processed"]
    assert int(pipe["skipped"]) > 0
    for stage in ("queue", "convert", "relevancy", "backproject", "fuse", "publish", "end_to_end"):
        assert float(pipe[f"latency_{stage}_mean_s"]) >= 0.0
    assert float(pipe["latency_end_to_end_max_s"]) >= float(pipe["latency_relevancy_mean_s"]) > 0
    assert pipe["tf_backend"] == "occ_audit_ros.tf_buffer" and pipe["random_weights"] == "true"
    assert any(s.level == DiagnosticStatus.WARN for d in sink.diags for s in d.status)


def test_qos_override_and_incompatible_qos_events(ros, capfd):
    node = ros.add(small_node(**{"qos_overrides./cam_front/image_raw.subscription.reliability": "reliable"}))
    infos = node.get_subscriptions_info_by_topic("/cam_front/image_raw")
    assert [i.qos_profile.reliability for i in infos] == [ReliabilityPolicy.RELIABLE]
    depth_infos = node.get_subscriptions_info_by_topic("/cam_front/depth")
    assert [i.qos_profile.reliability for i in depth_infos] == [ReliabilityPolicy.BEST_EFFORT]
    peer = ros.add(Node("qos_peer"))
    # best-effort image publisher vs the overridden reliable subscription; volatile /tf_static
    # publisher vs the transient-local subscription; a transient-local subscriber of a volatile output.
    from sensor_msgs.msg import Image

    from occ_audit_ros.msg import SemanticVoxelGrid

    peer.create_publisher(Image, "/cam_front/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    peer.create_publisher(tf_message_type(), "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.VOLATILE))
    peer.create_subscription(SemanticVoxelGrid, "/semantic_voxels", lambda m: None,
                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    # The three events arrive in any order; warn() counts a warning once it is written, so stderr is read
    # once, after every topic's warning is counted (polling capfd while the node writes can drop lines).
    topics = ("/cam_front/image_raw", "/tf_static", "/semantic_voxels")
    assert wait_until(lambda: all(node.warn_counts.get(f"qos:{t}", [0])[0] >= 1 for t in topics), 15.0), \
        (node.counters, node.warn_counts)
    err = capfd.readouterr().err
    for topic in topics:
        assert f"incompatible QoS on {topic}" in err, err[-3000:]
    assert node.counters["qos_incompatible"] >= 3, node.counters
    assert "RELIABILITY" in err and "DURABILITY" in err


def test_runtime_relevancy_preset_is_validated_and_applied(ros):
    from occ_audit_ros.params import relevancy_presets

    node = ros.add(small_node())
    sink = ros.add(Sink())
    driver = ros.add(InputDriver())
    good = synthetic_frame()
    driver.send({"tf_static": good.tf_static})
    assert driver.wait_for_subscribers()
    _valid_until_answered(node, driver, sink, good, 1_000_000_000)
    before = node.backend.extractor
    assert not node.set_parameters([Parameter("relevancy.preset", value="no_such_preset")])[0].successful
    presets = relevancy_presets()
    if not presets:  # occ_audit_ros.relevancy offers no presets yet: any name is refused
        assert not node.set_parameters([Parameter("relevancy.preset", value="fast")])[0].successful
        return
    name = "fast" if "fast" in presets else presets[0]
    assert node.set_parameters([Parameter("relevancy.preset", value=name)])[0].successful
    _valid_until_answered(node, driver, sink, good, 2_000_000_000)
    from occ_audit_ros import relevancy

    expected = relevancy.PRESETS[name]
    assert node.backend.extractor is not before
    assert tuple(node.backend.config.relevancy.tile_fractions) == tuple(expected.tile_fractions)
    # back to the relevancy.* parameters
    assert node.set_parameters([Parameter("relevancy.preset", value="")])[0].successful
    _valid_until_answered(node, driver, sink, good, 3_000_000_000)
    assert tuple(node.backend.config.relevancy.tile_fractions) == (1.0,)


def _tf(parent: str, child: str, stamp_ns: int, static: bool = False):
    from geometry_msgs.msg import TransformStamped
    from std_msgs.msg import Header

    from occ_audit_ros.nodes.conversions import ns_to_stamp

    t = TransformStamped(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=parent), child_frame_id=child)
    t.transform.rotation.w = 1.0
    return tf_message_type()(transforms=[t])


def test_tf_graph_faults_are_refused_and_do_not_disable_the_node(ros, capfd):
    """An edge closing a cycle through the camera, a dynamic edge re-parenting the camera and
    thousands of junk frames: each refused edge is one warning, frames keep being answered, the
    buffer keeps at most its cap of frames."""
    node = ros.add(small_node(warn_period_s=0.0))
    sink = ros.add(Sink())
    driver = ros.add(InputDriver())
    good = synthetic_frame()
    cam = good.image.header.frame_id
    driver.send({"tf_static": good.tf_static})
    assert driver.wait_for_subscribers()
    _valid_until_answered(node, driver, sink, good, 1_000_000_000)
    for _ in range(3):  # each offending edge sent three times: one warning each
        driver.send({"tf": _tf(cam, "base_link", 1_000_000_000)})  # base_link under the camera: a cycle
        driver.send({"tf": _tf("map", cam, 1_000_000_000)})  # re-parents the camera (static parent)
    assert wait_until(lambda: node.counters["tf_refused"] >= 6, 10.0), node.counters
    _valid_until_answered(node, driver, sink, good, 2_000_000_000)
    # junk frames beyond the cap are refused, the camera chain stays usable
    for i in range(0, 1500, 50):
        from tf2_msgs.msg import TFMessage

        batch = TFMessage(transforms=[_tf("base_link", f"junk_{j}", 2_000_000_000).transforms[0]
                                      for j in range(i, i + 50)])
        driver.send({"tf": batch})
    assert wait_until(lambda: node.counters["tf_refused"] >= 6 + 1500 - (1000 - 2), 20.0), node.counters  # 2 real frames
    assert len(node.tf.frames()) <= 1000
    _valid_until_answered(node, driver, sink, good, 3_000_000_000)
    err = capfd.readouterr().err
    assert err.count("would close a cycle") == 1, err[-3000:]
    assert err.count("has the static parent") == 1, err[-3000:]
    assert node.counters["skipped"] == 0, node.counters


def test_parameter_extremes_are_refused_whole_and_accepted_changes_apply_after(ros):
    node = ros.add(small_node(warn_period_s=0.0))
    before = dict(node.values)
    declared = {n: node.get_parameter(n).value for n in ("sync.slop_s", "tf.tolerance_s", "warn_period_s", "labels")}
    bad = [("sync.slop_s", 1e300), ("tf.tolerance_s", 1e300), ("tf.tolerance_s", float("nan")),
           ("warn_period_s", float("inf")), ("warn_period_s", -1.0), ("input.max_future_s", 1e30),
           ("labels", [f"label {i}" for i in range(20_000)]), ("labels", ["x" * 1000]), ("labels", ["car", "car"]),
           ("labels", []), ("semabs.min_probability", 0.5)]
    for name, value in bad:
        try:
            results = node.set_parameters([Parameter(name, value=value)])
        except Exception as err:  # noqa: BLE001 - undeclared (semabs.* on a relevancy node) is rclpy's own refusal
            assert name.startswith("semabs."), (name, err)
            continue
        assert not results[0].successful and results[0].reason, (name, value)
    # several at once, one of them bad: nothing changes (no half-updates)
    result = node.set_parameters_atomically([Parameter("labels", value=["bus", "tree"]),
                                             Parameter("warn_period_s", value=float("inf"))])
    assert not result.successful
    assert node.values == before
    assert {n: node.get_parameter(n).value for n in declared} == {**declared, "labels": declared["labels"]}
    assert list(node.get_parameter("labels").value) == list(before["labels"])
    # ranges are in the descriptors (what `ros2 param describe` shows)
    d = node.describe_parameter("grid.voxel_size")
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.01, 10.0)
    assert node.describe_parameter("relevancy.batch_size").integer_range[0].from_value == 1
    # an accepted change takes effect after it is stored (post-set callback)
    assert node.set_parameters_atomically([Parameter("labels", value=["bus", "tree"]),
                                           Parameter("warn_period_s", value=2.0)]).successful
    assert node.values["labels"] == ["bus", "tree"] and node.warn_period_s == 2.0
    assert node._pending_vocab == ["bus", "tree"]


def test_hidden_object_queries_on_a_model_without_them_get_a_refusal(ros):
    """Topic and service: one answer per query, with the reason, before any frame too."""
    from occ_audit_ros.msg import HiddenObjectQuery, HiddenObjectResult
    from occ_audit_ros.srv import HiddenObject

    node = ros.add(small_node())
    client_node = ros.add(Node("query_client"))
    results = []
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    client_node.create_subscription(HiddenObjectResult, "/hidden_object_result", results.append, qos)
    pub = client_node.create_publisher(HiddenObjectQuery, "/hidden_object_query", qos)
    assert wait_until(lambda: pub.get_subscription_count() > 0 and
                      client_node.count_publishers("/hidden_object_result") > 0, 20.0)
    # Volatile topics deliver only once the node's reader has matched the client's writer (discovery
    # is asynchronous on each side): a probe (id 0) is resent until it is answered, then the burst.
    probes = 0
    while not any(r.query.id == 0 for r in results):
        assert probes < 40, "the node never answered a probe query"
        pub.publish(HiddenObjectQuery(id=0, target="car", relation="behind", reference="building"))
        probes += 1
        wait_until(lambda: any(r.query.id == 0 for r in results), 0.5)
    time.sleep(0.5)  # answers of resent probes still in flight
    probes_answered = len(results)
    # Ten bursts of 20 back-to-back queries, each burst sent once the previous one is answered: with
    # ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (the tests' setting) one 200-message burst loses its tail
    # between the client's writer and the node's reader (both reliable, keep last 1000) in DDS.
    burst = lambda: [r for r in results if r.query.id > 0]  # noqa: E731
    for start in range(1, 201, 20):
        for i in range(start, start + 20):
            pub.publish(HiddenObjectQuery(id=i, target="car", relation="behind", reference="building"))
        assert wait_until(lambda: len(burst()) >= start + 19, 30.0), (len(burst()), node.counters["hidden_queries"])
    time.sleep(0.5)
    assert sorted(r.query.id for r in burst()) == list(range(1, 201))  # each exactly once
    assert all("need model 'semabs'" in r.error and len(r.indices) == 0 for r in results)
    client = client_node.create_client(HiddenObject, "/hidden_object")
    assert client.wait_for_service(timeout_sec=20.0)
    future = client.call_async(HiddenObject.Request(query=HiddenObjectQuery(id=7, target="car", relation="behind",
                                                                            reference="building")))
    assert wait_until(future.done, 20.0)
    response = future.result()
    assert not response.success and "need model 'semabs'" in response.message
    assert response.result.query.id == 7 and response.result.error == response.message
    assert node.counters["hidden_queries"] == probes_answered + 201 == node.counters["hidden_refused"]
