"""Soak: replay many valid frames through the perception node over rclpy; RSS stays flat and the
frame accounting adds up (received sets = processed + dropped + skipped).

CI replays OCC_AUDIT_SOAK_MSGS messages (default 450); ``benchmarks/node_latency.py --soak 1200``
runs >= 1,000 (same driver, occ_audit_ros.nodes.node_checks.run_soak).
"""

import os

import pytest

from occ_audit_ros.nodes.node_checks import InputDriver, run_soak, synthetic_frame
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
    assert c["dropped"] > 0  # the drop policy was exercised
    assert abs(r["growth"]) < 0.05
