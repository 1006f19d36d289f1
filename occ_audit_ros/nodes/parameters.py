"""Declaring :class:`occ_audit_ros.params.ParamSpec` tables on rclpy nodes (all nodes of the package).

The specs are ROS-free (``occ_audit_ros/params.py``); this module is the rclpy side: declaration
with descriptors, typed overrides from Python keyword arguments, and the executables' split of their
own arguments from ``--ros-args`` (:func:`own_arguments`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args

from occ_audit_ros.params import ParamSpec

__all__ = ["ros_type", "descriptor", "declare_parameters", "overrides_from_kwargs", "first_line", "own_arguments"]

_ROS_TYPES = {"bool": Parameter.Type.BOOL, "integer": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
              "string": Parameter.Type.STRING, "bool_array": Parameter.Type.BOOL_ARRAY,
              "integer_array": Parameter.Type.INTEGER_ARRAY, "double_array": Parameter.Type.DOUBLE_ARRAY,
              "string_array": Parameter.Type.STRING_ARRAY}


def ros_type(spec: ParamSpec) -> Parameter.Type:
    """The rclpy parameter type of ``spec`` (from its default, or ``array_of`` for empty lists)."""
    return _ROS_TYPES[spec.type]


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ``rcl_interfaces/ParameterDescriptor`` of ``spec``: description, read-only flag, and for a
    scalar number with ``spec.range`` its ``FloatingPointRange`` / ``IntegerRange`` (inclusive, step 0;
    ROS checks those on every set; ranges of list elements are checked by ``params.validate``)."""
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.range is not None and spec.type == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                        to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None and spec.type == "integer":
        desc.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    return desc


def declare_parameters(node: Node, specs: Iterable[ParamSpec]) -> None:
    """Declare every parameter of ``specs`` on ``node`` once, with its :func:`descriptor`.

    Overrides (``parameter_overrides``, ``--ros-args -p``, parameter files) win over the defaults as
    usual. Empty array defaults are declared typed-but-unset and then set to ``[]``, so reading
    them never raises ``ParameterUninitializedException``.

    Raises:
        ValueError: an override of the wrong type or outside its range (rclpy's parameter
            exception, with the parameter's name).
    """
    for spec in specs:
        desc = descriptor(spec)
        try:
            if isinstance(spec.default, list) and not spec.default:
                node.declare_parameter(spec.name, ros_type(spec), desc)
                if node.get_parameter_or(spec.name, None).type_ == Parameter.Type.NOT_SET:
                    node.set_parameters([Parameter(spec.name, ros_type(spec), [])])
            else:
                node.declare_parameter(spec.name, spec.default, desc)
        except ParameterException as err:
            raise ValueError(f"parameter {spec.name}: {err}") from err


def overrides_from_kwargs(specs: Iterable[ParamSpec], values: dict[str, Any]) -> list[Parameter]:
    """``Parameter`` overrides from Python keyword values, coerced to each spec's type.

    ``rate=2`` becomes a DOUBLE 2.0 (rclpy would otherwise infer INTEGER and refuse it); ``None``
    values are skipped (keep the default); empty lists are skipped (equal to the default and
    un-typeable for rclpy).

    Raises:
        TypeError: a keyword that is not one of ``specs``.
    """
    by_name = {s.name: s for s in specs}
    coerce = {"double": float, "integer": int, "bool": bool, "string": str}
    out: list[Parameter] = []
    for name, value in values.items():
        if value is None:
            continue
        spec = by_name.get(name)
        if spec is None:
            raise TypeError(f"unknown parameter {name!r}; known: {sorted(by_name)}")
        kind = spec.type
        if kind.endswith("_array"):
            value = [coerce[kind[:-6]](v) for v in value]
            if not value:
                continue
        else:
            value = coerce[kind](value)
        out.append(Parameter(name, ros_type(spec), value))
    return out


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its class name when it has none (rcl's parse errors
    span several lines; an executable reports one)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


def own_arguments(prog: str, argv: Sequence[str]) -> list[str]:
    """The executable's own arguments: ``argv`` (without the program name) minus its ROS arguments
    (``--ros-args ... [--]``), for argparse.

    Raises:
        ValueError: one line, when rcl cannot parse the ROS arguments (a malformed ``--params-file``
            YAML, a bad ``--ros-args`` rule).
    """
    try:
        return remove_ros_args([prog, *argv])[1:]
    except Exception as err:  # noqa: BLE001 - rcl raises its own RCLError types
        raise ValueError(f"invalid ROS arguments or parameter file: {first_line(err)}") from err
