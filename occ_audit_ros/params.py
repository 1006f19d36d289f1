"""Every parameter of the perception node, declared once: name, default, type and description.

The node declares exactly these (``occ_audit_ros.nodes.perception_node``), ``config/perception.yaml``
sets them, the pipeline is built from them (:func:`pipeline_config_from_params`), and the README's
parameter table is generated from them (``python -m occ_audit_ros.params --markdown``). ROS-free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .conventions import BASE_FRAME, CAMERA_CHANNELS


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: dotted ROS name, default (its Python type is the parameter type), doc."""

    name: str
    default: Any
    description: str
    read_only: bool = False


DRIVING_LABELS = ["car", "truck", "bus", "pedestrian", "bicycle", "traffic cone", "barrier", "road",
                  "sidewalk", "building", "vegetation"]

PERCEPTION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("clip_model", "openai/clip-vit-base-patch32",
              "CLIP checkpoint: local directory or Hugging Face hub id (ViT-B/32 per Semantic Abstraction). "
              "'random' = ViT-B/32 layout with random weights, 'random-tiny' = tiny random model; both for "
              "tests/offline demos only, every output is then marked random_weights.", read_only=True),
    ParamSpec("device", "auto", "Torch device: 'auto' (CUDA when available), 'cpu' or 'cuda[:N]'.", read_only=True),
    ParamSpec("labels", list(DRIVING_LABELS),
              "Open-vocabulary label set queried jointly on every frame (relevancy is mean-subtracted over it)."),
    ParamSpec("prompt_template", "a photograph of a {} on a street.", "CLIP text prompt; '{}' is replaced by the label."),
    ParamSpec("relevancy.tile_fractions", [1.0],
              "Sliding-window tile side per scale, as a fraction of the image's short side."),
    ParamSpec("relevancy.stride_fraction", 0.25, "Window stride as a fraction of the tile side."),
    ParamSpec("relevancy.flip", False, "Also evaluate horizontally mirrored tiles (twice the cost)."),
    ParamSpec("relevancy.output_stride", 2, "Relevancy maps are computed at image size / output_stride [px]."),
    ParamSpec("relevancy.batch_size", 32, "CLIP crops per forward pass."),
    ParamSpec("cameras", list(CAMERA_CHANNELS),
              "Camera names; each has <ns>/image_raw, <ns>/camera_info and <ns>/depth with ns = lower-case name."),
    ParamSpec("target_frame", BASE_FRAME, "Frame of the published voxel grid (REP-105 base_link)."),
    ParamSpec("grid.lower", [-40.0, -40.0, -1.0], "Minimum corner of the voxel grid in target_frame [m] (Occ3D-nuScenes)."),
    ParamSpec("grid.upper", [40.0, 40.0, 5.4], "Maximum corner of the voxel grid in target_frame [m]."),
    ParamSpec("grid.voxel_size", 0.4, "Voxel edge length [m]."),
    ParamSpec("depth.min_m", 1.0, "Depth readings nearer than this are ignored [m]."),
    ParamSpec("depth.max_m", 80.0, "Depth readings farther than this are ignored [m]."),
    ParamSpec("sync.slop_s", 0.1, "Max stamp spread of one synchronised set of camera images, infos and depths [s]."),
    ParamSpec("publish.markers", True, "Publish visualization_msgs/MarkerArray of the voxels."),
    ParamSpec("publish.points", True, "Publish sensor_msgs/PointCloud2 (x, y, z, label, score) of the voxels."),
    ParamSpec("warn_period_s", 5.0, "Minimum period between repeated warnings of one kind [s]."),
)

PARAMS_BY_NAME = {p.name: p for p in PERCEPTION_PARAMS}


def defaults() -> dict[str, Any]:
    """Parameter name -> default value (fresh copies of lists)."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PERCEPTION_PARAMS}


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Complete ``values`` with defaults and check names and types.

    Raises:
        ValueError: for unknown names, wrong types or an empty label/camera list.
    """
    unknown = sorted(set(values) - set(PARAMS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(PARAMS_BY_NAME)}")
    out = defaults()
    for name, value in values.items():
        default = PARAMS_BY_NAME[name].default
        if isinstance(default, bool) != isinstance(value, bool):
            raise ValueError(f"parameter {name} must be a bool, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"parameter {name} must be a list, got {value!r}")
            value = [float(v) if isinstance(default[0], float) else v for v in value]
        elif not isinstance(value, type(default)):
            raise ValueError(f"parameter {name} must be {type(default).__name__}, got {value!r}")
        out[name] = value
    for name in ("labels", "cameras"):
        if not out[name] or any(not str(v).strip() for v in out[name]):
            raise ValueError(f"parameter {name} must be a non-empty list of non-empty strings, got {out[name]!r}")
    return out


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ["| parameter | default | description |", "|---|---|---|"]
    for p in PERCEPTION_PARAMS:
        rows.append(f"| `{p.name}` | `{p.default}` | {p.description}{' (read-only)' if p.read_only else ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown_table())
