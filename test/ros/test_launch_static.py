"""Static checks of the launch files and the RViz config (launch_ros and RViz cannot run here),
and the in-process launcher running the replay composition for real.

Checked: every executable of this package is a console_scripts entry point and a ROS executable
script; other packages' nodes are optional (conditional) or exec_depends; every parameter file
exists and its keys (all files merged in order) are parameters the node declares for the model they
choose (a model's group only with that model) with valid values; inline parameters likewise; every
remapped topic and every topic the player waits for is one the composition has; every RViz topic is
published by the composition or the replayed bag.
"""

import importlib
import os
import re
import textwrap

import pytest
import yaml

from occ_audit_ros import conventions, paths
from occ_audit_ros.launch_static import LaunchParseError, compose, flatten_params_file, parse_launch_file
from occ_audit_ros.nodes.bag_player import PLAYER_PARAMETERS
from occ_audit_ros.nodes.perception_node import input_topics, output_topics
from occ_audit_ros.params import (MODEL_PARAMS, PARAMS_BY_NAME, QOS_OVERRIDE_PREFIX, node_params, params_files,
                                  qos_override_names, validate)

ROOT = paths.REPO_ROOT
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
REQUIRED_ARGS = {"nuscenes_replay.launch.py": {"bag": "/tmp/some_bag"}}
#: Topics in a bag written by occ_audit_ros.tools.nuscenes_to_bag.
BAG_TOPICS = ({conventions.TF_TOPIC, conventions.TF_STATIC_TOPIC, conventions.CLOCK_TOPIC, conventions.LIDAR_TOPIC,
               conventions.GT_BOXES_TOPIC}
              | {f(c) for c in conventions.CAMERA_CHANNELS
                 for f in (conventions.image_topic, conventions.camera_info_topic, conventions.depth_topic)})


def entry_points() -> dict[str, str]:
    """console_scripts of the installed occ_audit_ros distribution (from setup.py), name -> target."""
    from importlib.metadata import distribution

    eps = {ep.name: ep.value for ep in distribution("occ_audit_ros").entry_points if ep.group == "console_scripts"}
    if not eps:
        raise AssertionError("setup.py has no console_scripts")
    return eps


def package_exec_depends() -> set[str]:
    text = (ROOT / "package.xml").read_text()
    return set(re.findall(r"<(?:exec_)?depend>([^<]+)</", text))


def declared_params(node) -> set[str]:
    """What the node would declare: for perception_node the common parameters and the group of the
    model its merged parameter files choose (an unknown model: the common ones only)."""
    if node.executable == "perception_node":
        values = node_values(node)
        cameras = [str(c) for c in values.get("cameras", PARAMS_BY_NAME["cameras"].default)]
        model = values.get("model", PARAMS_BY_NAME["model"].default)
        specs = node_params(model) if model in MODEL_PARAMS else node_params("relevancy")
        return {p.name for p in specs} | {"use_sim_time"} | set(qos_override_names(input_topics(cameras)))
    if node.executable == "bag_player":
        return {p.name for p in PLAYER_PARAMETERS} | {"use_sim_time"}
    raise AssertionError(f"no parameter list for {node.executable}")


def node_values(node) -> dict:
    values = {}
    for f in node.param_files:
        if f.is_file():  # a missing file is reported on its own
            values.update(flatten_params_file(f, node.name))
    values.update(node.params)
    return values


def check_composition(nodes) -> list[str]:
    """Problems of a resolved composition (empty list = fine)."""
    problems = []
    eps, scripts = entry_points(), {p.name for p in (ROOT / "scripts" / "ros_executables").iterdir()}
    depends = package_exec_depends()
    topics = set(BAG_TOPICS)
    for n in nodes:
        if n.executable == "perception_node":
            cams = [str(c) for c in node_values(n).get("cameras", PARAMS_BY_NAME["cameras"].default)]
            topics |= set(input_topics(cams)) | set(output_topics())
    for n in nodes:
        where = f"{n.source} {n.executable}"
        if n.package == "occ_audit_ros":
            if n.executable not in eps:
                problems.append(f"{where}: not a console_scripts entry point in setup.py")
            else:
                module, func = eps[n.executable].split(":")
                if not callable(getattr(importlib.import_module(module), func, None)):
                    problems.append(f"{where}: entry point {eps[n.executable]} is not callable")
            if n.executable not in scripts:
                problems.append(f"{where}: no scripts/ros_executables/{n.executable} (ros2 run)")
        elif not n.conditional and n.package not in depends:
            problems.append(f"{where}: package {n.package} is neither optional nor an exec_depend in package.xml")
        if n.package != "occ_audit_ros" or n.executable not in ("perception_node", "bag_player"):
            continue  # parameters of other executables are not known here
        for f in n.param_files:
            if not f.is_file():
                problems.append(f"{where}: parameter file {f} does not exist")
        try:
            values = node_values(n)
        except (OSError, LaunchParseError, yaml.YAMLError) as err:
            problems.append(f"{where}: {err}")
            continue
        declared = declared_params(n)
        unknown = sorted(set(values) - declared)
        if unknown:
            problems.append(f"{where}: undeclared parameters {unknown}")
        if n.executable == "perception_node":
            try:
                validate({k: v for k, v in values.items() if k in declared and k in PARAMS_BY_NAME})
            except ValueError as err:
                problems.append(f"{where}: {err}")
        for t in values.get("wait_for_subscribers", []) if n.executable == "bag_player" else []:
            if t not in topics:
                problems.append(f"{where}: waits for {t}, which no node of the composition subscribes")
        for src, dst in n.remappings:
            own = set(output_topics()) | set(input_topics(node_values(n).get("cameras", []))) \
                if n.executable == "perception_node" else set(BAG_TOPICS)
            if "/" + src.lstrip("/") not in own:
                problems.append(f"{where}: remaps {src}, which {n.executable} does not use")
            if "/" + dst.lstrip("/") not in topics:
                problems.append(f"{where}: remaps to {dst}, which no other node or the bag has")
    return problems


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_composition_is_consistent(launch_file):
    nodes = compose(launch_file, REQUIRED_ARGS.get(launch_file.name, {}), with_conditions=False)
    assert nodes
    assert check_composition(nodes) == []


def test_replay_composition_and_arguments():
    nodes = compose(ROOT / "launch" / "nuscenes_replay.launch.py", {"bag": "b", "rviz": "false", "rate": "0"})
    by_exe = {n.executable: n for n in nodes}
    assert set(by_exe) == {"perception_node", "bag_player"}  # rviz:=false drops rviz2
    perception = by_exe["perception_node"]
    assert perception.param_files == [paths.resource("config/perception.yaml"),
                                      paths.resource("config/models/relevancy.yaml"),
                                      paths.resource("config/replay.yaml")]
    assert perception.params == {"clip_model": "openai/clip-vit-base-patch32", "use_sim_time": True}
    assert by_exe["bag_player"].params["rate"] == 0.0 and isinstance(by_exe["bag_player"].params["rate"], float)
    assert set(by_exe["bag_player"].params["wait_for_subscribers"]) == {conventions.image_topic(c)
                                                                       for c in conventions.CAMERA_CHANNELS}
    with pytest.raises(LaunchParseError, match="unknown launch arguments"):
        compose(ROOT / "launch" / "nuscenes_replay.launch.py", {"bag": "b", "bogus": "1"})
    with pytest.raises(LaunchParseError, match="'bag' has no value"):
        compose(ROOT / "launch" / "nuscenes_replay.launch.py", {})
    with pytest.raises(LaunchParseError, match="not a float"):
        compose(ROOT / "launch" / "nuscenes_replay.launch.py", {"bag": "b", "rate": "fast"})


def test_replay_makes_camera_inputs_reliable_and_live_stays_best_effort():
    """The replay composition loads config/replay.yaml: reliable image, camera_info and depth inputs for
    every camera; perception.launch.py (live drivers) sets no QoS override (sensor-data default)."""
    replay = {n.executable: n for n in compose(ROOT / "launch" / "nuscenes_replay.launch.py", {"bag": "b"})}
    values = node_values(replay["perception_node"])
    topics = input_topics(list(values["cameras"]))
    assert len(topics) == 3 * len(conventions.CAMERA_CHANNELS)
    for t in topics:
        assert values[f"{QOS_OVERRIDE_PREFIX}{t}.subscription.reliability"] == "reliable", t
    (live,) = compose(ROOT / "launch" / "perception.launch.py")
    assert not any(k.startswith(QOS_OVERRIDE_PREFIX) for k in node_values(live))


def test_checker_finds_broken_compositions(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("perception_node:\n  ros__parameters:\n    labels: []\n    no_such_param: 1\n"
                        "    semabs: {camera: CAM_FRONT}\n")  # model relevancy: semabs.* is not declared
    launch = tmp_path / "bad.launch.py"
    launch.write_text(textwrap.dedent(f'''
        from launch import LaunchDescription
        from launch_ros.actions import Node

        def generate_launch_description():
            return LaunchDescription([
                Node(package="occ_audit_ros", executable="perception_node", name="perception_node",
                     parameters=["{bad_yaml}", "{tmp_path / 'missing.yaml'}"],
                     remappings=[("semantic_voxels", "/nowhere"), ("/not_a_topic", "/tf")]),
                Node(package="occ_audit_ros", executable="no_such_exe"),
                Node(package="some_viewer", executable="viewer"),
            ])
    '''))
    problems = "\n".join(check_composition(compose(launch)))
    for expected in ("missing.yaml does not exist", "undeclared parameters ['no_such_param', 'semabs.camera']",
                     "labels must be a non-empty list", "remaps to /nowhere", "remaps /not_a_topic",
                     "no_such_exe: not a console_scripts entry point", "scripts/ros_executables/no_such_exe",
                     "package some_viewer is neither optional"):
        assert expected in problems, problems
    launch.write_text("def generate_launch_description():\n    import os\n    return None\n")
    with pytest.raises(LaunchParseError, match="unsupported statement"):
        parse_launch_file(launch)


def test_rviz_config_topics_exist_and_qos_fits():
    rviz = yaml.safe_load((ROOT / "config" / "rviz" / "occ_audit.rviz").read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    classes = {d["Class"] for d in displays}
    assert {"rviz_default_plugins/TF", "rviz_default_plugins/MarkerArray", "rviz_default_plugins/Image"} <= classes
    reliable_outputs = set(output_topics())
    known = BAG_TOPICS | reliable_outputs | {"/" + conventions.HIDDEN_MARKERS_TOPIC}
    topics = {d["Topic"]["Value"]: d["Topic"].get("Reliability Policy") for d in displays if "Topic" in d}
    assert "/" + conventions.VOXEL_MARKERS_TOPIC in topics and "/" + conventions.HIDDEN_MARKERS_TOPIC in topics
    assert any(t.endswith("/image_raw") for t in topics)
    for topic, reliability in topics.items():
        assert topic in known, f"RViz display on {topic}, which nothing publishes"
        # a Reliable RViz subscription to a best-effort camera stream would receive nothing
        if topic.endswith(("/image_raw", "/depth", "/points")):
            assert reliability == "Best Effort", topic
    assert rviz["Visualization Manager"]["Global Options"]["Fixed Frame"] == conventions.BASE_FRAME


def test_params_file_qos_override_keys_are_checked(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    qos_overrides:\n      /cam_front/image_raw:\n"
                 "        subscription: {reliability: reliable, depth: 10}\n      /cam_nope/image_raw:\n"
                 "        subscription: {reliability: reliable}\n")
    values = flatten_params_file(f, "perception_node")
    assert f"{QOS_OVERRIDE_PREFIX}/cam_front/image_raw.subscription.depth" in values
    from occ_audit_ros.launch_static import ResolvedNode

    node = ResolvedNode("occ_audit_ros", "perception_node", "perception_node", param_files=[f], source="t")
    assert check_composition([node]) == [
        "t perception_node: undeclared parameters ['qos_overrides./cam_nope/image_raw.subscription.reliability']"]


def test_in_process_launcher_runs_the_replay_composition(keyframe, tmp_path):
    import rclpy

    from occ_audit_ros.nodes.launcher import Launch
    from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

    bag = write_keyframe_bag(keyframe, tmp_path / "bag")
    rclpy.init(domain_id=1 + os.getpid() % 100)  # own DDS domain: parallel runs do not cross-talk
    launch = None
    try:
        launch = Launch(ROOT / "launch" / "nuscenes_replay.launch.py",
                        {"bag": str(bag), "clip_model": "random-tiny", "rate": "0"})
        assert [s.executable for s in launch.skipped] == ["rviz2"]
        node = launch.nodes["perception_node"]
        # the parameter file and the launch file's inline parameters both reached the node
        assert node.get_parameter("use_sim_time").value is True
        assert node.get_parameter("relevancy.output_stride").value == 2
        assert node.backend.clip.name == "random-tiny" and len(node.cameras) == 6
        launch.start()
        assert node.wait_for_frames(1, 180.0), node.counters
        assert node.last_result.voxels.frame_id == "base_link" and len(node.last_result.voxels.indices) > 1000
    finally:
        if launch is not None:
            launch.shutdown()
        rclpy.try_shutdown()


def layered_values(model):
    """Parameters of ``perception_node`` from the base file and the model's overlay, merged in order."""
    values = {}
    for f in params_files(model):
        values.update(flatten_params_file(f, "perception_node"))
    return values


@pytest.mark.parametrize("model", [None, *MODEL_PARAMS])
def test_shipped_params_files_validate(model):
    """Every key of the shipped parameter files (base alone, base + each model's overlay) is a
    parameter the node declares for that model, with a valid value."""
    values = layered_values(model)
    checked = validate({k: v for k, v in values.items() if not k.startswith("qos_overrides.")})
    assert checked["model"] == (model or "relevancy")
    assert not any(k.startswith(("semabs.", "ago.")) for k in flatten_params_file(paths.resource(
        "config/perception.yaml"), "perception_node")), "model groups belong in config/models/<model>.yaml"
    if model is not None:
        overlay = flatten_params_file(params_files(model)[1], "perception_node")
        base = flatten_params_file(params_files(None)[0], "perception_node")
        assert all(base.get(k) != v for k, v in overlay.items() if k != "model"), "overlay repeats the base"


#: Flattened ``ros__parameters`` of one full parameter file per model (every value of the base file with
#: the model's changes written in, and the base's sync.* / input.* values): what the base file +
#: ``config/models/<model>.yaml`` must reproduce.
FULL_COPIES = {
    "semabs": {
        "clip_model": "openai/clip-vit-base-patch32", "device": "auto", "model": "semabs",
        "labels": ["car", "truck", "pedestrian", "traffic cone", "barrier", "road", "sidewalk", "building",
                   "vegetation"],
        "prompt_template": "a photograph of a {} on a street.", "relevancy.preset": "",
        "relevancy.tile_fractions": [1.0], "relevancy.stride_fraction": 0.25, "relevancy.flip": False,
        "relevancy.output_stride": 2, "relevancy.batch_size": 32, "relevancy.autocast": "bfloat16",
        "cameras": ["CAM_FRONT"], "target_frame": "base_link", "grid.lower": [5.0, -1.0, -0.1],
        "grid.upper": [7.0, 1.0, 1.9], "grid.voxel_size": 0.0625, "depth.min_m": 1.0, "depth.max_m": 80.0,
        "semabs.ovssc_checkpoint": "models/semabs/ovssc_sim.safetensors",
        "semabs.vool_checkpoint": "models/semabs/vool_sim.safetensors", "semabs.camera": "CAM_FRONT",
        "semabs.workspace_center": [6.0, 0.0, 0.9], "semabs.num_points": 6000, "semabs.min_probability": 0.1,
        "sync.slop_s": 0.03, "sync.tolerance_s": 0.001, "sync.timeout_s": 0.25, "input.image_transport": "raw",
        "input.depth_topic": "depth", "tf.tolerance_s": 0.1, "diagnostics.period_s": 1.0, "publish.markers": True,
        "publish.points": True, "warn_period_s": 5.0},
    "ago": {
        "clip_model": "openai/clip-vit-base-patch32", "device": "auto", "model": "ago",
        "labels": ["car", "truck", "bus", "pedestrian", "bicycle", "traffic cone", "barrier", "road", "sidewalk",
                   "building", "vegetation"],
        "prompt_template": "a photograph of a {} on a street.", "relevancy.preset": "",
        "relevancy.tile_fractions": [1.0], "relevancy.stride_fraction": 0.25, "relevancy.flip": False,
        "relevancy.output_stride": 2, "relevancy.batch_size": 32, "relevancy.autocast": "bfloat16",
        "cameras": ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT"],
        "target_frame": "base_link", "grid.lower": [-40.0, -40.0, -1.0], "grid.upper": [40.0, 40.0, 5.4],
        "grid.voxel_size": 0.4, "depth.min_m": 1.0, "depth.max_m": 80.0,
        "semabs.ovssc_checkpoint": "models/semabs/ovssc_sim.safetensors",
        "semabs.vool_checkpoint": "models/semabs/vool_sim.safetensors", "semabs.camera": "CAM_FRONT",
        "semabs.workspace_center": [6.0, 0.0, 0.9], "semabs.num_points": 6000, "semabs.min_probability": 0.1,
        "ago.checkpoint": "models/ago/closed_ground_sim", "ago.identifier": "entropy", "sync.slop_s": 0.03,
        "sync.tolerance_s": 0.001, "sync.timeout_s": 0.25, "input.image_transport": "raw", "input.depth_topic": "depth",
        "tf.tolerance_s": 0.1, "input.max_future_s": 30.0, "diagnostics.period_s": 1.0, "publish.markers": True,
        "publish.points": True, "warn_period_s": 5.0},
}


@pytest.mark.parametrize("model", sorted(FULL_COPIES))
def test_layered_params_equal_the_former_full_copies(model):
    """Base + overlay give the node exactly the values the full per-model copies gave it; the full
    copy's parameters of other models (then declared, now not) held only their defaults."""
    full = FULL_COPIES[model]
    own = {k: v for k, v in full.items() if k not in PARAMS_BY_NAME or k in {p.name for p in node_params(model)}}
    for name in set(full) - set(own):
        assert full[name] == PARAMS_BY_NAME[name].default, name
    assert validate(layered_values(model)) == validate(own)


def test_perception_launch_model_argument_layers_the_overlay():
    launch = ROOT / "launch" / "perception.launch.py"
    for model in MODEL_PARAMS:
        (node,) = compose(launch, {"model": model, "clip_model": "random"})
        assert node.param_files == params_files(model)
        assert node_values(node)["model"] == model and node.params["clip_model"] == "random"
        assert check_composition([node]) == []
    (node,) = compose(launch, {"model": "nerf"})
    assert any("nerf.yaml does not exist" in p for p in check_composition([node]))


def test_model_parameters_map_onto_the_model_configs():
    from occ_audit_ros.backends import AgoBackendConfig, SemAbsBackendConfig
    from occ_audit_ros.nodes.backend_params import model_config, pipeline_config

    semabs = model_config("semabs", layered_values("semabs"))
    assert semabs == SemAbsBackendConfig(workspace_center=(6.0, 0.0, 0.9), num_points=6000, min_probability=0.1)
    ago = model_config("ago", {**layered_values("ago"), "ago.identifier": "none"})
    assert ago == AgoBackendConfig("models/ago/closed_ground_sim", identifier="none")
    assert model_config("relevancy", layered_values(None)) is None
    cfg = pipeline_config(layered_values("semabs"))
    assert cfg.grid.dims == (32, 32, 32) and cfg.labels[0] == "car" and cfg.relevancy.autocast == "bfloat16"
    with pytest.raises(ValueError, match="belong to model 'semabs'"):
        pipeline_config({"semabs.camera": "CAM_BACK"})


def test_in_process_launcher_layers_the_model_overlay():
    """launch/perception.launch.py model:=semabs in-process: the node gets base + overlay (rcl loads
    both --params-file in order) and builds the SemAbs backend on the overlay's workspace grid."""
    import rclpy

    from occ_audit_ros.backends import HiddenObjectQueries, SemAbsBackend
    from occ_audit_ros.nodes.launcher import Launch

    rclpy.init(domain_id=1 + os.getpid() % 100)
    launch = None
    try:
        launch = Launch(ROOT / "launch" / "perception.launch.py", {"model": "semabs", "clip_model": "random-tiny"})
        node = launch.nodes["perception_node"]
        assert isinstance(node.backend, SemAbsBackend) and isinstance(node.backend, HiddenObjectQueries)
        assert node.backend.grid.dims == (32, 32, 32) and node.cameras == ["CAM_FRONT"]
        assert node.get_parameter("relevancy.autocast").value == "bfloat16"  # from the base file
        assert node.get_parameter("semabs.num_points").value == 6000 and not node.has_parameter("ago.checkpoint")
    finally:
        if launch is not None:
            launch.shutdown()
        rclpy.try_shutdown()
