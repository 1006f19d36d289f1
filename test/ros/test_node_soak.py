"""Soak: replay many valid frames through the perception node over rclpy; RSS stays flat and the
frame accounting adds up (received sets = processed + dropped + skipped).

CI replays OCC_AUDIT_SOAK_MSGS messages (default 450); ``benchmarks/node_latency.py --soak 1200``
runs >= 1,000 (same driver, occ_audit_ros.nodes.node_checks.run_soak).
"""

import os

import pytest

from node_checks import InputDriver, run_soak, synthetic_frame
from node_fixtures import RosContext, small_node

SOAK_MSGS = int(os.environ.get("OCC_AUDIT_SOAK_MSGS", "450"))


@pytest.fixture
def ros():
    ctx = RosContext()
    yield ctx
    ctx.close()


def test_soak_rss_flat_and_counters_consistent(ros):
    node = ros.add(small_node(**{"diagnostics.period_s": 0.1}))
    driver = ros.add(InputDriver())
    good = synthetic_frame()
    driver.send({"tf_static": good.tf_static})
    assert driver.wait_for_subscribers()
    r = run_soak(node, driver, good, SOAK_MSGS)
    c = r["counters"]
    print(f"soak: {r['messages']} messages ({r['arrived']} arrived) in {r['seconds']:.1f} s, counters {c}; "
          f"RSS after warm-up {r['rss_warm'] / 2**20:.1f} MiB, end {r['rss_end'] / 2**20:.1f} MiB, "
          f"growth {100 * r['growth']:+.2f} %")
    assert c["received_sets"] == c["processed"] + c["dropped"] + c["skipped"]
    assert r["arrived"] > r["messages"] // 2  # most messages arrived
    assert c["processed"] >= 10 and c["skipped"] == 0
    # A leak grows RSS; a shrink (pages freed by earlier tests in this process) is not a node property.
    # CI once failed here on -6.2 % before both samples trimmed the heap (release_freed_heap).
    assert r["growth"] < 0.05


def test_queue_of_one_drops_frames_while_the_worker_is_busy(ros):
    """Frames arriving faster than the worker runs are dropped (only the newest waits), never queued.

    The worker is made slower than the input by a 0.3 s sleep in front of the real pipeline (whether
    the tiny model itself is slower than the input depends on the machine's load).
    """
    import time

    from node_checks import wait_until

    node = ros.add(small_node())
    driver = ros.add(InputDriver())
    good = synthetic_frame()
    driver.send({"tf_static": good.tf_static})
    assert driver.wait_for_subscribers()
    process = node.backend.process

    def slow_process(cameras):
        time.sleep(0.3)
        return process(cameras)

    node.backend.process = slow_process
    for i in range(12):
        driver.send_frame(good.restamped(1_000_000_000 + i * 100_000_000))
        time.sleep(0.03)
    assert wait_until(lambda: node.counters["received_sets"] >= 10, 30.0), node.counters
    assert wait_until(lambda: node._pending is None and node.counters["received_sets"] == sum(
        node.counters[k] for k in ("processed", "dropped", "skipped")), 30.0), node.counters
    c = node.counters
    assert c["dropped"] >= 5 and c["processed"] <= 5, c
    # The newest frame was kept (>= frame 10: best-effort input may lose the very last message).
    assert node.last_result.voxels.stamp_ns >= 1_000_000_000 + 10 * 100_000_000
