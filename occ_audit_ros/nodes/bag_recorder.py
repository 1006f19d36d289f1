"""``bag_recorder``: record ROS 2 topics into a rosbag2 **mcap** bag, written atomically.

This stands in for ``ros2 bag record`` where only PyPI ROS 2 wheels are installed. Subscriptions
are ``raw=True`` (the callback receives the CDR bytes; nothing is deserialised) and every message
is written with rosbags' :class:`~rosbags.rosbag2.Writer` (rosbag2 format version 9, mcap storage).

Bytes: stored exactly as received. Within one process (one DDS participant) that is exactly what
was published; between processes Fast DDS may append up to 3 zero bytes of alignment padding (the
payload is rounded up to 4 bytes), so compare decoded messages across processes, not raw bytes.

Timestamps: each message is stored with its **receive time** from the node's clock
(``self.get_clock().now()``), like ``ros2 bag record``: it needs no deserialisation, works for
header-less types (``/clock``, ``std_msgs/String``) and keeps the bag ordered by arrival. With
``use_sim_time:=true`` it is the latest ``/clock`` received (the player's bag time, at /clock
resolution; 0 before the first /clock). Header stamps stay untouched inside the messages.
Each topic's messages keep their publish order; across topics the bag holds the order in which the
executor took them, so two topics published a few milliseconds apart may be stored either way round.

Message definitions, which mcap connections must carry, come from the rosbags typestore of ROS 2
Kilted, extended with the ``.msg`` files of ``msg_dirs`` (the package's own ``msg/`` directory,
registered as ``occ_audit_ros/msg/*``, is always included when present).

Atomic output: the bag is written to ``<output>.partial/<name>/`` and, on :meth:`BagRecorder.close`,
renamed to ``<output>`` (same parent directory, so one ``rename``), then ``<output>.partial`` is
removed. A crash leaves only ``<output>.partial``; ``<output>`` always is a complete bag.

QoS of the subscriptions adapts to the publishers seen in the graph (as ``ros2 bag record`` does):
BEST_EFFORT if any publisher is best-effort (a reliable reader would not match it), else RELIABLE;
TRANSIENT_LOCAL if every publisher is transient-local (to receive latched messages), else
VOLATILE. With no publisher yet (a topic given with its type): RELIABLE VOLATILE, TRANSIENT_LOCAL
for ``/tf_static``. When publishers appear later that the current subscription cannot match, the
subscription is re-created. The publishers' QoS is stored as the connection's offered QoS, so the
player re-latches transient-local topics.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from occ_audit_ros.conventions import TF_STATIC_TOPIC
from occ_audit_ros.nodes.bag_player import UnknownMessageTypeError, normalize_type_name, resolve_message_type
from occ_audit_ros.nodes.parameters import declare_parameters, overrides_from_kwargs, own_arguments
from occ_audit_ros.params import ParamSpec, check_range
from occ_audit_ros import paths


def package_msg_dir() -> Path | None:
    """The package's own ``msg/`` directory (source tree or colcon share), or None if absent.

    Its files are registered as ``occ_audit_ros/msg/<Name>``.
    """
    try:
        return paths.resource("msg")
    except FileNotFoundError:
        return None

#: Topics never recorded when recording "everything" (graph plumbing, not data).
DEFAULT_EXCLUDED_TOPICS = ("/rosout", "/parameter_events")

RECORDER_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("output", "",
              "Path of the bag directory to create (must not exist). Written to "
              "<output>.partial and renamed on close."),
    ParamSpec("topics", [],
              "Topics to record: 'NAME' (type discovered from the graph; subscribed when a "
              "publisher appears) or 'NAME:pkg/msg/Type' (subscribed at once). Empty = every "
              "topic that appears, except /rosout and /parameter_events.", array_of=str),
    ParamSpec("msg_dirs", [],
              "Extra directories of .msg files for message definitions not in the ROS 2 Kilted "
              "typestore: 'DIR' (package = name in DIR/../package.xml, else DIR's parent "
              "directory name) or 'PKG=DIR'. The package's own msg/ is always included.", array_of=str),
    ParamSpec("discovery_period", 0.2,
              "Seconds between graph polls that subscribe to newly appeared topics and adapt QoS.",
              range=(0.01, 3600.0)),
    ParamSpec("qos_depth", 100,
              "KEEP_LAST depth of the subscriptions: a deep queue so bursts are not dropped while "
              "the writer is busy.", range=(1, 100000)),
)


# ---------------------------------------------------------------------------------------------
# Message definitions
# ---------------------------------------------------------------------------------------------


def _package_name_of_msg_dir(directory: Path) -> str:
    """ROS package owning a ``msg/`` directory: ``<name>`` of ``../package.xml``, else the parent's name."""
    package_xml = directory.parent / "package.xml"
    if package_xml.is_file():
        match = re.search(r"<name>\s*([^<\s]+)\s*</name>", package_xml.read_text(errors="replace"))
        if match:
            return match.group(1)
    return directory.resolve().parent.name


def build_typestore(msg_dirs: Sequence[str] = ()) -> Any:
    """rosbags typestore of ROS 2 Kilted plus the ``.msg`` files of ``msg_dirs``.

    Args:
        msg_dirs: entries ``"DIR"`` or ``"PKG=DIR"``; every ``DIR/*.msg`` is registered as
            ``PKG/msg/<stem>``. :func:`package_msg_dir` is added as ``occ_audit_ros`` when it
            exists and is not listed.

    Returns:
        A ``rosbags.typesys.store.Typestore``.

    Raises:
        FileNotFoundError: a listed directory does not exist.
        ValueError: a .msg file does not parse (the message names the file).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    entries: list[tuple[str, Path]] = []
    for entry in msg_dirs:
        pkg, sep, directory = entry.partition("=")
        path = Path(directory if sep else pkg).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"msg directory not found: {path}")
        entries.append((pkg if sep else _package_name_of_msg_dir(path), path))
    own = package_msg_dir()
    if own is not None and own.is_dir() and not any(p.resolve() == own.resolve() for _, p in entries):
        entries.append(("occ_audit_ros", own))
    types: dict[str, Any] = {}
    for pkg, directory in entries:
        for msg_file in sorted(directory.glob("*.msg")):
            try:
                types.update(get_types_from_msg(msg_file.read_text(), f"{pkg}/msg/{msg_file.stem}"))
            except Exception as exc:  # rosbags raises its own TypesysError; keep the file name
                raise ValueError(f"cannot parse {msg_file}: {exc}") from exc
    # Only add what the store lacks: re-registering a Kilted type with a different text would fail.
    store.register({k: v for k, v in types.items() if k not in store.fielddefs})
    return store


def _to_rosbags_qos(profile: QoSProfile) -> Any:
    """rclpy ``QoSProfile`` (as offered by a publisher) -> rosbags ``Qos`` for bag metadata."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    def duration(d: Any) -> Any:
        ns = d.nanoseconds
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    def enum(cls: Any, policy: Any) -> Any:
        name = getattr(policy, "name", str(policy)).upper()
        return cls[name] if name in cls.__members__ else cls.UNKNOWN

    return Qos(
        history=enum(QosHistory, profile.history),
        depth=int(profile.depth),
        reliability=enum(QosReliability, profile.reliability),
        durability=enum(QosDurability, profile.durability),
        deadline=duration(profile.deadline),
        lifespan=duration(profile.lifespan),
        liveliness=enum(QosLiveliness, profile.liveliness),
        liveliness_lease_duration=duration(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def adapted_qos(topic: str, publisher_profiles: Sequence[QoSProfile], depth: int) -> QoSProfile:
    """Subscription QoS that matches every publisher in ``publisher_profiles``.

    Args:
        topic: topic name (``/tf_static`` defaults to transient-local when no publisher is known).
        publisher_profiles: offered QoS of the publishers currently in the graph.
        depth: KEEP_LAST depth.

    Returns:
        BEST_EFFORT if any publisher is best-effort else RELIABLE; TRANSIENT_LOCAL if all (and at
        least one, or the topic is /tf_static) are transient-local else VOLATILE.
    """
    if publisher_profiles:
        best_effort = any(p.reliability == ReliabilityPolicy.BEST_EFFORT for p in publisher_profiles)
        latched = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publisher_profiles)
    else:
        best_effort, latched = False, topic == TF_STATIC_TOPIC
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, depth),
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def _matches(sub: QoSProfile, pub: QoSProfile) -> bool:
    """DDS request/offer compatibility for reliability and durability."""
    if sub.reliability == ReliabilityPolicy.RELIABLE and pub.reliability == ReliabilityPolicy.BEST_EFFORT:
        return False
    if sub.durability == DurabilityPolicy.TRANSIENT_LOCAL and pub.durability == DurabilityPolicy.VOLATILE:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Recorder
# ---------------------------------------------------------------------------------------------


class BagRecorder(Node):
    """rclpy node recording topics, as raw CDR, into a rosbag2 mcap bag written atomically.

    Subscriptions are created from an executor callback (the discovery timer), and messages are
    written from subscription callbacks, so an executor must spin the node. The writer is guarded
    by a lock, so :meth:`close` may be called from any thread (e.g. the test's, or after Ctrl-C).

    Parameters (ROS, see ``RECORDER_PARAMETERS``): ``output``, ``topics``, ``msg_dirs``,
    ``discovery_period``, ``qos_depth``.

    Args:
        output: bag directory to create; shorthand for the ``output`` parameter.
        node_name: ROS node name.
        namespace: ROS namespace (relative names in ``topics`` resolve in it).
        context: rclpy context (``None`` = global default).
        parameter_overrides: extra ``Parameter`` overrides.
        **params: any parameter of ``RECORDER_PARAMETERS`` by name (e.g. ``topics=["/a"]``).

    Raises:
        ValueError: no output given.
        FileExistsError: ``<output>`` or ``<output>.partial`` already exists (never overwritten;
            a ``.partial`` is left by an interrupted recording).
        UnknownMessageTypeError: a type given in ``topics`` has no Python class, or no message
            definition (then add its msg directory to ``msg_dirs``).
    """

    def __init__(
        self,
        output: str | Path | None = None,
        *,
        node_name: str = "bag_recorder",
        namespace: str | None = None,
        context: Context | None = None,
        parameter_overrides: list[Parameter] | None = None,
        **params: Any,
    ) -> None:
        if output is not None:
            params["output"] = str(output)
        overrides = list(parameter_overrides or []) + overrides_from_kwargs(RECORDER_PARAMETERS, params)
        super().__init__(node_name, namespace=namespace, context=context, parameter_overrides=overrides)
        self._partial_created = False
        try:
            self._setup()
        except BaseException:
            self._discard_partial()
            self.destroy_node()
            raise

    def _discard_partial(self) -> None:
        """Remove the ``.partial`` directory this constructor created (failed construction only)."""
        if self._partial_created:
            with contextlib.suppress(Exception):
                self._writer.abort()
            shutil.rmtree(self._partial_root, ignore_errors=True)
            self._partial_created = False

    def _check_type(self, type_name: str) -> type:
        """Message class of ``type_name``, also checking the typestore has its definition.

        Raises:
            UnknownMessageTypeError: no Python class, or no message definition for the bag.
        """
        msg_class = resolve_message_type(type_name)
        if type_name not in self._typestore.fielddefs:
            raise UnknownMessageTypeError(
                f"no message definition for {type_name!r} (needed by the mcap connection): add "
                f"its msg directory to msg_dirs"
            )
        return msg_class

    def _setup(self) -> None:
        """Body of the constructor: parameters, checks, writer, first subscriptions."""
        declare_parameters(self, RECORDER_PARAMETERS)
        from rosbags.rosbag2 import StoragePlugin, Writer

        out = self.get_parameter("output").value
        if not out:
            raise ValueError("no output given: set the 'output' parameter (bag_recorder --output PATH)")
        self.output = Path(out).expanduser().absolute()
        self._partial_root = self.output.with_name(self.output.name + ".partial")
        if self.output.exists():
            raise FileExistsError(f"{self.output} already exists; not overwriting")
        if self._partial_root.exists():
            raise FileExistsError(
                f"{self._partial_root} already exists (left by an interrupted recording: inspect "
                "or delete it)"
            )
        self._depth = int(self.get_parameter("qos_depth").value)
        self._typestore = build_typestore(self.get_parameter("msg_dirs").value)

        # Requested topics: name -> type ("" = discover). Empty dict = record everything.
        self._requested: dict[str, str] = {}
        for entry in self.get_parameter("topics").value:
            name, _, type_name = entry.partition(":")
            resolved = self.resolve_topic_name(name.strip())
            self._requested[resolved] = normalize_type_name(type_name) if type_name.strip() else ""
        self._record_all = not self._requested

        self._lock = threading.Lock()
        self._closed = False
        self._raw_subs: dict[str, Any] = {}
        self._sub_qos: dict[str, QoSProfile] = {}
        self._types: dict[str, str] = {}
        self._connections: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._warned: set[str] = set()

        # Fail on unknown types before anything is created on disk.
        for topic, type_name in self._requested.items():
            if type_name:
                try:
                    self._check_type(type_name)
                except UnknownMessageTypeError as exc:
                    raise UnknownMessageTypeError(f"topic {topic}: {exc}") from exc

        self._partial_root.mkdir(parents=True)
        self._partial_created = True
        self._writer = Writer(
            self._partial_root / self.output.name, version=9, storage_plugin=StoragePlugin.MCAP
        )
        self._writer.open()

        # Typed topics: subscribe now (fail early on unknown types), QoS from the graph as known.
        for topic, type_name in self._requested.items():
            if type_name:
                self._subscribe(topic, type_name, strict=True)
        self._discover()
        period = max(0.01, float(self.get_parameter("discovery_period").value))
        self._discovery_timer = self.create_timer(period, self._discover)
        what = "all topics" if self._record_all else ", ".join(
            f"{t} [{ty or 'discover'}]" for t, ty in self._requested.items()
        )
        self.get_logger().info(f"recording {what} into {self.output} (via {self._partial_root.name})")

    # -- subscriptions -------------------------------------------------------------------------

    def _publisher_profiles(self, topic: str) -> list[QoSProfile]:
        return [info.qos_profile for info in self.get_publishers_info_by_topic(topic)]

    def _subscribe(self, topic: str, type_name: str, *, strict: bool) -> bool:
        """Create (or re-create) the raw subscription and the bag connection of ``topic``.

        Returns False (after one warning) when ``strict`` is False and the type cannot be used.
        """
        try:
            msg_class = self._check_type(type_name)
        except UnknownMessageTypeError as exc:
            if strict:
                raise UnknownMessageTypeError(f"topic {topic}: {exc}") from exc
            if topic not in self._warned:
                self._warned.add(topic)
                self.get_logger().warning(f"not recording {topic}: {exc}")
            return False
        profiles = self._publisher_profiles(topic)
        qos = adapted_qos(topic, profiles, self._depth)
        with self._lock:
            if self._closed:
                return False
            if topic not in self._connections:
                offered = [_to_rosbags_qos(p) for p in profiles] or (
                    [_to_rosbags_qos(qos)] if qos.durability == DurabilityPolicy.TRANSIENT_LOCAL else []
                )
                self._connections[topic] = self._writer.add_connection(
                    topic, type_name, typestore=self._typestore, offered_qos_profiles=offered
                )
                self._counts[topic] = 0
                self._types[topic] = type_name
        old = self._raw_subs.pop(topic, None)
        if old is not None:
            self.destroy_subscription(old)
        self._raw_subs[topic] = self.create_subscription(
            msg_class, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True
        )
        self._sub_qos[topic] = qos
        self.get_logger().info(
            f"{'re-' if old is not None else ''}subscribed {topic} [{type_name}] "
            f"{qos.reliability.name} {qos.durability.name} depth {qos.depth}"
        )
        return True

    def _discover(self) -> None:
        """Graph poll: subscribe to topics that appeared, re-create subscriptions that cannot match."""
        if self._closed:
            return
        for topic, types in self.get_topic_names_and_types():
            if self._record_all:
                if topic in DEFAULT_EXCLUDED_TOPICS:
                    continue
            elif topic not in self._requested:
                continue
            if topic in self._raw_subs:
                sub_qos = self._sub_qos[topic]
                if not all(_matches(sub_qos, p) for p in self._publisher_profiles(topic)):
                    self._subscribe(topic, self._types[topic], strict=False)
                continue
            if not self.count_publishers(topic):
                continue  # only a subscriber (possibly us) so far: no publisher QoS to adapt to
            wanted = self._requested.get(topic) or ""
            if not wanted:
                if len(types) != 1:
                    if topic not in self._warned:
                        self._warned.add(topic)
                        self.get_logger().warning(f"not recording {topic}: several types {types}")
                    continue
                wanted = normalize_type_name(types[0])
            self._subscribe(topic, wanted, strict=False)

    def _on_message(self, topic: str, data: bytes) -> None:
        stamp = self.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self._writer.write(self._connections[topic], stamp, data)
            self._counts[topic] += 1

    # -- public API ----------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Messages written so far, per topic (a copy)."""
        with self._lock:
            return dict(self._counts)

    @property
    def subscribed_topics(self) -> list[str]:
        """Topics with a live subscription."""
        return sorted(self._raw_subs)

    def wait_until_subscribed(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Block until every topic of ``topics`` has a subscription (needs a spinning executor).

        Returns:
            True when all are subscribed, False at the ``timeout_s`` (wall seconds) timeout.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(t in self._raw_subs for t in topics):
                return True
            time.sleep(0.02)
        return all(t in self._raw_subs for t in topics)

    def close(self) -> Path:
        """Stop recording, finish the mcap and metadata.yaml, and rename the bag into place.

        Idempotent and thread-safe. Messages arriving after the call are dropped.

        Returns:
            The final bag directory ``output``.
        """
        with self._lock:
            if self._closed:
                return self.output
            self._closed = True
            try:
                self._writer.close()
            except BaseException:
                with contextlib.suppress(Exception):
                    self._writer.abort()  # leaves <output>.partial for inspection
                raise
            os.replace(self._partial_root / self.output.name, self.output)
            self._partial_root.rmdir()
            self._partial_created = False
            counts = dict(self._counts)
        total = sum(counts.values())
        per_topic = ", ".join(f"{t}: {n}" for t, n in sorted(counts.items())) or "no topics"
        self.get_logger().info(f"wrote {total} messages to {self.output} ({per_topic})")
        return self.output

    def destroy_node(self) -> None:
        """Close the bag (if still open) and destroy the node."""
        if self._partial_created:
            self.close()
        super().destroy_node()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    """argparse CLI of ``bag_recorder``; every option maps onto the ROS parameter of the same name."""
    p = argparse.ArgumentParser(
        prog="bag_recorder",
        description="Record topics (raw CDR) into a rosbag2 mcap bag; Ctrl-C finishes the bag.",
        epilog="ROS arguments (--ros-args -p name:=value -r from:=to ...) are accepted too.",
    )
    p.add_argument("--output", "-o", help="bag directory to create (parameter 'output')")
    p.add_argument("--topics", nargs="+", metavar="TOPIC[:TYPE]",
                   help="topics to record, optionally with pkg/msg/Type; default: all")
    p.add_argument("--msg-dirs", nargs="+", metavar="[PKG=]DIR", help="extra .msg directories")
    p.add_argument("--discovery-period", type=float, metavar="SECONDS")
    p.add_argument("--qos-depth", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bag_recorder`` executable: record until Ctrl-C / SIGTERM, then close.

    Args:
        argv: command line without the program name (``None`` = ``sys.argv[1:]``).

    Returns:
        0 after a clean close, 2 on bad arguments (existing output, unknown type, ...).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_arg_parser()
    try:
        own = own_arguments("bag_recorder", argv)
    except ValueError as err:
        print(f"bag_recorder: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(own)
    # every option checked before anything is created (argparse's error: one line, exit status 2)
    specs = {spec.name: spec for spec in RECORDER_PARAMETERS}
    for name in ("discovery_period", "qos_depth"):
        value = getattr(args, name)
        if value is not None:
            try:
                check_range(specs[name], value)
            except ValueError:
                low, high = specs[name].range
                parser.error(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}")
    params = {
        "output": args.output,
        "topics": args.topics,
        "msg_dirs": args.msg_dirs,
        "discovery_period": args.discovery_period,
        "qos_depth": args.qos_depth,
    }
    # Own signal handling instead of rclpy's: rclpy's handler shuts the context down first, and
    # the bag would then be finished with a dead node (its log lines cannot reach /rosout).
    # Ctrl-C raises KeyboardInterrupt in the spin loop below; SIGTERM (a launcher) does the same.
    rclpy.init(args=["bag_recorder", *argv], signal_handler_options=SignalHandlerOptions.NO)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # Also when started in the background of a script, where SIGINT arrives ignored (SIG_IGN):
    # Ctrl-C / kill -INT is the documented way to finish a recording.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            node = BagRecorder(**params)
        except (ValueError, FileExistsError, FileNotFoundError, UnknownMessageTypeError) as exc:
            print(f"bag_recorder: error: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            # Short waits so a pending KeyboardInterrupt is raised promptly (Python runs signal
            # handlers only between bytecodes, not inside rcl_wait).
            while rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.close()
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
        rclpy.try_shutdown()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: end recording exactly like Ctrl-C."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
