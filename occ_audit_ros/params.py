"""Every parameter of the perception node, declared once: name, default, type and description.

Two kinds: :data:`COMMON_PARAMS`, declared by every perception node, and one group per value of the
``model`` parameter (:data:`MODEL_PARAMS`: ``semabs.*`` for ``model: semabs``, ``ago.*`` for
``model: ago``), declared only when that model is chosen (:func:`node_params`). The node
(``occ_audit_ros.nodes.perception_node``) declares them, ``config/perception.yaml`` (base) and
``config/models/<model>.yaml`` (what the model changes) set them (:func:`params_files`), the
ROS side maps them to the library's config dataclasses (``occ_audit_ros.nodes.backend_params``), and
the parameter table of the docs is generated from them (``occ_audit_params --markdown``). ROS-free.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occ_audit_ros.conventions import BASE_FRAME, CAMERA_CHANNELS


#: ROS parameter type names by the Python type of a default (``ParamSpec.type``).
_TYPE_NAMES = {bool: "bool", int: "integer", float: "double", str: "string"}


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: dotted ROS name, default (its Python type is the parameter type), doc.

    Attributes:
        name: dotted ROS parameter name (YAML nesting = dots).
        default: default value; its Python type fixes the ROS parameter type.
        description: one-line documentation (ParameterDescriptor.description and the node page's table).
        read_only: cannot change after start (ROS rejects the change).
        choices: allowed values for a string parameter (empty = any).
        array_of: element type of a list parameter whose default may be empty (``str`` for a
            string array); None = the type of the default's first element.
        range: inclusive ``(low, high)`` of a number, or of every element of a number list; None =
            any finite value. Scalars carry it in their ROS descriptor (``FloatingPointRange`` /
            ``IntegerRange``); :func:`validate` checks it for lists too.

    One spec type serves every node of the package (perception node, bag player, bag recorder):
    ``occ_audit_ros.nodes.parameters.declare_parameters`` declares them, :func:`markdown_table`
    documents them.
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple[str, ...] = ()
    array_of: type | None = None
    range: tuple[float, float] | None = None

    @property
    def type(self) -> str:
        """ROS parameter type name: bool, integer, double, string, or ``<element>_array``."""
        if isinstance(self.default, list):
            return _TYPE_NAMES[self.array_of or type(self.default[0])] + "_array"
        return _TYPE_NAMES[type(self.default)]


#: Most labels a perception node accepts, and most characters per label (every label is a CLIP text
#: prompt on every frame; CLIP's text context is 77 tokens).
MAX_LABELS = 256
MAX_LABEL_CHARS = 100
#: Most voxels of the published grid (grid extent / grid.voxel_size, the product over x, y, z).
MAX_GRID_VOXELS = 2 ** 26

DRIVING_LABELS = ["car", "truck", "bus", "pedestrian", "bicycle", "traffic cone", "barrier", "road",
                  "sidewalk", "building", "vegetation"]

#: Parameters of one model (value of ``model``), declared only when that model is chosen; the
#: group's prefix is the model's name and each name after it a field of the model's config dataclass
#: (``occ_audit_ros.backends``: ``SemAbsBackendConfig``, ``AgoBackendConfig``).
SEMABS_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("semabs.ovssc_checkpoint", "models/semabs/ovssc_sim.safetensors",
              "SemAbs OVSSC checkpoint (safetensors; relative paths: working directory, then the package share).",
              read_only=True),
    ParamSpec("semabs.vool_checkpoint", "models/semabs/vool_sim.safetensors",
              "SemAbs VOOL checkpoint for hidden-object queries; '' = queries are refused.", read_only=True),
    ParamSpec("semabs.camera", "CAM_FRONT", "The camera whose RGB-D view SemAbs completes (single view).",
              read_only=True),
    ParamSpec("semabs.workspace_center", [6.0, 0.0, 0.9],
              "Centre of the SemAbs workspace cube (the checkpoint's size, 2 m for the shipped ones) in "
              "target_frame [m]; axes parallel to target_frame. Only grid voxels inside it are predicted.",
              read_only=True, range=(-1000.0, 1000.0)),
    ParamSpec("semabs.num_points", 6000, "Points sampled from the relevancy cloud per view (the shipped checkpoints were trained with 6000; SemAbs: 80000).",
              read_only=True, range=(1, 1_000_000)),
    ParamSpec("semabs.min_probability", 0.1,
              "Hidden-object answers list the workspace voxels with at least this probability.", range=(0.0, 1.0)),
)
AGO_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("ago.checkpoint", "", "AGO run or checkpoint directory (training/train_ago.py); needed for model ago.",
              read_only=True),
    ParamSpec("ago.identifier", "entropy",
              "AGO open-world identifier: 'entropy' (Eq. 9), 'confidence', or 'none' (grounding branch only).",
              read_only=True, choices=("entropy", "confidence", "none")),
)
#: Model name -> its parameter group (``relevancy`` has none). The keys are the values of ``model``.
MODEL_PARAMS: dict[str, tuple[ParamSpec, ...]] = {"relevancy": (), "semabs": SEMABS_PARAMS, "ago": AGO_PARAMS}

COMMON_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("clip_model", "openai/clip-vit-base-patch32",
              "CLIP checkpoint: local directory or Hugging Face hub id (ViT-B/32 per Semantic Abstraction). "
              "'random' = ViT-B/32 layout with random weights, 'random-tiny' = tiny random model; both for "
              "tests/offline demos only, every output is then marked random_weights.", read_only=True),
    ParamSpec("device", "auto", "Torch device: 'auto' (CUDA when available), 'cpu' or 'cuda[:N]'.", read_only=True),
    ParamSpec("model", "relevancy",
              "What turns the cameras into the grid: 'relevancy' (relevancy point cloud fused into the grid), "
              "'semabs' (Semantic Abstraction OVSSC completion of one camera's RGB-D view inside the SemAbs "
              "workspace, plus hidden-object queries), 'ago' (an AGO checkpoint on all cameras; its grid "
              "replaces grid.*). Parameters of a model (semabs.*, ago.*) are declared only when it is chosen.",
              read_only=True, choices=tuple(MODEL_PARAMS)),
    ParamSpec("labels", list(DRIVING_LABELS),
              "Open-vocabulary label set queried jointly on every frame (relevancy is mean-subtracted over it); "
              f"1 to {MAX_LABELS} distinct labels of 1 to {MAX_LABEL_CHARS} characters."),
    ParamSpec("prompt_template", "a photograph of a {} on a street.", "CLIP text prompt; '{}' is replaced by the label."),
    ParamSpec("relevancy.preset", "",
              "Relevancy preset by name ('semabs', 'fast') when occ_audit_ros.relevancy provides presets; "
              "'' = use the relevancy.* parameters below. Changeable at run time (validated)."),
    ParamSpec("relevancy.tile_fractions", [1.0],
              "Sliding-window tile side per scale, as a fraction of the image's short side.", range=(0.01, 1.0)),
    ParamSpec("relevancy.stride_fraction", 0.25, "Window stride as a fraction of the tile side.", range=(0.01, 1.0)),
    ParamSpec("relevancy.flip", False, "Also evaluate horizontally mirrored tiles (twice the cost)."),
    ParamSpec("relevancy.output_stride", 2, "Relevancy maps are computed at image size / output_stride [px].",
              range=(1, 64)),
    ParamSpec("relevancy.batch_size", 32, "CLIP crops per forward pass.", range=(1, 4096)),
    ParamSpec("relevancy.autocast", "",
              "Autocast dtype of the CLIP passes: 'bfloat16' (CPU or GPU), 'float16' (GPU), 'none' (float32); "
              "'' keeps the preset's. bfloat16 on 2 CPU cores: 1.51 s vs 2.19 s per keyframe end to end, maps "
              "correlate 0.9998 with float32 (benchmarks/node_latency.py, docs/nodes/perception_node.md).",
              read_only=True, choices=("", "none", "bfloat16", "float16")),
    ParamSpec("cameras", list(CAMERA_CHANNELS),
              "Camera names; each has <ns>/image_raw (or image_raw/compressed), <ns>/camera_info and <ns>/depth, with "
              "ns = lower-case name relative to the node's namespace (remap or push a namespace for a rig)."),
    ParamSpec("target_frame", BASE_FRAME, "Frame of the published voxel grid (REP-105 base_link)."),
    ParamSpec("grid.lower", [-40.0, -40.0, -1.0], "Minimum corner of the voxel grid in target_frame [m] (Occ3D-nuScenes).",
              range=(-1000.0, 1000.0)),
    ParamSpec("grid.upper", [40.0, 40.0, 5.4], "Maximum corner of the voxel grid in target_frame [m]; above grid.lower "
              f"on every axis, at most {MAX_GRID_VOXELS} voxels in all.", range=(-1000.0, 1000.0)),
    ParamSpec("grid.voxel_size", 0.4, "Voxel edge length [m].", range=(0.01, 10.0)),
    ParamSpec("depth.min_m", 1.0, "Depth readings nearer than this are ignored [m]; below depth.max_m.",
              range=(0.0, 1000.0)),
    ParamSpec("depth.max_m", 80.0, "Depth readings farther than this are ignored [m].", range=(0.0, 1000.0)),
    ParamSpec("sync.slop_s", 0.03,
              "Cross-camera slop: every camera stamp of a synchronised set lies within this of the set's centre "
              "[s]. Below half the camera period (41.7 ms at nuScenes' 12 Hz); the 60 ms window holds the ~43 ms "
              "over which nuScenes' six cameras fire.", range=(0.0, 10.0)),
    ParamSpec("sync.tolerance_s", 0.001,
              "Per camera: max stamp difference between its image, camera_info and depth of one frame [s].",
              read_only=True, range=(0.0, 10.0)),
    ParamSpec("sync.timeout_s", 0.25,
              "A camera without a frame this long past a set's first stamp (or silent this long) is left out "
              "and the present cameras are processed; /diagnostics names it [s]. 0 waits for every camera.",
              range=(0.0, 60.0)),
    ParamSpec("input.image_transport", "raw",
              "Camera images: 'raw' subscribes to <camera>/image_raw (sensor_msgs/Image), 'compressed' to "
              "<camera>/image_raw/compressed (sensor_msgs/CompressedImage, JPEG or PNG).",
              read_only=True, choices=("raw", "compressed")),
    ParamSpec("input.depth_topic", "depth",
              "Depth image topic under each camera's namespace (sensor_msgs/Image 16UC1 mm or 32FC1 m).",
              read_only=True),
    ParamSpec("publish.markers", True, "Publish visualization_msgs/MarkerArray of the voxels."),
    ParamSpec("publish.points", True, "Publish sensor_msgs/PointCloud2 (x, y, z, label, score) of the voxels."),
    ParamSpec("tf.tolerance_s", 0.1,
              "How far an image stamp may lie past the newest transform of its TF path and still use that newest "
              "transform [s]; inside the data transforms are interpolated (tf2), before it or further past it the "
              "frame is skipped. The same for tf2_ros and the built-in buffer.", range=(0.0, 10.0)),
    ParamSpec("tf.timeout_s", 0.05,
              "Longest wait of one transform lookup for the transforms it needs (tf2 lookup timeout) [s].",
              range=(0.0, 10.0)),
    ParamSpec("input.max_future_s", 30.0,
              "Messages stamped further than this ahead of the node's clock are dropped with a warning [s] "
              "(skipped while the clock reads 0, e.g. use_sim_time before the first /clock).", range=(0.0, 86400.0)),
    ParamSpec("diagnostics.period_s", 1.0,
              "Period of diagnostic_msgs/DiagnosticArray on /diagnostics (rates, counters, per-stage latency) [s]; "
              "0 disables.", range=(0.0, 3600.0)),
    ParamSpec("warn_period_s", 5.0, "Minimum period between repeated warnings of one kind [s].", range=(0.0, 3600.0)),
)

#: Every parameter a perception node may declare (common ones, then each model's group).
PERCEPTION_PARAMS: tuple[ParamSpec, ...] = COMMON_PARAMS + tuple(p for g in MODEL_PARAMS.values() for p in g)
#: Parameter name -> the model whose group declares it (absent: a common parameter).
MODEL_OF: dict[str, str] = {p.name: m for m, g in MODEL_PARAMS.items() for p in g}

#: Per-topic QoS overrides (rclpy QoSOverridingOptions, standard ROS 2 parameters): for every input topic
#: ``T`` of the node, ``qos_overrides.T.subscription.<policy>`` with these policies, read-only, set from
#: the parameter file, e.g. ``qos_overrides: {/cam_front/image_raw: {subscription: {reliability: reliable}}}``.
QOS_OVERRIDE_POLICIES = ("history", "depth", "reliability")
QOS_OVERRIDE_PREFIX = "qos_overrides."


def qos_override_names(topics: list[str]) -> list[str]:
    """Parameter names of the per-topic QoS overrides for fully qualified input ``topics``."""
    return [f"{QOS_OVERRIDE_PREFIX}{t}.subscription.{p}" for t in topics for p in QOS_OVERRIDE_POLICIES]

PARAMS_BY_NAME = {p.name: p for p in PERCEPTION_PARAMS}


def node_params(model: str) -> tuple[ParamSpec, ...]:
    """The parameters a perception node with ``model`` declares: the common ones and the model's group.

    Raises:
        ValueError: for a name that is not a model (:data:`MODEL_PARAMS`).
    """
    if model not in MODEL_PARAMS:
        raise ValueError(f"parameter model must be one of {list(MODEL_PARAMS)}, got {model!r}")
    return COMMON_PARAMS + MODEL_PARAMS[model]


def defaults(model: str | None = None) -> dict[str, Any]:
    """Parameter name -> default value (fresh copies of lists) of a node with ``model`` (None: the
    default model, ``relevancy``).

    Raises:
        ValueError: for an unknown model.
    """
    specs = node_params(PARAMS_BY_NAME["model"].default if model is None else model)
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in specs}


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Complete ``values`` with the defaults of their model and check names and types.

    The model is ``values["model"]`` (default ``relevancy``); only the common parameters and that
    model's group are known (:func:`node_params`): a parameter of another model is an error.

    Raises:
        ValueError: for unknown names, a parameter of another model, wrong types or values, an empty
            label/camera list.
    """
    model = values.get("model", PARAMS_BY_NAME["model"].default)
    if not isinstance(model, str) or model not in MODEL_PARAMS:
        raise ValueError(f"parameter model must be one of {list(MODEL_PARAMS)}, got {model!r}")
    known = {p.name: p for p in node_params(model)}
    foreign = sorted(n for n in values if n not in known and n in MODEL_OF)
    if foreign:
        raise ValueError(f"parameters {foreign} belong to model {MODEL_OF[foreign[0]]!r}, but model is {model!r} "
                         f"(they are declared only with their model)")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(known)}")
    out = defaults(model)
    for name, value in values.items():
        default = known[name].default
        if isinstance(default, bool) != isinstance(value, bool):
            raise ValueError(f"parameter {name} must be a bool, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"parameter {name} must be a list, got {value!r}")
            if len(value) > 10 * MAX_LABELS:
                raise ValueError(f"parameter {name} has {len(value)} items; at most {10 * MAX_LABELS}")
            value = [float(v) if isinstance(default[0], float) else v for v in value]
        elif not isinstance(value, type(default)):
            raise ValueError(f"parameter {name} must be {type(default).__name__}, got {value!r}")
        out[name] = value
    for name, value in out.items():
        spec = known[name]
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {name} must be one of {list(spec.choices)}, got {value!r}")
        check_range(spec, value)
    if model == "semabs":
        if len(out["semabs.workspace_center"]) != 3:
            raise ValueError("parameter semabs.workspace_center must have 3 elements, "
                             f"got {out['semabs.workspace_center']!r}")
    if model == "ago" and not out["ago.checkpoint"]:
        raise ValueError("model 'ago' needs ago.checkpoint (a run directory of training/train_ago.py)")
    for name in ("labels", "cameras"):
        if not out[name] or any(not isinstance(v, str) or not v.strip() for v in out[name]):
            raise ValueError(f"parameter {name} must be a non-empty list of non-empty strings, got {out[name]!r}")
    if len(set(out["labels"])) != len(out["labels"]):
        raise ValueError(f"parameter labels has duplicates: {_short(out['labels'])}")
    if len(out["labels"]) > MAX_LABELS:
        raise ValueError(f"parameter labels has {len(out['labels'])} labels; at most {MAX_LABELS}")
    long = [v for v in out["labels"] if len(v) > MAX_LABEL_CHARS]
    if long:
        raise ValueError(f"parameter labels: {len(long)} labels longer than {MAX_LABEL_CHARS} characters, "
                         f"e.g. {long[0][:40]!r}...")
    lower, upper = out["grid.lower"], out["grid.upper"]
    if len(lower) != 3 or len(upper) != 3 or not all(lo < hi for lo, hi in zip(lower, upper)):
        raise ValueError(f"parameters grid.lower {lower!r} and grid.upper {upper!r} must be 3 values each, "
                         "lower < upper on every axis")
    voxels = math.prod(math.ceil((hi - lo) / out["grid.voxel_size"] - 1e-9) for lo, hi in zip(lower, upper))
    if voxels > MAX_GRID_VOXELS:
        raise ValueError(f"grid.lower/grid.upper/grid.voxel_size give {voxels} voxels; at most {MAX_GRID_VOXELS}")
    if not out["depth.min_m"] < out["depth.max_m"]:
        raise ValueError(f"parameter depth.min_m ({out['depth.min_m']}) must be below depth.max_m "
                         f"({out['depth.max_m']})")
    for name in ("sync.slop_s", "sync.tolerance_s", "sync.timeout_s", "tf.tolerance_s", "input.max_future_s", "diagnostics.period_s", "warn_period_s"):
        if not out[name] >= 0:
            raise ValueError(f"parameter {name} must be >= 0, got {out[name]!r}")
    return out


def _short(values: list) -> str:
    """``repr`` of a list, cut to its first ten items (parameter errors name huge lists briefly)."""
    return repr(values) if len(values) <= 10 else f"{values[:10]!r}... ({len(values)} items)"


def check_range(spec: ParamSpec, value: Any) -> None:
    """Check that a number (or every element of a number list) is finite and inside ``spec.range``.

    Raises:
        ValueError: naming the parameter, the value and the allowed range.
    """
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"parameter {spec.name} must be finite, got {v!r}")
        if spec.range is not None and not spec.range[0] <= v <= spec.range[1]:
            raise ValueError(f"parameter {spec.name} must be in [{spec.range[0]}, {spec.range[1]}], got {v!r}")


#: The base parameter file of the perception node and the folder of the per-model overlays.
BASE_PARAMS_FILE = "config/perception.yaml"
MODEL_PARAMS_DIR = "config/models"


def params_files(model: str | None = None, base: str | Path | None = None) -> list[Path]:
    """Parameter files of a perception node, in load order (later files win, as ROS 2 loads several
    ``--params-file``): the base file, then ``config/models/<model>.yaml`` (only what the model
    changes: ``model`` itself, its group, grid or labels it needs).

    Args:
        model: a key of :data:`MODEL_PARAMS`, or None (the base file alone).
        base: the base file; default ``config/perception.yaml`` of the source tree or install.

    Raises:
        ValueError: for an unknown model. FileNotFoundError: when a file is missing.
    """
    from occ_audit_ros import paths

    files = [Path(base) if base is not None else paths.resource(BASE_PARAMS_FILE)]
    if model is not None:
        if model not in MODEL_PARAMS:
            raise ValueError(f"unknown model {model!r}; models: {list(MODEL_PARAMS)}")
        files.append(paths.resource(f"{MODEL_PARAMS_DIR}/{model}.yaml"))
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"parameter file {f} not found")
    return files


def relevancy_presets() -> tuple[str, ...]:
    """Preset names offered by ``occ_audit_ros.relevancy`` (its ``PRESETS`` mapping), () if none yet."""
    from occ_audit_ros import relevancy

    return tuple(sorted(getattr(relevancy, "PRESETS", {}) or ()))


def check_preset(name: str) -> str:
    """Validate a ``relevancy.preset`` value ('' = explicit relevancy.* parameters).

    Raises:
        ValueError: for a name that ``occ_audit_ros.relevancy`` does not offer.
    """
    if name == "":
        return name
    known = relevancy_presets()
    if name not in known:
        raise ValueError(f"unknown relevancy preset {name!r}; available: {list(known) or 'none in this build'} "
                         "('' = use the relevancy.* parameters)")
    return name


def _range_text(spec: ParamSpec) -> str:
    return "" if spec.range is None else f" Range [{spec.range[0]}, {spec.range[1]}]."


def markdown_table(specs: tuple[ParamSpec, ...] | None = None) -> str:
    """Markdown table of ``specs``; default: the perception node's (the docs' table), with a ``model``
    column (``any`` = declared by every node, else the model whose group it is) and the QoS-override row."""
    if specs is not None:
        rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
        for p in specs:
            rows.append(f"| `{p.name}` | {p.type} | `{p.default!r}` | {p.description}"
                        f"{' (read-only)' if p.read_only else ''} |")
        return "\n".join(rows)
    rows = ["| parameter | model | type | default | description |", "|---|---|---|---|---|"]
    for p in PERCEPTION_PARAMS:
        rows.append(f"| `{p.name}` | {MODEL_OF.get(p.name, 'any')} | {p.type} | `{p.default!r}` | {p.description}"
                    f"{_range_text(p)}{' (read-only)' if p.read_only else ''} |")
    rows.append(f"| `qos_overrides.<topic>.subscription.{{{','.join(QOS_OVERRIDE_POLICIES)}}}` | any | per policy | "
                "sensor data (best effort, keep last 5) | Per-input-topic QoS override (rclpy QoSOverridingOptions), "
                "read-only, from the parameter file. |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``occ_audit_params --markdown``: print the perception node's parameter table (docs/nodes/perception_node.md)."""
    import argparse

    ap = argparse.ArgumentParser(prog="occ_audit_params", description=main.__doc__)
    ap.add_argument("--markdown", action="store_true", help="print the parameter table as Markdown")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_table())
    else:
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
