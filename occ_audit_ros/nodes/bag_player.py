"""``bag_player``: replay a rosbag2 (mcap or sqlite3) into a live ROS 2 graph.

This stands in for ``ros2 bag play`` where only PyPI ROS 2 wheels are installed (no rosbag2_py, no
``ros2`` CLI). The bag is read with :class:`rosbags.rosbag2.Reader` and every message is published
as the *recorded CDR bytes* (``Publisher.publish(bytes)`` goes to ``rcl_publish_serialized_message``:
no deserialisation, no copy into a Python message), in recorded order, with the recorded timing
divided by ``rate``.

Message types are looked up by name at run time (``"pkg/msg/Type"`` ->
``importlib.import_module("pkg.msg").Type``), so types generated later (``tf2_msgs``,
``occ_audit_ros.msg`` from ``scripts/build_msgs.py``) need no code change here; a type whose Python
package is missing raises :class:`UnknownMessageTypeError` naming that package.

QoS used for playback (see :func:`playback_qos`):

* ``/tf_static`` and every topic whose recorded offered QoS is transient-local: RELIABLE +
  TRANSIENT_LOCAL, KEEP_LAST. ``/tf_static`` gets ``depth = number of /tf_static messages in the
  bag`` (at least 1): each static broadcaster publishes its own TFMessage and tf2 listeners merge
  them, so a late joiner must get *all* of them, not only the last (a converter that puts every
  static transform in one message, like ``nuscenes_to_bag``, needs depth 1). Other latched topics
  keep the recorded depth (latest-value semantics, e.g. a map).
* Everything else (sensor data, ``/tf``, ``/clock``): RELIABLE + VOLATILE, KEEP_LAST
  ``qos_depth`` (default 10). Not best-effort even if the recorder offered best-effort: in DDS the
  *subscriber* decides, a RELIABLE writer matches both RELIABLE and BEST_EFFORT readers, whereas a
  BEST_EFFORT writer would silently not match a RELIABLE reader (tests would lose everything).

``/clock``: when ``publish_clock`` is true (default) and the replayed topics do not include a
recorded ``/clock``, the player publishes ``rosgraph_msgs/Clock`` with the bag time: once just
before each message whose time is later than the last clock published (so a ``use_sim_time`` node
never receives data stamped in its future) and at ``clock_rate`` Hz while waiting between
messages. When the bag has its own ``/clock`` (``nuscenes_to_bag`` writes one) that recorded
clock is replayed as any other topic and none is synthesised, so there is exactly one clock source.
The player itself always runs on wall time; do not give it ``use_sim_time``.

A truncated mcap (no summary, index or footer: rosbags' reader refuses it) is read sequentially
(:func:`salvage_mcap`, :func:`iter_truncated_mcap`): one warning names the file, the byte offset,
the number of complete messages and the last stamp, and those messages are played in file order.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

from occ_audit_ros.conventions import CLOCK_TOPIC, TF_STATIC_TOPIC
from occ_audit_ros.nodes.parameters import declare_parameters, overrides_from_kwargs, own_arguments
from occ_audit_ros.params import ParamSpec

CLOCK_TYPE = "rosgraph_msgs/msg/Clock"


# ---------------------------------------------------------------------------------------------
# Errors and message type lookup (shared with bag_recorder)
# ---------------------------------------------------------------------------------------------


class BagNotFoundError(FileNotFoundError):
    """The bag path given to the player does not exist or is not a readable rosbag2."""


class UnknownMessageTypeError(LookupError):
    """A message type named in a bag or on the command line has no importable Python class."""


def normalize_type_name(type_name: str) -> str:
    """Canonical ROS 2 type name: ``"pkg/Type"`` -> ``"pkg/msg/Type"``; ``"pkg/msg/Type"`` unchanged.

    Raises:
        UnknownMessageTypeError: when the name is not of the form ``pkg/Type`` or ``pkg/msg/Type``.
    """
    parts = type_name.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise UnknownMessageTypeError(
            f"malformed message type name {type_name!r}: expected 'pkg/msg/Type' (or 'pkg/Type')"
        )
    return "/".join(parts)


@functools.lru_cache(maxsize=None)
def resolve_message_type(type_name: str) -> type:
    """Python message class of a ROS 2 type name, looked up at run time.

    ``"pkg/msg/Type"`` resolves to ``importlib.import_module("pkg.msg").Type``. Cached: the same
    class object is returned for every call, which rclpy needs for ``isinstance`` checks.

    Args:
        type_name: ``"pkg/msg/Type"`` (``"pkg/Type"`` is accepted and normalised).

    Returns:
        The rosidl-generated message class (usable for publishers and subscriptions).

    Raises:
        UnknownMessageTypeError: the package's Python module is not importable (the message says
            which package and how to get it), the module has no such type, or the attribute is
            not a ROS message class.
    """
    canonical = normalize_type_name(type_name)
    pkg, sub, name = canonical.split("/")
    module_name = f"{pkg}.{sub}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Distinguish "package absent" from a broken generated module importing something absent.
        missing = exc.name or module_name
        if missing in (pkg, module_name):
            hint = (
                "generate it with scripts/build_msgs.py"
                if pkg in ("tf2_msgs", "occ_audit_ros")
                else f"install its Python message package (PyPI wheel 'ros-{pkg.replace('_', '-')}')"
            )
            what = (
                f"Python package {pkg!r} is not installed"
                if missing == pkg
                else f"package {pkg!r} has no module {module_name!r} (messages not generated)"
            )
            raise UnknownMessageTypeError(
                f"message type {canonical!r} is not importable: {what}; {hint}"
            ) from exc
        raise UnknownMessageTypeError(
            f"message type {canonical!r}: importing {module_name!r} failed because module "
            f"{missing!r} is missing ({exc})"
        ) from exc
    except ImportError as exc:
        raise UnknownMessageTypeError(
            f"message type {canonical!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    cls = getattr(module, name, None)
    # rosidl message classes carry their type support through the metaclass.
    if cls is None or not (hasattr(cls, "_TYPE_SUPPORT") or hasattr(cls, "__import_type_support__")):
        raise UnknownMessageTypeError(
            f"message type {canonical!r}: module {module_name!r} has no message class {name!r}"
        )
    return cls


# ---------------------------------------------------------------------------------------------
# Damaged (truncated) mcap files: a sequential read of the data section
# ---------------------------------------------------------------------------------------------

_MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass
class SalvagedMcap:
    """What a sequential scan could read of an mcap whose end (summary, index, footer) is missing.

    Attributes:
        path: the .mcap file.
        connections: rosbags ``Connection``s found before the cut (``msgcount`` = messages read).
        message_count: complete messages read.
        valid_bytes: byte offset up to which the file was read (end of the last complete record).
        size_bytes: size of the file [bytes].
        last_stamp_ns: log time of the last complete message [ns], None when there is none.
        first_stamp_ns: smallest log time read [ns], None when there is none.
        stop_reason: why the scan stopped (rosbags' error at the cut; "" = the data section ended).
    """

    path: Path
    connections: list[Any]
    message_count: int
    valid_bytes: int
    size_bytes: int
    last_stamp_ns: int | None
    first_stamp_ns: int | None
    stop_reason: str

    def describe(self) -> str:
        """One line: where the scan stopped (file, byte offset, messages, last stamp)."""
        pct = 100.0 * self.valid_bytes / self.size_bytes if self.size_bytes else 0.0
        last = "none" if self.last_stamp_ns is None else f"{self.last_stamp_ns / 1e9:.6f} s"
        return (f"{self.path}: read sequentially up to byte {self.valid_bytes} of {self.size_bytes} "
                f"({pct:.1f} %): {self.message_count} complete messages, last stamp {last}"
                + (f"; stopped at: {self.stop_reason.rstrip('.')}" if self.stop_reason else ""))


def _mcap_data_reader(path: Path):
    """A rosbags ``McapReader`` positioned on the data section, without reading summary or footer.

    Raises:
        BagNotFoundError: the file does not start with an mcap magic and ros2 header.
    """
    from rosbags.rosbag2.storage_mcap import McapReader, ReaderError, read_sized

    reader = McapReader(path)
    reader.bio = path.open("rb")
    try:
        if reader.bio.read(8) != _MCAP_MAGIC or reader.bio.read(1) != b"\x01":
            raise BagNotFoundError(f"{path}: not an mcap file (no mcap magic and header record)")
        read_sized(reader.bio)
    except (ReaderError, OSError) as exc:
        reader.bio.close()
        raise BagNotFoundError(f"{path}: mcap header unreadable: {exc}") from exc
    except BaseException:
        reader.bio.close()
        raise
    reader.data_start = reader.bio.tell()
    reader.data_end = path.stat().st_size
    return reader


def _scan_errors() -> tuple[type[BaseException], ...]:
    import struct

    from rosbags.rosbag2.storage_mcap import ReaderError

    # ReaderError: a record cut short; struct.error / TypeError / ValueError: a header cut short
    return (ReaderError, struct.error, TypeError, ValueError, EOFError)


def iter_truncated_mcap(path: str | Path, topics: set[str] | None = None):
    """Complete messages of an mcap in file order, read sequentially (no summary, no index needed).

    Stops silently at the first incomplete record; :func:`salvage_mcap` reports where.

    Args:
        path: the .mcap file (possibly truncated).
        topics: only these topics; None = all.

    Yields:
        ``(connection, log_time_ns, cdr_bytes)``; a chunk is yielded only when it is complete.

    Raises:
        BagNotFoundError: the file is not an mcap (bad magic or header).
    """
    reader = _mcap_data_reader(Path(path))
    try:
        try:
            reader.meta_scan()  # schemas and channels before the cut
        except _scan_errors():
            pass
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        try:
            yield from reader.messages_scan(conns)
        except _scan_errors():
            return
    finally:
        reader.close()


def salvage_mcap(path: str | Path) -> SalvagedMcap:
    """Scan a damaged mcap sequentially: connections, complete messages and where the data stops.

    For an mcap whose end is missing (a recording killed, a copy cut off) rosbags' reader refuses the
    file (it needs the footer and summary); the data section before the cut is still readable record
    by record (MCAP specification, "Records": opcode, uint64 length, content).

    Raises:
        BagNotFoundError: the file is not an mcap (bad magic or header).
    """
    path = Path(path)
    size = path.stat().st_size
    reader = _mcap_data_reader(path)
    reason = ""
    counts: dict[int, int] = {}
    n, first, last, good = 0, None, None, reader.data_start
    try:
        try:
            reader.meta_scan()
        except _scan_errors():
            pass
        try:
            for conn, stamp, _ in reader.messages_scan(list(reader.connections)):
                n += 1
                counts[conn.id] = counts.get(conn.id, 0) + 1
                first = stamp if first is None else min(first, stamp)
                last = stamp
                good = reader.bio.tell()  # after the message, or after the whole (complete) chunk
        except _scan_errors() as exc:
            reason = str(exc) or exc.__class__.__name__
        else:
            good = size
        connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in reader.connections]
    finally:
        reader.close()
    return SalvagedMcap(path, connections, n, good, size, last, first, reason)


def _mcap_of(bag_path: Path) -> Path | None:
    """The single .mcap file of a bag (the file itself or the only one in the directory), else None."""
    if bag_path.is_file():
        return bag_path if bag_path.suffix == ".mcap" else None
    found = sorted(bag_path.glob("*.mcap"))
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------
# Parameters: one table (occ_audit_ros.params.ParamSpec) drives declaration, kwargs overrides and docs
# ---------------------------------------------------------------------------------------------


PLAYER_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("bag", "",
              "Path of the rosbag2 to play: a bag directory (metadata.yaml + mcap/db3) or a single "
              ".mcap / .db3 file. Fixed at construction."),
    ParamSpec("rate", 1.0,
              "Playback speed factor: 2.0 plays twice as fast; 0.0 = as fast as possible (no "
              "waiting). Read when play() starts."),
    ParamSpec("loop", 1,
              "Number of times the bag is played; 0 = forever (until stop()). Each loop replays "
              "the recorded timestamps, so /clock jumps back at a loop start."),
    ParamSpec("start_paused", False,
              "Start playback paused. Setting it at run time pauses (true) or resumes (false) "
              "playback."),
    ParamSpec("topics", [],
              "Include filter: exact topic names to play; empty = all topics in the bag. Fixed "
              "at construction.", array_of=str),
    ParamSpec("delay", 0.0,
              "Seconds (wall) to wait after wait_for_subscribers and before the first message, so "
              "that subscribers finish discovery (a reliable writer that just matched a reader can "
              "still race the reader's own match)."),
    ParamSpec("wait_for_subscribers", [],
              "Topics (published by this player, /clock included) that must each have at least "
              "one matched subscriber before playback starts.", array_of=str),
    ParamSpec("wait_for_subscribers_timeout", 10.0,
              "Seconds to wait for wait_for_subscribers; on timeout a warning names the topics "
              "still unmatched and playback starts anyway."),
    ParamSpec("publish_clock", True,
              "Publish rosgraph_msgs/Clock on /clock with the bag time, unless the replayed topics "
              "include a recorded /clock (then that one is replayed instead). Fixed at "
              "construction."),
    ParamSpec("clock_rate", 40.0,
              "Hz (wall) of the synthesised /clock while waiting between messages (it is also "
              "published before each later message); 0 = only before messages."),
    ParamSpec("qos_depth", 10,
              "KEEP_LAST depth of the RELIABLE volatile publishers (sensor topics, /tf, /clock). "
              "Raise it for rate 0 with slow subscribers. Fixed at construction."),
    ParamSpec("skip_unknown_types", False,
              "Skip (with a warning) topics whose message type is not importable instead of "
              "failing. Fixed at construction."),
    ParamSpec("ack_timeout", 30.0,
              "Seconds (wall) play() waits at the end for matched reliable subscribers to "
              "acknowledge everything published; 0 = do not wait. Large messages travel as many "
              "fragments; a burst of them (a nuScenes keyframe: ~80 MB in 40 ms) overflows the "
              "transport and is repaired by retransmission over seconds, and would be lost if "
              "the player exited at once. Returns at once when all is acknowledged."),
    ParamSpec("progress_period", 5.0,
              "Seconds (wall) between progress log lines; 0 = no progress lines."),
)
_FIXED_PLAYER_PARAMETERS = {"bag", "topics", "publish_clock", "qos_depth", "skip_unknown_types"}


# ---------------------------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------------------------


def _is_transient_local(profile: Any) -> bool:
    """Whether a rosbags ``Qos`` offered profile is transient-local (works for all bag versions)."""
    durability = getattr(profile, "durability", None)
    return getattr(durability, "name", str(durability)).upper() == "TRANSIENT_LOCAL"


def playback_qos(topic: str, offered_profiles: Sequence[Any], message_count: int, depth: int) -> QoSProfile:
    """QoS profile the player publishes ``topic`` with.

    Args:
        topic: fully qualified topic name.
        offered_profiles: rosbags ``Qos`` profiles recorded for the topic (may be empty).
        message_count: number of messages of the topic in the bag.
        depth: KEEP_LAST depth for volatile topics (``qos_depth``).

    Returns:
        RELIABLE + TRANSIENT_LOCAL for ``/tf_static`` (depth = ``message_count``, at least 1, so a
        late joiner gets every static broadcaster's message) and for topics recorded as
        transient-local (depth = largest recorded KEEP_LAST depth, at least 1); RELIABLE + VOLATILE
        with ``depth`` otherwise (the subscriber picks best effort if it wants; see module doc).
    """
    if topic == TF_STATIC_TOPIC or any(_is_transient_local(p) for p in offered_profiles):
        if topic == TF_STATIC_TOPIC:
            latched_depth = max(1, message_count)
        else:
            recorded = [int(getattr(p, "depth", 0) or 0) for p in offered_profiles]
            latched_depth = max([1, *recorded])
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=latched_depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, depth),
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


# ---------------------------------------------------------------------------------------------
# Player
# ---------------------------------------------------------------------------------------------


@dataclass
class TopicPlan:
    """How one bag topic is replayed: its type, class, recorded count and publishing QoS."""

    topic: str
    type_name: str
    msg_class: type
    message_count: int
    qos: QoSProfile


@dataclass
class PlaybackSummary:
    """Result of :meth:`BagPlayer.play`.

    Attributes:
        messages_published: total messages published from the bag (all loops, /clock synthesised
            messages not included).
        per_topic: messages published per topic.
        clock_messages: synthesised /clock messages published.
        loops_completed: full passes over the bag.
        wall_duration_s: wall time of the playback itself [s] (after waiting and delay).
        stopped: True when :meth:`BagPlayer.stop` or a ROS shutdown ended playback early.
        unmatched_topics: wait_for_subscribers topics that had no subscriber at the timeout.
        unacked_topics: topics whose reliable subscribers had not acknowledged every message
            within ``ack_timeout`` (empty = everything delivered, as far as DDS knows).
    """

    messages_published: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    loops_completed: int = 0
    wall_duration_s: float = 0.0
    stopped: bool = False
    unmatched_topics: list[str] = field(default_factory=list)
    unacked_topics: list[str] = field(default_factory=list)


class BagPlayer(Node):
    """rclpy node that replays a rosbag2 (mcap or sqlite3), publishing raw CDR bytes.

    Construction opens the bag (to read its topics, types, counts and QoS), resolves every message
    class and creates one publisher per topic (plus ``/clock`` if synthesised), so subscribers can
    start discovering right away. :meth:`play` then blocks the calling thread while it publishes;
    an executor must spin the node in *another* thread (parameter services, and so that
    ``start_paused`` can be changed at run time). ``done`` (a :class:`threading.Event`) and
    ``done_future`` (an rclpy :class:`~rclpy.task.Future` whose result is the
    :class:`PlaybackSummary`) are set when playback ends.

    Parameters (ROS, see ``PLAYER_PARAMETERS``): ``bag``, ``rate``, ``loop``, ``start_paused``,
    ``topics``, ``delay``, ``wait_for_subscribers``, ``wait_for_subscribers_timeout``,
    ``publish_clock``, ``clock_rate``, ``qos_depth``, ``skip_unknown_types``, ``ack_timeout``,
    ``progress_period``.

    Args:
        bag: bag path; shorthand for the ``bag`` parameter.
        node_name: ROS node name.
        namespace: ROS namespace (relative topic names in a bag are not expected: bags store
            absolute names, so the namespace only affects the node's own services).
        context: rclpy context (``None`` = global default).
        parameter_overrides: extra ``Parameter`` overrides.
        **params: any parameter of ``PLAYER_PARAMETERS`` by name (e.g. ``rate=2.0``,
            ``topics=["/a"]``), coerced to its declared type.

    Raises:
        BagNotFoundError: the bag path is empty, does not exist or cannot be opened as rosbag2.
        UnknownMessageTypeError: a topic's type is not importable (unless ``skip_unknown_types``).
        ValueError: invalid parameter values (negative rate, negative loop, a topic in
            ``wait_for_subscribers`` that this player does not publish, a topic with two types).
    """

    def __init__(
        self,
        bag: str | Path | None = None,
        *,
        node_name: str = "bag_player",
        namespace: str | None = None,
        context: Context | None = None,
        parameter_overrides: list[Parameter] | None = None,
        **params: Any,
    ) -> None:
        if bag is not None:
            params["bag"] = str(bag)
        overrides = list(parameter_overrides or []) + overrides_from_kwargs(PLAYER_PARAMETERS, params)
        super().__init__(node_name, namespace=namespace, context=context, parameter_overrides=overrides)
        try:
            self._setup()
        except BaseException:
            self.destroy_node()  # do not leave a half-built node in the context's graph
            raise

    def _setup(self) -> None:
        """Body of the constructor: parameters, bag metadata, publishers."""
        declare_parameters(self, PLAYER_PARAMETERS)

        self.done = threading.Event()
        self.done_future: Future = Future()
        self._stop = threading.Event()
        # Set = running, cleared = paused; stop() sets it so a paused wait returns at once.
        self._resume = threading.Event()
        if not self.get_parameter("start_paused").value:
            self._resume.set()
        self._play_lock = threading.Lock()
        self._last_clock_ns = -1
        self._clock_count = 0

        self._bag_path = self._check_bag_path(self.get_parameter("bag").value)
        self._plans = self._open_bag()
        #: True when this node publishes its own /clock (publish_clock and no recorded /clock).
        self.synthesize_clock = (
            bool(self.get_parameter("publish_clock").value) and CLOCK_TOPIC not in self._plans
        )
        if self.get_parameter("publish_clock").value and not self.synthesize_clock:
            self.get_logger().info("bag has /clock: replaying the recorded clock, not synthesising one")

        self._bag_publishers: dict[str, Any] = {
            plan.topic: self.create_publisher(plan.msg_class, plan.topic, plan.qos)
            for plan in self._plans.values()
        }
        self._clock_class = None
        self._clock_publisher = None
        if self.synthesize_clock:
            self._clock_class = resolve_message_type(CLOCK_TYPE)
            self._clock_publisher = self.create_publisher(
                self._clock_class, CLOCK_TOPIC, playback_qos(CLOCK_TOPIC, (), 0, self._qos_depth())
            )

        published = set(self._bag_publishers) | ({CLOCK_TOPIC} if self.synthesize_clock else set())
        unknown = [t for t in self.get_parameter("wait_for_subscribers").value if t not in published]
        if unknown:
            raise ValueError(
                f"wait_for_subscribers names topics this player does not publish: {unknown}; "
                f"published: {sorted(published)}"
            )
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- setup ---------------------------------------------------------------------------------

    def _qos_depth(self) -> int:
        depth = int(self.get_parameter("qos_depth").value)
        if depth < 1:
            raise ValueError(f"qos_depth must be >= 1, got {depth}")
        return depth

    @staticmethod
    def _check_bag_path(value: str) -> Path:
        if not value:
            raise BagNotFoundError("no bag given: set the 'bag' parameter (bag_player --bag PATH)")
        path = Path(value).expanduser()
        if not path.exists():
            raise BagNotFoundError(f"bag not found: {path}")
        if path.is_dir() and not (path / "metadata.yaml").exists():
            raise BagNotFoundError(f"{path} is a directory without metadata.yaml: not a rosbag2 bag")
        return path

    def _reader(self):
        """A new (unopened) rosbags Reader of the bag; errors become :class:`BagNotFoundError`."""
        from rosbags.rosbag2 import Reader, ReaderError

        try:
            return Reader(self._bag_path)
        except (ReaderError, FileNotFoundError) as exc:
            raise BagNotFoundError(f"cannot open bag {self._bag_path}: {exc}") from exc

    def _open_bag(self) -> dict[str, TopicPlan]:
        """Read the bag's topics and build one :class:`TopicPlan` per replayed topic."""
        from rosbags.rosbag2 import ReaderError

        include = list(self.get_parameter("topics").value)
        skip_unknown = bool(self.get_parameter("skip_unknown_types").value)
        depth = self._qos_depth()
        self._salvaged: SalvagedMcap | None = None
        try:
            reader = self._reader()
            reader.open()
        except (BagNotFoundError, ReaderError, OSError, ValueError) as exc:
            mcap = _mcap_of(self._bag_path)
            if mcap is None:
                raise BagNotFoundError(f"cannot open bag {self._bag_path}: {exc}") from exc
            # a truncated mcap: rosbags needs its summary and footer; read the data section instead
            salvaged = salvage_mcap(mcap)
            if salvaged.message_count == 0:
                raise BagNotFoundError(f"cannot open bag {self._bag_path}: {exc}; {salvaged.describe()}") from exc
            self.get_logger().warning(f"bag {self._bag_path} is damaged ({exc}); {salvaged.describe()}; "
                                      "playing those messages in file order")
            self._salvaged = salvaged
            connections = salvaged.connections
            total = salvaged.message_count
            duration_s = (salvaged.last_stamp_ns - salvaged.first_stamp_ns) / 1e9
        else:
            try:
                connections = list(reader.connections)
                total = reader.message_count
                duration_s = reader.duration / 1e9 if total else 0.0
            finally:
                reader.close()

        by_topic: dict[str, list[Any]] = {}
        for conn in connections:
            by_topic.setdefault(conn.topic, []).append(conn)
        missing = [t for t in include if t not in by_topic]
        if missing:
            self.get_logger().warning(f"topics {missing} given in 'topics' are not in the bag")

        plans: dict[str, TopicPlan] = {}
        for topic, conns in sorted(by_topic.items()):
            if include and topic not in include:
                continue
            types = sorted({c.msgtype for c in conns})
            if len(types) != 1:
                raise ValueError(f"topic {topic} has several types in the bag ({types}); cannot replay it")
            try:
                msg_class = resolve_message_type(types[0])
            except UnknownMessageTypeError as exc:
                if not skip_unknown:
                    raise UnknownMessageTypeError(f"topic {topic}: {exc}") from exc
                self.get_logger().warning(f"skipping topic {topic}: {exc}")
                continue
            offered = [p for c in conns for p in getattr(c.ext, "offered_qos_profiles", [])]
            count = sum(c.msgcount for c in conns)
            plans[topic] = TopicPlan(
                topic, normalize_type_name(types[0]), msg_class, count,
                playback_qos(topic, offered, count, depth),
            )

        self._message_count = sum(p.message_count for p in plans.values())
        self._duration_s = duration_s
        self.get_logger().info(
            f"opened {self._bag_path}: {total} messages, {duration_s:.3f} s bag time, "
            f"{len(by_topic)} topics; playing {len(plans)} topics, {self._message_count} messages"
        )
        for plan in plans.values():
            latched = plan.qos.durability == DurabilityPolicy.TRANSIENT_LOCAL
            durability = "TRANSIENT_LOCAL" if latched else "VOLATILE"
            self.get_logger().info(
                f"  {plan.topic} [{plan.type_name}] x{plan.message_count}, "
                f"RELIABLE {durability} depth {plan.qos.depth}"
            )
        return plans

    # -- public state --------------------------------------------------------------------------

    @property
    def salvaged(self) -> SalvagedMcap | None:
        """For a damaged mcap that rosbags could not open: what the sequential read found (else None)."""
        return self._salvaged

    @property
    def bag_path(self) -> Path:
        """Path of the bag being played."""
        return self._bag_path

    @property
    def topics(self) -> dict[str, TopicPlan]:
        """Replayed topics (after the include filter and unknown-type skipping), by name."""
        return dict(self._plans)

    @property
    def message_count(self) -> int:
        """Messages of the replayed topics in one pass over the bag."""
        return self._message_count

    @property
    def paused(self) -> bool:
        """Whether playback is paused."""
        return not self._resume.is_set()

    def pause(self) -> None:
        """Pause playback (the synthesised /clock stops advancing). Thread-safe."""
        self._resume.clear()
        self.get_logger().info("paused")

    def resume(self) -> None:
        """Resume a paused playback (also ends ``start_paused``). Thread-safe."""
        self._resume.set()
        self.get_logger().info("resumed")

    def stop(self) -> None:
        """Ask a running :meth:`play` to return as soon as possible. Thread-safe, idempotent."""
        self._stop.set()
        self._resume.set()

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name in _FIXED_PLAYER_PARAMETERS:
                return SetParametersResult(
                    successful=False, reason=f"{param.name} is fixed at construction; create a new player"
                )
        for param in params:
            if param.name == "start_paused":
                self.pause() if param.value else self.resume()
        return SetParametersResult(successful=True)

    # -- playback ------------------------------------------------------------------------------

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> list[str]:
        """Block until each topic of ``topics`` has a matched subscriber, or ``timeout_s`` passed.

        Args:
            topics: topics published by this player (``/clock`` included when synthesised).
            timeout_s: wall seconds.

        Returns:
            The topics still without subscribers (empty on success).
        """
        pubs = dict(self._bag_publishers)
        if self._clock_publisher is not None:
            pubs[CLOCK_TOPIC] = self._clock_publisher
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            pending = [t for t in topics if pubs[t].get_subscription_count() == 0]
            if not pending or self._stop.is_set() or time.monotonic() >= deadline:
                return pending
            self._stop.wait(0.02)

    def wait_for_acknowledgements(self, timeout_s: float) -> list[str]:
        """Block until matched reliable subscribers acknowledged all published data, or timeout.

        Args:
            timeout_s: wall seconds for all topics together.

        Returns:
            Topics still not fully acknowledged (empty on success).
        """
        pubs = dict(self._bag_publishers)
        if self._clock_publisher is not None:
            pubs[CLOCK_TOPIC] = self._clock_publisher
        deadline = time.monotonic() + max(0.0, timeout_s)
        pending = []
        for topic, pub in pubs.items():
            remaining_ns = max(0, int((deadline - time.monotonic()) * 1e9))
            if not pub.wait_for_all_acked(Duration(nanoseconds=remaining_ns)):
                pending.append(topic)
        return pending

    def _publish_clock(self, stamp_ns: int) -> None:
        """Publish ``stamp_ns`` on the synthesised /clock unless it would not advance the clock."""
        if self._clock_publisher is None or stamp_ns <= self._last_clock_ns:
            return
        msg = self._clock_class()
        msg.clock.sec = stamp_ns // 1_000_000_000
        msg.clock.nanosec = stamp_ns % 1_000_000_000
        self._clock_publisher.publish(msg)
        self._last_clock_ns = stamp_ns
        self._clock_count += 1

    def _wait_until(self, offset_s: float, bag0_ns: int, rate: float, clock_period: float) -> bool:
        """Sleep until ``offset_s`` (wall, relative to the loop start ``self._t0``) has come.

        Pauses shift ``self._t0`` by their length, so timing after a resume stays relative. While
        waiting, /clock ticks at ``clock_period`` with the interpolated bag time.

        Returns:
            False when playback must stop (stop() or context shut down), True otherwise.
        """
        while True:
            if self._stop.is_set() or not self.context.ok():
                return False
            if not self._resume.is_set():
                t = time.monotonic()
                self._resume.wait(0.05)
                self._t0 += time.monotonic() - t
                continue
            now = time.monotonic()
            remaining = self._t0 + offset_s - now
            if remaining <= 0:
                return True
            sleep = remaining
            if clock_period > 0 and self._clock_publisher is not None and rate > 0:
                next_tick = self._last_tick + clock_period
                if now >= next_tick:
                    self._publish_clock(bag0_ns + int((now - self._t0) * rate * 1e9))
                    self._last_tick = now
                    continue
                sleep = min(sleep, next_tick - now)
            self._stop.wait(sleep)

    def play(self) -> PlaybackSummary:
        """Play the bag (all loops) in the calling thread; returns when done or stopped.

        Order: wait for ``wait_for_subscribers`` (up to ``wait_for_subscribers_timeout``), then
        ``delay`` seconds, then (if paused) wait for resume, then every message in recorded order
        (bag timestamp order, ties in file order). Message *i* is published at
        ``(t_i - t_first) / rate`` wall seconds after the loop start (no waiting when ``rate`` is 0);
        late messages are published immediately, never dropped. At the end, up to ``ack_timeout``
        seconds for reliable subscribers to acknowledge everything, so that the caller may destroy
        the node (or the process exit) without cutting off messages still in flight.

        Returns:
            :class:`PlaybackSummary`; also set as ``done_future``'s result, and ``done`` is set.

        Raises:
            RuntimeError: play() is already running on this node.
            KeyboardInterrupt: Ctrl-C in the calling thread (``done_future`` is then cancelled).
            ValueError: negative ``rate`` or ``loop``.
        """
        if not self._play_lock.acquire(blocking=False):
            raise RuntimeError("play() is already running on this node")
        try:
            self.done.clear()
            if self.done_future.done():
                self.done_future = Future()
            self._stop.clear()
            try:
                summary = self._play()
            except KeyboardInterrupt:
                # Ctrl-C is an ordinary way to end playback: cancel rather than fail the future
                # (an unretrieved exception in a Future is reported at garbage collection).
                self.stop()
                self.done_future.cancel()
                raise
            except BaseException as exc:
                self.done_future.set_exception(exc)
                raise
            self.done_future.set_result(summary)
            return summary
        finally:
            self.done.set()
            self._play_lock.release()

    def _messages(self):
        """``(topic, stamp_ns, cdr_bytes)`` of one pass over the replayed topics: rosbags' reader in
        bag time order, or for a damaged mcap the sequential read of what is intact (file order)."""
        if self._salvaged is not None:
            for conn, stamp_ns, data in iter_truncated_mcap(self._salvaged.path, set(self._plans)):
                yield conn.topic, stamp_ns, data
            return
        reader = self._reader()
        reader.open()
        try:
            # Connections of *this* reader: ids are per open, so do not reuse older ones.
            connections = [c for c in reader.connections if c.topic in self._plans]
            for conn, stamp_ns, data in reader.messages(connections=connections):
                yield conn.topic, stamp_ns, data
        finally:
            reader.close()

    def _play(self) -> PlaybackSummary:
        rate = float(self.get_parameter("rate").value)
        loops = int(self.get_parameter("loop").value)
        delay = float(self.get_parameter("delay").value)
        clock_rate = float(self.get_parameter("clock_rate").value)
        progress_period = float(self.get_parameter("progress_period").value)
        if rate < 0 or math.isnan(rate):
            raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {rate}")
        if loops < 0:
            raise ValueError(f"loop must be >= 0 (0 = forever), got {loops}")
        clock_period = 1.0 / clock_rate if clock_rate > 0 else 0.0
        log = self.get_logger()
        summary = PlaybackSummary(per_topic={t: 0 for t in self._plans})

        wait_topics = list(self.get_parameter("wait_for_subscribers").value)
        if wait_topics:
            timeout = float(self.get_parameter("wait_for_subscribers_timeout").value)
            log.info(f"waiting up to {timeout:.1f} s for subscribers on {wait_topics}")
            summary.unmatched_topics = self.wait_for_subscribers(wait_topics, timeout)
            if summary.unmatched_topics:
                log.warning(
                    f"no subscriber on {summary.unmatched_topics} after {timeout:.1f} s; playing anyway"
                )
        if delay > 0:
            self._stop.wait(delay)
        if self.paused:
            log.info("paused before the first message; set start_paused:=false or call resume()")

        self._last_clock_ns = -1
        self._clock_count = 0
        loop_text = "forever" if loops == 0 else str(loops)
        log.info(
            f"playing {self._message_count} messages x {loop_text} loop(s) at "
            f"{'max speed' if rate == 0 else f'rate {rate:g}'}"
        )
        wall_start = time.monotonic()
        next_progress = wall_start + progress_period if progress_period > 0 else math.inf
        loop_index = 0
        if self._message_count == 0:
            log.warning("nothing to play: the selected topics have no messages")
            loops = 1  # loop=0 over nothing would spin forever
        while loops == 0 or loop_index < loops:
            # A Ctrl-C shuts the context down (rclpy's handler) rather than raising here.
            if self._stop.is_set() or not self.context.ok():
                break
            messages = self._messages()
            try:
                self._t0 = time.monotonic()
                self._last_tick = self._t0
                # A new loop replays the same stamps: let the synthesised clock go back with them.
                self._last_clock_ns = -1
                bag0_ns = None
                published = 0
                for topic, stamp_ns, data in messages:
                    if bag0_ns is None:
                        bag0_ns = stamp_ns
                    if rate > 0:
                        offset_s = (stamp_ns - bag0_ns) / 1e9 / rate
                        if not self._wait_until(offset_s, bag0_ns, rate, clock_period):
                            break
                    elif not self._wait_until(-math.inf, bag0_ns, rate, 0.0):
                        break  # rate 0: no timing, but pause and stop are still honoured
                    try:
                        self._publish_clock(stamp_ns)
                        self._bag_publishers[topic].publish(bytes(data))
                    except Exception:
                        if not self.context.ok():  # shut down under our feet (Ctrl-C)
                            break
                        raise
                    published += 1
                    summary.per_topic[topic] += 1
                    summary.messages_published += 1
                    now = time.monotonic()
                    if now >= next_progress:
                        log.info(
                            f"loop {loop_index + 1}/{loop_text}: {published}/{self._message_count} messages, "
                            f"bag time {(stamp_ns - bag0_ns) / 1e9:.2f}/{self._duration_s:.2f} s"
                        )
                        next_progress = now + progress_period
                else:
                    summary.loops_completed += 1
            finally:
                messages.close()
            loop_index += 1
        summary.wall_duration_s = time.monotonic() - wall_start
        summary.clock_messages = self._clock_count
        ack_timeout = float(self.get_parameter("ack_timeout").value)
        if ack_timeout > 0 and self.context.ok() and not self._stop.is_set():
            summary.unacked_topics = self.wait_for_acknowledgements(ack_timeout)
            if summary.unacked_topics:
                log.warning(f"not acknowledged within {ack_timeout:.1f} s: {summary.unacked_topics}")
        summary.stopped = self._stop.is_set() or not self.context.ok() or (
            loops != 0 and summary.loops_completed < loops
        )
        log.info(
            f"done: {summary.messages_published} messages in {summary.wall_duration_s:.2f} s, "
            f"{summary.loops_completed} loop(s), {summary.clock_messages} /clock"
            + (" (stopped early)" if summary.stopped else "")
        )
        return summary


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    """argparse CLI of ``bag_player``; every option maps onto the ROS parameter of the same name.

    Options left out keep the parameter's value from ``--ros-args -p`` / its default.
    """
    p = argparse.ArgumentParser(
        prog="bag_player",
        description="Replay a rosbag2 (mcap or sqlite3) with its recorded timing; publishes /clock.",
        epilog="ROS arguments (--ros-args -p name:=value -r from:=to ...) are accepted too.",
    )
    p.add_argument("--bag", help="bag directory or .mcap/.db3 file (parameter 'bag')")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, help="playback speed factor, 0 = as fast as possible")
    speed.add_argument("--as-fast-as-possible", action="store_true", help="same as --rate 0")
    p.add_argument("--loop", type=int, help="number of passes, 0 = forever (default 1)")
    p.add_argument("--start-paused", action="store_true", default=None, help="start paused")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="only play these topics")
    p.add_argument("--delay", type=float, help="seconds to wait before the first message")
    p.add_argument("--wait-for-subscribers", nargs="+", metavar="TOPIC",
                   help="wait until each of these topics has a subscriber")
    p.add_argument("--wait-for-subscribers-timeout", type=float, metavar="SECONDS")
    p.add_argument("--no-clock", dest="publish_clock", action="store_false", default=None,
                   help="do not synthesise /clock")
    p.add_argument("--clock-rate", type=float, metavar="HZ", help="synthesised /clock rate while waiting")
    p.add_argument("--qos-depth", type=int, help="KEEP_LAST depth of volatile publishers (default 10)")
    p.add_argument("--skip-unknown-types", action="store_true", default=None,
                   help="skip topics whose message type is not importable")
    p.add_argument("--ack-timeout", type=float, metavar="SECONDS",
                   help="seconds to wait at the end for subscribers to acknowledge (default 30)")
    p.add_argument("--progress-period", type=float, metavar="SECONDS", help="seconds between progress logs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bag_player`` executable.

    Args:
        argv: command line *without* the program name (``None`` = ``sys.argv[1:]``); may contain
            ``--ros-args ...``.

    Returns:
        Process exit status: 0 done (also after Ctrl-C), 2 bad arguments / bag missing / unknown
        message type.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_arg_parser()
    try:
        own = own_arguments("bag_player", argv)
    except ValueError as err:
        print(f"bag_player: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(own)
    # every argument checked before anything is opened (argparse's error: one line, exit status 2)
    if args.rate is not None and not args.rate >= 0:
        parser.error(f"--rate must be >= 0 (0 = as fast as possible), got {args.rate}")
    if args.loop is not None and args.loop < 0:
        parser.error(f"--loop must be >= 0 (0 = forever), got {args.loop}")
    for name in ("delay", "wait_for_subscribers_timeout", "clock_rate", "ack_timeout", "progress_period"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.qos_depth is not None and args.qos_depth < 1:
        parser.error(f"--qos-depth must be >= 1, got {args.qos_depth}")
    params = {
        "bag": args.bag,
        "rate": 0.0 if args.as_fast_as_possible else args.rate,
        "loop": args.loop,
        "start_paused": args.start_paused,
        "topics": args.topics,
        "delay": args.delay,
        "wait_for_subscribers": args.wait_for_subscribers,
        "wait_for_subscribers_timeout": args.wait_for_subscribers_timeout,
        "publish_clock": args.publish_clock,
        "clock_rate": args.clock_rate,
        "qos_depth": args.qos_depth,
        "skip_unknown_types": args.skip_unknown_types,
        "ack_timeout": args.ack_timeout,
        "progress_period": args.progress_period,
    }
    try:
        rclpy.init(args=["bag_player", *argv])
    except Exception as exc:  # noqa: BLE001 - rcl's parse errors (malformed --params-file YAML, bad --ros-args)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"bag_player: error: invalid ROS arguments or parameter file: {first}", file=sys.stderr)
        return 2
    try:
        try:
            node = BagPlayer(**params)
        except (BagNotFoundError, UnknownMessageTypeError, ValueError) as exc:
            print(f"bag_player: error: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin_quietly, args=(executor,), daemon=True)
        spinner.start()
        try:
            node.play()
        except KeyboardInterrupt:
            node.stop()
            print("bag_player: interrupted", file=sys.stderr)
        finally:
            executor.shutdown(timeout_sec=1.0)
            # A spin thread still inside rcl at interpreter exit aborts the process
            # ("terminate called without an active exception"): wait for it to leave.
            spinner.join(timeout=2.0)
            node.destroy_node()
        return 0
    finally:
        rclpy.try_shutdown()


def _spin_quietly(executor: SingleThreadedExecutor) -> None:
    """Spin until shutdown; a Ctrl-C shutdown of the context is a normal end, not an error."""
    try:
        executor.spin()
    except (ExternalShutdownException, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    sys.exit(main())
