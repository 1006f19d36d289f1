"""Soak: replay many valid frames through the perception node over rclpy; RSS stays flat and the
frame accounting adds up (received sets = processed + dropped + skipped).

CI replays OCC_AUDIT_SOAK_MSGS messages (default 450); ``benchmarks/node_latency.py`` replays
>= 1,000 messages of the real keyframe with the ViT-B/32-layout model.
"""

import gc
import os
import time

import pytest

from occ_audit_ros.nodes.node_checks import InputDriver, rss_bytes, synthetic_frame, wait_until
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
    n_frames = SOAK_MSGS // 3
    warm = n_frames // 4
    rss_warm = None
    for i in range(n_frames):
        driver.send_frame(good.restamped(1_000_000_000 + i * 100_000_000))
        time.sleep(0.03)  # faster than the worker: the queue of one drops some sets
        if i == warm:
            assert wait_until(lambda: node._pending is None, 30.0)
            gc.collect()
            rss_warm = rss_bytes()
    last = -1
    while sum(node.stream_counts.values()) != last:  # until deliveries stop (best effort may lose some)
        last = sum(node.stream_counts.values())
        time.sleep(0.5)
    assert wait_until(lambda: node._pending is None, 30.0)
    time.sleep(0.3)
    gc.collect()
    rss_end = rss_bytes()
    growth = (rss_end - rss_warm) / rss_warm
    c = node.counters
    print(f"soak: {3 * n_frames} messages ({sum(node.stream_counts.values())} arrived), counters {c}; "
          f"RSS after warm-up {rss_warm / 2**20:.1f} MiB, end {rss_end / 2**20:.1f} MiB, growth {100 * growth:+.2f} %")
    assert c["received_sets"] == c["processed"] + c["dropped"] + c["skipped"]
    assert sum(node.stream_counts.values()) > 3 * n_frames // 2  # most messages arrived
    assert c["processed"] >= 10 and c["skipped"] == 0
    assert c["dropped"] > 0  # the drop policy was exercised
    assert abs(growth) < 0.05
