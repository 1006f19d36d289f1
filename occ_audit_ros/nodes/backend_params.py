"""Perception-node parameters (dotted ROS names, ``occ_audit_ros/params.py``) -> the library's typed configs.

The library (``occ_audit_ros.pipeline``, ``occ_audit_ros.backends``) takes dataclasses and knows no
parameter names; this module is the one place that maps the node's parameter values onto them:

* :func:`pipeline_config`: common parameters -> :class:`~occ_audit_ros.pipeline.PipelineConfig`;
* :func:`relevancy_config`: ``prompt_template`` and ``relevancy.*`` ->
  :class:`~occ_audit_ros.relevancy.RelevancyConfig` (a named preset replaces the explicit values);
* :func:`model_config`: a model's group ``<model>.*`` -> its config dataclass
  (``BACKENDS[model].config_type``; ``semabs.num_points`` -> ``SemAbsBackendConfig.num_points``).

Plain Python (no rclpy import), so benchmarks can build the node's default config without ROS.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from occ_audit_ros import params
from occ_audit_ros.backends import BACKENDS
from occ_audit_ros.pipeline import PipelineConfig
from occ_audit_ros.relevancy import RelevancyConfig
from occ_audit_ros.voxel_grid import VoxelGridSpec

__all__ = ["pipeline_config", "relevancy_config", "model_config"]


def relevancy_config(values: dict[str, Any]) -> RelevancyConfig:
    """:class:`RelevancyConfig` from validated parameter values.

    ``relevancy.preset`` non-empty: that preset (``config/relevancy_presets.yaml``) with the node's
    ``prompt_template``; else the ``relevancy.*`` values. ``relevancy.autocast`` non-empty replaces
    the autocast dtype of either ('' keeps the preset's, or float32).

    Raises:
        ValueError: for an unknown preset.
    """
    if values["relevancy.preset"]:
        try:
            rel = RelevancyConfig.from_preset(params.check_preset(values["relevancy.preset"]),
                                              prompt_template=values["prompt_template"])
        except KeyError as err:
            raise ValueError(str(err)) from err
    else:
        rel = RelevancyConfig(tile_fractions=tuple(values["relevancy.tile_fractions"]),
                              stride_fraction=values["relevancy.stride_fraction"], flip=values["relevancy.flip"],
                              prompt_template=values["prompt_template"],
                              output_stride=values["relevancy.output_stride"],
                              batch_size=values["relevancy.batch_size"])
    if values["relevancy.autocast"]:
        rel = dataclasses.replace(rel, autocast=values["relevancy.autocast"])
    return rel


def pipeline_config(values: dict[str, Any]) -> PipelineConfig:
    """:class:`PipelineConfig` from perception-node parameter values (completed and checked with
    :func:`occ_audit_ros.params.validate`; ``{}`` = the node's defaults).

    Raises:
        ValueError: on invalid parameter values (names, types, a parameter of another model, ...).
    """
    v = params.validate(values)
    grid = VoxelGridSpec(tuple(v["grid.lower"]), tuple(v["grid.upper"]), v["grid.voxel_size"])
    return PipelineConfig(labels=[str(label) for label in v["labels"]], relevancy=relevancy_config(v), grid=grid,
                          target_frame=v["target_frame"], min_depth_m=v["depth.min_m"], max_depth_m=v["depth.max_m"])


def model_config(model: str, values: dict[str, Any]) -> Any:
    """The config dataclass of ``model`` from its parameter group, or None for a model without one.

    Each parameter ``<model>.<field>`` of ``params.MODEL_PARAMS[model]`` sets ``<field>``.

    Raises:
        ValueError: on invalid values (from :func:`occ_audit_ros.params.validate` or the dataclass),
            or a group that does not match the dataclass's fields.
    """
    v = params.validate({**values, "model": model})
    config_type = BACKENDS[model].config_type
    group = params.MODEL_PARAMS[model]
    if config_type is None:
        if group:
            raise ValueError(f"model {model!r} has parameters {[p.name for p in group]} but no config type")
        return None
    fields = {spec.name[len(model) + 1:]: v[spec.name] for spec in group}
    names = {f.name for f in dataclasses.fields(config_type)}
    if set(fields) != names:
        raise ValueError(f"parameters of model {model!r} {sorted(fields)} do not match "
                         f"{config_type.__name__} fields {sorted(names)}")
    return config_type(**fields)
