"""End-to-end latency, soak and fuzz of the perception node over real rclpy.

1. Latency + soak: the real nuScenes keyframe (6 cameras: image, camera_info, depth; /tf,
   /tf_static) is published ``--keyframes`` times with stamps shifted by 1 s per pass into a
   ``PerceptionNode`` built from ``config/perception.yaml`` (``--labels`` labels, relevancy preset
   ``fast`` when occ_audit_ros.relevancy offers it, else the single-scale parameters). Each pass
   waits for the node's output, so the figures are per keyframe without queueing. Per-stage seconds
   (queue, convert + TF, relevancy, back-projection, fusion, publish, end to end) are the node's
   own (also on /diagnostics); RSS is sampled after ``--warmup`` keyframes and at the end.
2. Soak: ``--soak`` messages of small synthetic one-camera frames (tiny model) sent faster than the
   worker; RSS after a quarter of the run vs the end (the keyframe replay of part 1 also reports its
   RSS, over fewer messages at the ViT-B/32 cost).
3. Fuzz: ``--fuzz`` malformed items (about 2.9 messages each) into a one-camera node with the tiny
   model, then a valid frame must be answered (``test/node_checks.py``).
4. Lazy outputs: ``--lazy`` synthetic one-camera frames (tiny model, 640 x 480, depth 10 m) answered
   one at a time, in alternating blocks without and with subscribers of ``semantic_voxel_markers``
   and ``semantic_points`` (which the node builds only while subscribed); the node's end-to-end and
   publish seconds per block kind, and their ratio.

CLIP weights are the ViT-B/32 layout with random values by default: the cost is that of the real model.

    .venv/bin/python benchmarks/node_latency.py [--clip-model random] [--keyframes 12] [--soak 1200] [--fuzz 1000]
        [--lazy 40]

Last line: ``RESULT keyframe_s_cpu=<mean end-to-end s> rss_growth_pct=<soak %> ...``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from occ_audit_ros import paths


def _node_checks_attrs(*names: str) -> tuple:
    """Objects of the test suite's node driver ``test/node_checks.py`` (input driver, soak, fuzz),
    loaded from its file so the benchmark drives the node exactly as the tests do."""
    import importlib.util

    module = sys.modules.get("node_checks")
    if module is None:
        spec = importlib.util.spec_from_file_location("node_checks", paths.REPO_ROOT / "test" / "node_checks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["node_checks"] = module
        spec.loader.exec_module(module)
    return tuple(getattr(module, name) for name in names)


def _restamp(msg, shift_ns: int):
    from occ_audit_ros.nodes.conversions import ns_to_stamp, stamp_to_ns

    out = copy.copy(msg)
    if hasattr(out, "transforms"):
        out.transforms = [copy.copy(t) for t in msg.transforms]
        for t in out.transforms:
            t.header = copy.copy(t.header)
            t.header.stamp = ns_to_stamp(stamp_to_ns(t.header.stamp) + shift_ns)
    else:
        out.header = copy.copy(msg.header)
        out.header.stamp = ns_to_stamp(stamp_to_ns(msg.header.stamp) + shift_ns)
    return out


def latency_and_soak(args) -> dict:
    """Part 1 (see module docstring); returns the figures."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from occ_audit_ros import conventions, paths
    from occ_audit_ros.nodes.bag_player import resolve_message_type
    release_freed_heap, rss_bytes = _node_checks_attrs('release_freed_heap', 'rss_bytes')
    from occ_audit_ros.nodes.perception_node import PerceptionNode, sensor_qos
    from occ_audit_ros.nuscenes_io import load_keyframe
    from occ_audit_ros.params import DRIVING_LABELS, relevancy_presets
    from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

    keyframe = load_keyframe(paths.nuscenes_keyframe_dir(), paths.nuscenes_annotations_pkl())
    tmp = Path(tempfile.mkdtemp(prefix="node_latency_"))
    bag = write_keyframe_bag(keyframe, tmp / "bag")
    topics_wanted = {conventions.TF_TOPIC, conventions.TF_STATIC_TOPIC} | {
        f(c) for c in conventions.CAMERA_CHANNELS
        for f in (conventions.image_topic, conventions.camera_info_topic, conventions.depth_topic)}
    msgs: list[tuple[str, object]] = []
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in topics_wanted:
                msgs.append((conn.topic, deserialize_message(bytes(raw), resolve_message_type(conn.msgtype))))
    static = [m for t, m in msgs if t == conventions.TF_STATIC_TOPIC]
    dynamic = [(t, m) for t, m in msgs if t != conventions.TF_STATIC_TOPIC]
    order = {"tf": 0, "camera_info": 1, "depth": 2, "image_raw": 3}
    dynamic.sort(key=lambda tm: order[tm[0].rsplit("/", 1)[-1]])

    preset = args.preset
    if preset == "auto":
        preset = "fast" if "fast" in relevancy_presets() else ""
    labels = DRIVING_LABELS[: args.labels]
    rclpy.init(domain_id=1 + os.getpid() % 100)  # own DDS domain: no cross-talk with other runs
    node = PerceptionNode(cli_args=["--ros-args", "--params-file", str(paths.resource("config/perception.yaml"))],
                          parameter_overrides=[Parameter("clip_model", value=args.clip_model),
                                               Parameter("device", value=args.device),
                                               Parameter("labels", value=labels),
                                               Parameter("relevancy.preset", value=preset)])
    drv = Node("latency_driver")
    pubs = {}
    for t, m in dynamic:
        if t not in pubs:
            qos = QoSProfile(depth=100) if t == conventions.TF_TOPIC else sensor_qos()
            pubs[t] = drv.create_publisher(type(m), t, qos)
    static_pub = drv.create_publisher(type(static[0]), conventions.TF_STATIC_TOPIC, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(drv)
    threading.Thread(target=executor.spin, daemon=True).start()
    deadline = time.monotonic() + 30
    while any(p.get_subscription_count() == 0 for p in pubs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    static_pub.publish(static[0])
    sent, stage_runs, rss_warm, t_wall = 1, [], None, time.perf_counter()
    try:
        for k in range(args.keyframes):
            shift = k * 1_000_000_000
            for t, m in dynamic:
                pubs[t].publish(_restamp(m, shift))
                sent += 1
            if not node.wait_for_frames(k + 1, 300.0):
                raise RuntimeError(f"keyframe {k}: no output within 300 s; counters {node.counters}")
            if k >= args.warmup:
                stage_runs.append(dict(node.last_result.timings_s))
            if args.trim:
                release_freed_heap()
            if k == args.warmup - 1 or (args.warmup == 0 and k == 0):
                gc.collect()
                rss_warm = rss_bytes()
            print(f"  keyframe {k + 1}/{args.keyframes}: end to end {node.last_result.timings_s['end_to_end']:.3f} s, "
                  f"{sent} messages sent, RSS {rss_bytes() / 2**20:.0f} MiB", flush=True)
        gc.collect()
        if args.trim:
            release_freed_heap()
        rss_end = rss_bytes()
        diag = {kv.key: kv.value for kv in node.diagnostics().status[0].values}
        counters = dict(node.counters)
        clip = node.clip
        rel = node.config.relevancy
    finally:
        executor.shutdown()
        node.destroy_node()
        drv.destroy_node()
        rclpy.try_shutdown()
    wall = time.perf_counter() - t_wall
    stats = {s: (statistics.mean(r[s] for r in stage_runs),
                 statistics.stdev(r[s] for r in stage_runs) if len(stage_runs) > 1 else 0.0)
             for s in ("convert", "relevancy", "backproject", "fuse", "publish", "queue", "end_to_end")}
    print(f"CLIP {clip.name} on {clip.device} (random weights: {clip.random_weights}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(node.cameras)} cameras, {len(labels)} labels, "
          f"relevancy preset {preset or '(parameters)'}: tiles {rel.tile_fractions}, stride {rel.stride_fraction}, "
          f"flip {rel.flip}, output stride {rel.output_stride}")
    print(f"{args.keyframes} keyframes, {sent} messages in {wall:.1f} s; per keyframe after {args.warmup} warm-up:")
    for s, (m, sd) in stats.items():
        print(f"  {s:<12} {m:8.3f} s  ± {sd:.3f}")
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    print(f"RSS after warm-up {rss_warm / 2**20:.0f} MiB, at the end {rss_end / 2**20:.0f} MiB: {growth:+.2f} % "
          f"(goal within ±5 %)")
    print(f"counters {counters}; diagnostics end_to_end mean {diag['latency_end_to_end_mean_s']} s "
          f"max {diag['latency_end_to_end_max_s']} s")
    return {"keyframe_s": stats["end_to_end"][0], "rss_growth_pct": growth, "messages": sent,
            "device": clip.device.type, "rss_mib": rss_end / 2**20}


def _small_node_run(fn):
    """Run ``fn(node, driver, good)`` with a one-camera tiny-model node and an input driver."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    InputDriver, synthetic_frame = _node_checks_attrs('InputDriver', 'synthetic_frame')
    from occ_audit_ros.nodes.perception_node import PerceptionNode

    rclpy.init(domain_id=1 + os.getpid() % 100)  # own DDS domain: no cross-talk with other runs
    node = PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "clip_model": "random-tiny", "cameras": ["CAM_FRONT"], "labels": ["car", "road", "tree"],
        "relevancy.output_stride": 4, "warn_period_s": 1.0}.items()])
    driver = InputDriver()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(driver)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        good = synthetic_frame()
        driver.send({"tf_static": good.tf_static})
        driver.wait_for_subscribers()
        return fn(node, driver, good)
    finally:
        executor.shutdown()
        node.destroy_node()
        driver.destroy_node()
        rclpy.try_shutdown()


def soak(args) -> dict:
    """Part 2 (see module docstring); returns the figures."""
    run_soak, = _node_checks_attrs('run_soak')

    def body(node, driver, good):
        r = run_soak(node, driver, good, args.soak)
        c = r["counters"]
        ok = c["received_sets"] == c["processed"] + c["dropped"] + c["skipped"]
        print(f"soak: {r['messages']} messages ({r['arrived']} arrived) in {r['seconds']:.1f} s; counters {c}; "
              f"accounting received = processed + dropped + skipped: {ok}")
        print(f"  RSS after warm-up {r['rss_warm'] / 2**20:.1f} MiB, end {r['rss_end'] / 2**20:.1f} MiB: "
              f"{100 * r['growth']:+.2f} % (goal within ±5 %)")
        return {"soak_msgs": r["messages"], "soak_growth_pct": 100 * r["growth"]}

    return _small_node_run(body)


def fuzz(args) -> dict:
    """Part 3 (see module docstring); returns the figures."""
    run_fuzz, wait_until = _node_checks_attrs('run_fuzz', 'wait_until')

    def body(node, driver, good):
        stats = run_fuzz(node, driver, good, args.fuzz, seed=2)
        before = node.counters["processed"]
        answered = False
        for i in range(30):
            driver.send_frame(good.restamped(4_000_000_000_000 + i))
            if wait_until(lambda: node.counters["processed"] > before, 2.0):
                answered = node.last_result.voxels.stamp_ns == 4_000_000_000_000 + i
                break
        logged = sum(c[0] for c in node.warn_counts.values())
        suppressed = sum(c[1] for c in node.warn_counts.values())
        print(f"fuzz: {stats['items']} malformed items, {stats['messages']} messages in {stats['seconds']:.1f} s; "
              f"kinds {stats['kinds']}")
        print(f"  counters {node.counters}; warnings logged {logged} "
              f"(per kind {dict((k, c[0]) for k, c in node.warn_counts.items())}), suppressed {suppressed} "
              f"(warn_period_s 1.0); valid frame answered afterwards: {answered}")
        crashes = int(not node._worker.is_alive())
        print(f"  fuzz: cases {stats['items']}, crashes {crashes}, permanent failures {int(not answered)}, "
              f"silent outputs {sum(stats['silent'].values())} {stats['silent'] or ''} (goal 0, 0, 0)")
        return {"fuzz_msgs": stats["messages"], "fuzz_answered": answered, "warnings_logged": logged,
                "fuzz_cases": stats["items"], "fuzz_crashes": crashes, "fuzz_permanent": int(not answered),
                "fuzz_silent": sum(stats["silent"].values()),
                "warnings_suppressed": suppressed}

    return _small_node_run(body)


def lazy_outputs(args) -> dict:
    """Part 4 (see module docstring); returns the figures."""
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    wait_until, synthetic_frame = _node_checks_attrs('wait_until', 'synthetic_frame')

    def body(node, driver, _good):
        good = synthetic_frame(height=480, width=640)
        stamp = [10_000_000_000]
        figures = {False: {"end_to_end": [], "publish": []}, True: {"end_to_end": [], "publish": []}}
        got = []

        def frames(n: int, subscribed: bool) -> None:
            for _ in range(n):
                stamp[0] += 100_000_000
                before = node.counters["processed"]
                for _attempt in range(20):  # best effort: resend until answered
                    driver.send_frame(good.restamped(stamp[0]))
                    if wait_until(lambda: node.counters["processed"] > before, 2.0):
                        break
                t = node.last_result.timings_s
                for k in ("end_to_end", "publish"):
                    figures[subscribed][k].append(t[k])

        frames(3, False)  # warm-up
        for k in figures[False]:
            figures[False][k].clear()
        block = max(args.lazy // 4, 1)
        for _ in range(2):
            frames(block, False)
            subs = [driver.create_subscription(MarkerArray, "/semantic_voxel_markers", got.append, 5),
                    driver.create_subscription(PointCloud2, "/semantic_points", got.append, 5)]
            assert wait_until(lambda: node.marker_pub.get_subscription_count() > 0
                              and node.points_pub.get_subscription_count() > 0, 20.0)
            frames(block, True)
            for sub in subs:
                driver.destroy_subscription(sub)
            wait_until(lambda: node.marker_pub.get_subscription_count() == 0
                       and node.points_pub.get_subscription_count() == 0, 20.0)
        voxels = len(node.last_result.voxels.indices)
        mean = {sub: {k: statistics.mean(v) for k, v in f.items()} for sub, f in figures.items()}
        ratio = mean[True]["end_to_end"] / mean[False]["end_to_end"]
        print(f"lazy outputs: {2 * block} frames each, {voxels} voxels per frame; end to end without marker/point "
              f"subscribers {mean[False]['end_to_end']:.4f} s (publish {mean[False]['publish']:.4f} s), with "
              f"{mean[True]['end_to_end']:.4f} s (publish {mean[True]['publish']:.4f} s); ratio with/without "
              f"{ratio:.3f}; {len(got)} marker/point messages received")
        return {"lazy_ratio": ratio, "lazy_without_s": mean[False]["end_to_end"],
                "lazy_with_s": mean[True]["end_to_end"]}

    return _small_node_run(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="random")
    p.add_argument("--device", default="auto")
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--preset", default="auto", help="relevancy preset; auto = 'fast' when available, else ''")
    p.add_argument("--keyframes", type=int, default=12, help="passes over the keyframe (25 messages each)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--soak", type=int, default=1200, help="soak messages (0 = skip)")
    p.add_argument("--trim", action="store_true",
                   help="malloc_trim after every keyframe so that RSS tracks live memory (allocator fragmentation aside)")
    p.add_argument("--fuzz", type=int, default=1000, help="malformed items (0 = skip the fuzz part)")
    p.add_argument("--lazy", type=int, default=40,
                   help="frames of the lazy-output comparison, half without and half with subscribers (0 = skip)")
    args = p.parse_args(argv)
    print(f"1-min load {os.getloadavg()[0]:.2f} at start, {os.cpu_count()} CPUs", flush=True)
    lat = latency_and_soak(args) if args.keyframes else {}
    print(f"1-min load {os.getloadavg()[0]:.2f} after the latency part", flush=True)
    sk = soak(args) if args.soak else {}
    fz = fuzz(args) if args.fuzz else {}
    lz = lazy_outputs(args) if args.lazy else {}
    print(f"1-min load {os.getloadavg()[0]:.2f} at the end")
    fields = []
    if lat:
        fields.append(f"keyframe_s_{lat['device']}={lat['keyframe_s']:.3f}")
    if sk:
        fields.append(f"rss_growth_pct={sk['soak_growth_pct']:.2f} soak_msgs={sk['soak_msgs']}")
    if lat:
        fields.append(f"keyframe_rss_growth_pct={lat['rss_growth_pct']:.2f} keyframe_msgs={lat['messages']}")
    if fz:
        fields.append(f"fuzz_msgs={fz['fuzz_msgs']} fuzz_answered={int(fz['fuzz_answered'])} "
                      f"fuzz_warnings_logged={fz['warnings_logged']} fuzz_cases={fz['fuzz_cases']} "
                      f"fuzz_crashes={fz['fuzz_crashes']} fuzz_permanent_failures={fz['fuzz_permanent']} "
                      f"fuzz_silent_outputs={fz['fuzz_silent']}")
    if lz:
        fields.append(f"lazy_with_over_without={lz['lazy_ratio']:.3f}")
    print("RESULT " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
