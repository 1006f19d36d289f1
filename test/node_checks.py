"""Fuzz and soak drivers for the perception node over real rclpy (used by tests and benchmarks).

* :func:`synthetic_frame`: a small valid camera frame (image, camera_info, depth) plus the static
  transform ``base_link <- <cam>_optical`` it needs; depth is a constant plane, so every pixel
  yields a point in front of the camera.
* :func:`malformed_messages`: an endless, seeded stream of malformed inputs of the kinds the node
  must survive: wrong encodings, sizes that do not match camera_info, NaN/inf depth, zero-size
  images, truncated data, broken intrinsics, unknown frames, stamps out of order or far in the
  future, broken TF messages.
* :class:`InputDriver`: an rclpy node publishing to the perception node's input topics.
* :func:`rss_bytes`: resident set size of this process (Linux /proc).

No pipeline logic lives here; the node under test is the real ``PerceptionNode``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from occ_audit_ros import conventions
from occ_audit_ros.geometry import make_transform
from occ_audit_ros.nodes.perception_node import sensor_qos
from occ_audit_ros.nodes.conversions import matrix_to_transform, ns_to_stamp, numpy_to_image

#: Kinds of malformation produced by :func:`malformed_messages` (the fuzz report counts each).
MALFORMATIONS = ("wrong_encoding", "image_size_mismatch", "depth_size_mismatch", "nan_inf_depth", "zero_size_image",
                 "truncated_data", "bad_intrinsics", "unknown_frame", "stamp_out_of_order", "stamp_far_future",
                 "depth_as_colour", "bad_tf", "unregistered_depth")
#: Malformations whose data is still valid: a published grid without a warning is right for them.
VALID_DATA = ("stamp_out_of_order",)
#: Far-future stamp used by the fuzzer [ns]: 2036-07-18 (near the int32 seconds limit of builtin_interfaces/Time).
FAR_FUTURE_NS = 2_100_000_000 * 1_000_000_000


@dataclass
class Frame:
    """One camera frame as ROS messages; ``tf_static`` holds ``base_link <- <cam>_optical``."""

    image: Image
    info: CameraInfo
    depth: Image
    tf_static: object  # tf2_msgs/TFMessage

    def restamped(self, stamp_ns: int) -> "Frame":
        """A deep copy with all three headers stamped ``stamp_ns``."""
        out = copy.deepcopy(self)
        for m in (out.image, out.info, out.depth):
            m.header.stamp = ns_to_stamp(stamp_ns)
        return out


def tf_message_type():
    """``tf2_msgs/msg/TFMessage`` (built by scripts/build_msgs.py in the venv)."""
    from tf2_msgs.msg import TFMessage

    return TFMessage


def synthetic_frame(channel: str = "CAM_FRONT", stamp_ns: int = 1_000_000_000, height: int = 48, width: int = 64,
                    depth_m: float = 10.0, seed: int = 0) -> Frame:
    """A valid small frame: (H, W, 3) uint8 random RGB, pinhole K with f = W, constant depth [m].

    The camera sits 1.5 m above ``base_link`` looking along +x (REP-103 optical frame: z forward).
    """
    rng = np.random.default_rng(seed)
    frame_id = conventions.sensor_frame(channel)
    image = numpy_to_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8", stamp_ns, frame_id)
    depth = numpy_to_image(np.full((height, width), depth_m, np.float32), "32FC1", stamp_ns, frame_id)
    info = CameraInfo(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id), height=height, width=width,
                      distortion_model="plumb_bob")
    f = float(width)
    info.k = [f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, width / 2, 0.0, 0.0, f, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    T = make_transform([1.0, 0.0, 1.5], [0.5, -0.5, 0.5, -0.5])  # optical (z fwd, x right) -> base_link
    t = TransformStamped(header=Header(stamp=ns_to_stamp(0), frame_id=conventions.BASE_FRAME),
                         child_frame_id=frame_id, transform=matrix_to_transform(T))
    return Frame(image, info, depth, tf_message_type()(transforms=[t]))


def _bad_tf(rng: np.random.Generator, stamp_ns: int):
    kind = int(rng.integers(0, 4))
    t = TransformStamped(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="map"), child_frame_id="odom_fuzz")
    if kind == 0:
        t.transform.rotation.w = float("nan")
    elif kind == 1:
        t.child_frame_id = "map"  # its own parent
    elif kind == 2:
        t.header.frame_id = ""
    else:
        t.header.stamp = ns_to_stamp(FAR_FUTURE_NS)
        t.transform.rotation.w = 1.0
    return tf_message_type()(transforms=[t])


def malformed_messages(good: Frame, seed: int = 0, start_ns: int = 2_000_000_000) -> Iterator[tuple[str, dict]]:
    """Endless seeded stream of ``(malformation, {"image"|"info"|"depth"|"tf": msg})``.

    Each item is one frame's worth of messages with one malformation (the other streams valid),
    so the synchroniser completes a set and the worker meets the bad input; ``bad_tf`` items
    carry only a ``/tf`` message. Stamps increase by 50 ms per item except where the
    malformation is the stamp itself.
    """
    rng = np.random.default_rng(seed)
    stamp = start_ns
    while True:
        stamp += 50_000_000
        kind = MALFORMATIONS[int(rng.integers(0, len(MALFORMATIONS)))]
        if kind == "bad_tf":
            yield kind, {"tf": _bad_tf(rng, stamp)}
            continue
        f = good.restamped(stamp)
        if kind == "wrong_encoding":
            f.image.encoding = str(rng.choice(["yuv422", "bayer_rggb8", "", "rgb8\x00", "16UC3", "jpeg"]))
        elif kind == "image_size_mismatch":
            h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            f.image.height, f.image.width, f.image.step, f.image.data = h, w, 3 * w, bytes(3 * w * h)
        elif kind == "depth_size_mismatch":
            f.depth.height += int(rng.integers(1, 5))
        elif kind == "nan_inf_depth":
            n = f.depth.height * f.depth.width
            values = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -5.0], np.float32), n)
            f.depth.data = values.astype("<f4").tobytes()
        elif kind == "zero_size_image":
            target = f.image if rng.integers(0, 2) else f.depth
            target.height, target.width, target.step, target.data = 0, 0, 0, b""
            f.info.height, f.info.width = 0, 0
        elif kind == "truncated_data":
            target = f.image if rng.integers(0, 2) else f.depth
            target.data = bytes(target.data)[: int(rng.integers(0, len(target.data)))]
        elif kind == "bad_intrinsics":
            f.info.k = list(rng.choice([[0.0] * 9, [float("nan")] * 9, [1.0, 0, 0, 5.0, 1.0, 0, 0, 0, 1.0]]))
        elif kind == "unknown_frame":
            f.image.header.frame_id = f"no_such_frame_{int(rng.integers(0, 1000))}"
        elif kind == "stamp_out_of_order":
            f = good.restamped(stamp - int(rng.integers(1, 40)) * 1_000_000_000)
        elif kind == "stamp_far_future":
            f = good.restamped(FAR_FUTURE_NS + int(rng.integers(0, 10**9)))
        elif kind == "depth_as_colour":
            f.depth.encoding = "rgb8"
        elif kind == "unregistered_depth":
            f.depth.header.frame_id = str(rng.choice(["lidar_top", "cam_front_depth_optical", "base_link"]))
        yield kind, {"info": f.info, "depth": f.depth, "image": f.image}


class InputDriver(Node):
    """Publishes to the perception node's input topics of one camera, plus /tf and /tf_static.

    Args:
        channel: camera name (``CAM_FRONT`` -> /cam_front/{image_raw,camera_info,depth}).
    """

    def __init__(self, channel: str = "CAM_FRONT", name: str = "input_driver") -> None:
        super().__init__(name)
        static_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        TFMessage = tf_message_type()
        self.pubs = {
            "image": self.create_publisher(Image, conventions.image_topic(channel), sensor_qos()),
            "info": self.create_publisher(CameraInfo, conventions.camera_info_topic(channel), sensor_qos()),
            "depth": self.create_publisher(Image, conventions.depth_topic(channel), sensor_qos()),
            "tf": self.create_publisher(TFMessage, conventions.TF_TOPIC, QoSProfile(depth=100)),
            "tf_static": self.create_publisher(TFMessage, conventions.TF_STATIC_TOPIC, static_qos),
        }
        self.sent = 0

    def wait_for_subscribers(self, timeout_s: float = 20.0) -> bool:
        """True once every camera topic and /tf_static has a subscriber."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.pubs[k].get_subscription_count() > 0 for k in ("image", "info", "depth", "tf_static")):
                return True
            time.sleep(0.05)
        return False

    def send(self, msgs: dict) -> None:
        """Publish ``{"info"|"depth"|"image"|"tf"|"tf_static": msg}`` in that order (image last)."""
        for key in ("tf_static", "tf", "info", "depth", "image"):
            if key in msgs:
                self.pubs[key].publish(msgs[key])
                self.sent += 1

    def send_frame(self, frame: Frame) -> None:
        """Publish a frame's info, depth and image."""
        self.send({"info": frame.info, "depth": frame.depth, "image": frame.image})


def release_freed_heap() -> None:
    """``gc.collect()`` then glibc ``malloc_trim(0)``: hand freed heap pages back to the OS.

    Without the trim, RSS depends on when glibc happens to return pages freed earlier in the process
    (in a pytest run: by other tests), which moved a soak's RSS by -6 % with no change in the node.
    A no-op trim where glibc is absent (musl, macOS).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def rss_bytes() -> int:
    """Resident set size of this process [bytes] (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_until(pred, timeout_s: float = 30.0, period_s: float = 0.02) -> bool:
    """Poll ``pred()`` until it is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period_s)
    return bool(pred())


def _decodes(image) -> bool:
    """True when the node's image conversion accepts ``image`` (then it is valid input)."""
    from occ_audit_ros.nodes.conversions import rgb_from_image_msg

    try:
        rgb_from_image_msg(image)
        return True
    except ValueError:
        return False


def run_fuzz(node, driver: InputDriver, good: Frame, n_items: int, seed: int = 1) -> dict:
    """Send ``n_items`` items of :func:`malformed_messages` to ``node`` through ``driver``.

    Paced so that the worker meets (almost) every malformed set instead of the queue-of-one drop
    policy: after each item, wait (<= 0.5 s) for its camera messages to arrive and for the worker to
    take the set.

    A *silent output* is an item of a malformation outside :data:`VALID_DATA` whose frame was
    published while the node counted no warning (logged or suppressed), skip or rejection for it:
    bad input turned into a grid without a word. A ``wrong_encoding`` image whose encoding the
    node decodes (yuv422, Bayer: self-consistent messages) counts as valid data.

    Returns:
        ``{"items", "messages", "seconds", "kinds": {malformation: count}, "silent": {malformation: count}}``.
    """
    def noticed() -> int:
        c = node.counters
        return sum(n[0] + n[1] for n in node.warn_counts.values()) + c["skipped"] + c["rejected_msgs"]

    t0 = time.monotonic()
    sent_before = driver.sent
    kinds: dict[str, int] = {}
    silent: dict[str, int] = {}
    for _, (kind, msgs) in zip(range(n_items), malformed_messages(good, seed=seed)):
        arrived = sum(node.stream_counts.values())
        processed, seen = node.counters["processed"], noticed()
        driver.send(msgs)
        kinds[kind] = kinds.get(kind, 0) + 1
        n_cam = len([k for k in msgs if k != "tf"])
        wait_until(lambda: sum(node.stream_counts.values()) >= arrived + n_cam, 0.5, 0.001)
        wait_until(lambda: node._pending is None, 1.0, 0.001)
        c = node.counters
        wait_until(lambda: c["received_sets"] <= c["processed"] + c["dropped"] + c["skipped"], 1.0, 0.001)
        valid = kind in VALID_DATA or (kind == "wrong_encoding" and _decodes(msgs["image"]))
        if not valid and node.counters["processed"] > processed and noticed() == seen:
            silent[kind] = silent.get(kind, 0) + 1
    return {"items": n_items, "messages": driver.sent - sent_before, "seconds": time.monotonic() - t0, "kinds": kinds,
            "silent": silent}


def run_soak(node, driver: InputDriver, good: Frame, n_msgs: int, pace_s: float = 0.03,
             warm_fraction: float = 0.25) -> dict:
    """Replay ``n_msgs`` messages (valid frames, 3 messages each, stamps 100 ms apart) into ``node``.

    Frames are sent every ``pace_s`` seconds, faster than the worker, so the queue of one drops
    some. RSS is sampled (after :func:`release_freed_heap`) once ``warm_fraction`` of the frames were sent and
    the worker is idle, and again at the end once deliveries stopped and the worker is idle.

    Returns:
        ``{"messages", "arrived", "rss_warm", "rss_end", "growth" (fraction), "seconds", "counters"}``.
    """
    def idle() -> bool:  # every complete set is accounted for: nothing waiting or in flight
        c = node.counters
        return node._pending is None and c["received_sets"] == c["processed"] + c["dropped"] + c["skipped"]

    n_frames = n_msgs // 3
    warm = int(n_frames * warm_fraction)
    rss_warm = None
    t0 = time.monotonic()
    for i in range(n_frames):
        driver.send_frame(good.restamped(1_000_000_000 + i * 100_000_000))
        time.sleep(pace_s)
        if i == warm:
            wait_until(idle, 60.0)
            release_freed_heap()
            rss_warm = rss_bytes()
    last = -1
    while sum(node.stream_counts.values()) != last:  # until deliveries stop (best effort may lose some)
        last = sum(node.stream_counts.values())
        time.sleep(0.5)
    wait_until(idle, 60.0)
    time.sleep(0.3)
    release_freed_heap()
    rss_end = rss_bytes()
    return {"messages": 3 * n_frames, "arrived": sum(node.stream_counts.values()), "rss_warm": rss_warm,
            "rss_end": rss_end, "growth": (rss_end - rss_warm) / rss_warm, "seconds": time.monotonic() - t0,
            "counters": dict(node.counters)}
