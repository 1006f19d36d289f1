"""In-process launcher: run a launch file's composition without launch_ros (the venv).

Reads ``launch/*.launch.py`` statically (:func:`occ_audit_ros.launch_static.compose`: the same
arguments, includes, conditions, parameter files, inline parameters and remappings that
``ros2 launch`` would use) and starts this package's nodes in one process on a
MultiThreadedExecutor. Executables of other packages (``rviz2``) cannot run here and are listed as
skipped. Differences from ``ros2 launch``: one process instead of one per node; parameter files of
``perception_node`` go through rcl's own ``--params-file`` parser (one ``--params-file`` per file,
in order: the base ``config/perception.yaml``, then ``config/models/<model>.yaml``), those of
``bag_player`` through :func:`~occ_audit_ros.launch_static.flatten_params_file` (merged in order).

    python -m occ_audit_ros.nodes.launcher launch/nuscenes_replay.launch.py bag:=output/demo/input_bag \\
        clip_model:=random rviz:=false [--frames N] [--timeout S]
    python -m occ_audit_ros.nodes.launcher launch/perception.launch.py model:=semabs clip_model:=random
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from occ_audit_ros.launch_static import PACKAGE, ResolvedNode, compose, flatten_params_file

#: Executables of this package the launcher can start in-process.
RUNNABLE = ("perception_node", "bag_player")


def _param(name: str, value: Any) -> Parameter:
    return Parameter(name, value=list(value) if isinstance(value, tuple) else value)


def build_node(spec: ResolvedNode):
    """Instantiate one resolved launch node in this process (rclpy must be initialised).

    Raises:
        ValueError: for an executable this launcher cannot run, or remappings on ``bag_player``.
    """
    if spec.package != PACKAGE or spec.executable not in RUNNABLE:
        raise ValueError(f"{spec.package}/{spec.executable} cannot run in-process")
    overrides = [_param(k, v) for k, v in spec.params.items()]
    if spec.executable == "perception_node":
        from occ_audit_ros.nodes.perception_node import PerceptionNode

        cli = ["--ros-args"]
        for f in spec.param_files:
            cli += ["--params-file", str(f)]
        for src, dst in spec.remappings:
            cli += ["-r", f"{src}:={dst}"]
        if spec.name != "perception_node":
            cli += ["-r", f"__node:={spec.name}"]
        return PerceptionNode(cli_args=cli, parameter_overrides=overrides)
    from occ_audit_ros.nodes.bag_player import BagPlayer

    if spec.remappings:
        raise ValueError("bag_player publishes the bag's own topic names; remappings are not supported")
    file_params: dict[str, Any] = {}
    for f in spec.param_files:
        file_params.update(flatten_params_file(f, spec.name))
    file_overrides = [_param(k, v) for k, v in file_params.items() if k not in spec.params]
    return BagPlayer(node_name=spec.name, parameter_overrides=file_overrides + overrides)


class Launch:
    """A running in-process composition: ``nodes`` by executable, ``skipped`` node specs.

    Args:
        launch_file: path of a ``*.launch.py``.
        arguments: launch arguments (strings, as after ``name:=``).
    """

    def __init__(self, launch_file: str | Path, arguments: dict[str, str] | None = None) -> None:
        self.specs = compose(launch_file, arguments)
        self.skipped = [s for s in self.specs if s.package != PACKAGE or s.executable not in RUNNABLE]
        self.nodes: dict[str, Any] = {}
        self.executor = MultiThreadedExecutor(num_threads=4)
        self._threads: list[threading.Thread] = []
        try:
            for spec in self.specs:
                if spec not in self.skipped:
                    node = build_node(spec)
                    self.nodes[spec.executable] = node
                    self.executor.add_node(node)
        except BaseException:
            self.shutdown()
            raise

    def start(self) -> None:
        """Spin the executor; start bag playback (``BagPlayer.play``) on its own thread."""
        spinner = threading.Thread(target=self.executor.spin, daemon=True, name="launcher_spin")
        spinner.start()
        self._threads.append(spinner)
        player = self.nodes.get("bag_player")
        if player is not None:
            t = threading.Thread(target=player.play, daemon=True, name="launcher_play")
            t.start()
            self._threads.append(t)

    def shutdown(self) -> None:
        """Stop playback, the executor and every node."""
        player = self.nodes.get("bag_player")
        if player is not None and hasattr(player, "stop"):
            player.stop()
        self.executor.shutdown()
        for node in reversed(list(self.nodes.values())):
            node.destroy_node()


#: Lowest allowed value of each numeric ``bag_player`` parameter (as ``bag_player`` checks its options).
_PLAYER_MINIMA = {"rate": 0, "loop": 0, "delay": 0, "wait_for_subscribers_timeout": 0, "clock_rate": 0,
                  "ack_timeout": 0, "progress_period": 0, "qos_depth": 1}


def check_launch(launch_file: Path, arguments: dict[str, str], frames: int, timeout: float) -> list[ResolvedNode]:
    """Check a launcher command line before rclpy starts or any node (and model) is built.

    Checks ``frames`` >= 0, ``timeout`` finite and > 0, that ``launch_file`` exists and composes
    (:func:`~occ_audit_ros.launch_static.compose`), and for every node to run: a ``perception_node``'s
    parameter files and inline parameters
    (:func:`~occ_audit_ros.nodes.perception_node.check_ros_args`); a ``bag_player``'s parameter files
    (readable YAML with its section), its numbers (finite, not below the bounds of ``bag_player``'s
    own options) and that its ``bag`` exists.

    Returns:
        The resolved nodes.

    Raises:
        ValueError: the first problem, in one line naming the option or the file.
    """
    import math

    import yaml

    from occ_audit_ros.launch_static import LaunchParseError

    if frames < 0:
        raise ValueError(f"--frames must be >= 0 (0 = run until Ctrl-C), got {frames}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--timeout must be > 0 seconds, got {timeout}")
    if not Path(launch_file).is_file():
        raise ValueError(f"launch file {launch_file}: no such file")
    try:
        specs = compose(launch_file, arguments)
    except (LaunchParseError, SyntaxError, OSError) as err:
        raise ValueError(f"launch file {launch_file}: {err}") from None
    for spec in specs:
        if spec.package != PACKAGE or spec.executable not in RUNNABLE:
            continue
        if spec.executable == "perception_node":
            from occ_audit_ros.nodes.perception_node import check_ros_args

            cli = ["perception_node", "--ros-args"]
            for f in spec.param_files:
                cli += ["--params-file", str(f)]
            if spec.name != "perception_node":
                cli += ["-r", f"__node:={spec.name}"]
            check_ros_args(cli, spec.params)
            continue
        values: dict[str, Any] = {}
        for f in spec.param_files:
            try:
                values.update(flatten_params_file(f, spec.name))
            except FileNotFoundError:
                raise ValueError(f"parameter file {f} of {spec.name}: no such file") from None
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                at = f" (line {mark.line + 1})" if mark is not None else ""
                raise ValueError(f"parameter file {f}: not valid YAML{at}: "
                                 f"{getattr(err, 'problem', None) or err}") from None
            except (LaunchParseError, AttributeError, TypeError) as err:
                raise ValueError(f"parameter file {f}: not a ROS 2 parameter file: {err}") from None
        values.update(spec.params)
        for name, low in _PLAYER_MINIMA.items():  # the bounds bag_player's own CLI checks
            v = values.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < low):
                raise ValueError(f"{spec.name}: parameter {name} must be a finite number >= {low}, got {v!r}")
        bag = values.get("bag")
        if isinstance(bag, str) and bag and not Path(bag).exists():
            raise ValueError(f"{spec.name}: bag {bag}: no such file or directory")
    return specs


def _parse_launch_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"launch arguments are name:=value, got {item!r}")
        k, v = item.split(":=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m occ_audit_ros.nodes.launcher FILE [name:=value ...] [--frames N] [--timeout S]``.

    Returns 0 when ``--frames`` frames were processed (or on Ctrl-C without ``--frames``), 1 on a
    timeout, 2 on bad arguments (:func:`check_launch`, before any node is built) or a failed start.
    """
    p = argparse.ArgumentParser(prog="occ_audit_launcher", description=__doc__.splitlines()[0])
    p.add_argument("launch_file", type=Path)
    p.add_argument("arguments", nargs="*", help="launch arguments name:=value")
    p.add_argument("--frames", type=int, default=0, help="exit after the perception node processed N frames")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for --frames")
    args = p.parse_args(argv)
    try:
        launch_args = _parse_launch_args(args.arguments)
        check_launch(args.launch_file, launch_args, args.frames, args.timeout)  # before any model load
    except ValueError as err:
        print(f"launcher: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=["--ros-args"])
    launch = None
    try:
        launch = Launch(args.launch_file, launch_args)
        for s in launch.skipped:
            print(f"launcher: {s.package}/{s.executable} ({s.source}) cannot run here: skipped", file=sys.stderr)
        launch.start()
        node = launch.nodes.get("perception_node")
        if args.frames:
            if node is None or not node.wait_for_frames(args.frames, args.timeout):
                print(f"launcher: {args.frames} frames not processed within {args.timeout:.0f} s", file=sys.stderr)
                return 1
            print(f"launcher: {node.counters['processed']} frames processed; counters {node.counters}")
            return 0
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    except Exception as err:  # noqa: BLE001 - one clear line for bad files, bags, weights
        print(f"launcher: {err.__class__.__name__}: {err}", file=sys.stderr)
        return 2
    finally:
        if launch is not None:
            launch.shutdown()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
