"""Static reading of this package's launch files (launch_ros form) without launch_ros (ROS-free).

launch_ros cannot be installed in the venv, so ``launch/*.launch.py`` cannot be executed here. This
module reads them with :mod:`ast` instead: the ``generate_launch_description()`` body may assign
``get_package_share_directory(...)`` to names and return ``LaunchDescription([...])`` of
``DeclareLaunchArgument``, ``Node`` and ``IncludeLaunchDescription`` actions whose arguments are
literals, ``LaunchConfiguration``, ``os.path.join``, ``IfCondition`` / ``UnlessCondition``,
``ParameterValue(..., value_type=...)`` and ``PythonLaunchDescriptionSource``; an entry of a
``Node``'s ``parameters`` is an inline dict, a path, or a list of text and substitutions that
launch_ros concatenates into one path (``[dir, LaunchConfiguration("model"), ".yaml"]``: layered
parameter files). Anything else raises :class:`LaunchParseError`, so a launch file
that grows beyond what is checked here fails loudly instead of being half-checked.

:func:`compose` resolves a launch file with arguments into the list of nodes it would start
(includes expanded, conditions applied, substitutions replaced, parameter files located); the
static tests and the in-process launcher (``occ_audit_ros.nodes.launcher``) both use it.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occ_audit_ros import paths

PACKAGE = "occ_audit_ros"


class LaunchParseError(ValueError):
    """A launch file uses a construct this static reader does not understand, or is inconsistent."""


@dataclass(frozen=True)
class Arg:
    """``LaunchConfiguration(name)``."""

    name: str


@dataclass(frozen=True)
class Share:
    """``get_package_share_directory(package)``."""

    package: str


@dataclass(frozen=True)
class Join:
    """``os.path.join(*parts)``."""

    parts: tuple


@dataclass(frozen=True)
class Condition:
    """``IfCondition(expr)`` (``negate`` False) or ``UnlessCondition(expr)``."""

    expr: Any
    negate: bool = False


@dataclass(frozen=True)
class Typed:
    """``launch_ros.parameter_descriptions.ParameterValue(expr, value_type=T)`` (T: str/int/float/bool)."""

    expr: Any
    value_type: str


@dataclass
class Action:
    """A launch action call: its class name and evaluated arguments."""

    kind: str
    args: list
    kwargs: dict
    lineno: int


@dataclass
class LaunchFile:
    """One parsed launch file: declared arguments (name -> default or None) and actions in order."""

    path: Path
    arguments: dict[str, Any]
    actions: list[Action]


@dataclass
class ResolvedNode:
    """A node the launch description would start, with every substitution resolved.

    Attributes:
        package, executable, name: as in ``launch_ros.actions.Node``.
        param_files: parameter YAML files in order (later files win, as rcl loads several ``--params-file``).
        params: inline parameter dicts merged in order (later wins), values YAML-typed like launch_ros.
        remappings: (from, to) topic pairs.
        arguments: command-line arguments.
        source: launch file and line of the ``Node(...)``.
        conditional: the node has a launch condition (e.g. ``rviz:=false`` turns it off).
    """

    package: str
    executable: str
    name: str
    param_files: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    source: str = ""
    conditional: bool = False


_ACTIONS = {"LaunchDescription", "DeclareLaunchArgument", "Node", "IncludeLaunchDescription"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise LaunchParseError(f"line {node.lineno}: unsupported callee {ast.dump(node)}")


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_eval(k, env): _eval(v, env) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise LaunchParseError(f"line {node.lineno}: unknown name {node.id!r}")
        return env[node.id]
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr == "items" and not node.args:
            value = _eval(node.func.value, env)
            if not isinstance(value, dict):
                raise LaunchParseError(f"line {node.lineno}: .items() of a non-dict")
            return value
        name = _dotted(node.func).split(".")[-1] if _dotted(node.func) != "os.path.join" else "os.path.join"
        args = [_eval(a, env) for a in node.args]
        if name == "ParameterValue":
            vt = {k.arg: k.value for k in node.keywords}.get("value_type")
            if not isinstance(vt, ast.Name) or vt.id not in ("str", "int", "float", "bool") or len(args) != 1:
                raise LaunchParseError(f"line {node.lineno}: ParameterValue(expr, value_type=str/int/float/bool)")
            return Typed(args[0], vt.id)
        kwargs = {k.arg: _eval(k.value, env) for k in node.keywords}
        if name == "get_package_share_directory":
            return Share(args[0])
        if name == "os.path.join":
            return Join(tuple(args))
        if name == "LaunchConfiguration":
            return Arg(args[0])
        if name in ("IfCondition", "UnlessCondition"):
            return Condition(args[0], negate=name == "UnlessCondition")
        if name == "PythonLaunchDescriptionSource":
            return args[0]
        if name in _ACTIONS:
            return Action(name, args, kwargs, node.lineno)
        raise LaunchParseError(f"line {node.lineno}: unsupported call {name}()")
    raise LaunchParseError(f"line {getattr(node, 'lineno', '?')}: unsupported expression {type(node).__name__}")


def parse_launch_file(path: str | Path) -> LaunchFile:
    """Read a launch_ros Python launch file without executing it.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        LaunchParseError: on constructs outside the supported subset (module docstring).
    """
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"]
    if len(funcs) != 1:
        raise LaunchParseError(f"{path}: needs exactly one generate_launch_description()")
    env: dict[str, Any] = {}
    description = None
    for stmt in funcs[0].body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            env[stmt.targets[0].id] = _eval(stmt.value, env)
        elif isinstance(stmt, ast.Return):
            description = _eval(stmt.value, env)
        else:
            raise LaunchParseError(f"{path}: line {stmt.lineno}: unsupported statement {type(stmt).__name__}")
    if not isinstance(description, Action) or description.kind != "LaunchDescription":
        raise LaunchParseError(f"{path}: generate_launch_description() must return LaunchDescription([...])")
    actions = description.args[0] if description.args else []
    arguments = {}
    for a in actions:
        if not isinstance(a, Action):
            raise LaunchParseError(f"{path}: LaunchDescription holds a non-action {a!r}")
        if a.kind == "DeclareLaunchArgument":
            arguments[a.args[0]] = a.kwargs.get("default_value")
    return LaunchFile(path, arguments, [a for a in actions if a.kind != "DeclareLaunchArgument"])


def share_dir(package: str) -> Path:
    """This package's share directory (source tree or colcon install); other packages are unknown here.

    Raises:
        LaunchParseError: for another package.
    """
    if package != PACKAGE:
        raise LaunchParseError(f"share directory of {package!r} is not available without ament_index")
    return paths.resource("launch").parent


def _resolve(value: Any, args: dict[str, str]) -> Any:
    if isinstance(value, Arg):
        if args.get(value.name) is None:
            raise LaunchParseError(f"launch argument {value.name!r} has no value (declare a default or pass it)")
        return args[value.name]
    if isinstance(value, Share):
        return str(share_dir(value.package))
    if isinstance(value, Join):
        return os.path.join(*[str(_resolve(p, args)) for p in value.parts])
    if isinstance(value, Typed):
        text = str(_resolve(value.expr, args))
        try:
            if value.value_type == "bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                return text.lower() == "true"
            return {"str": str, "int": int, "float": float}[value.value_type](text)
        except ValueError as err:
            raise LaunchParseError(f"value {text!r} is not a {value.value_type}") from err
    if isinstance(value, list):
        return [_resolve(v, args) for v in value]
    if isinstance(value, dict):
        return {_resolve(k, args): _resolve(v, args) for k, v in value.items()}
    return value


def _typed(value: Any) -> Any:
    """launch_ros turns substituted strings in parameter dicts into YAML values ('1.0' -> 1.0)."""
    if not isinstance(value, str):
        return value
    if isinstance(value, str):
        loaded = yaml.safe_load(value) if value.strip() else value
        return loaded if isinstance(loaded, (bool, int, float, str, list)) else value
    return value


def _condition_holds(cond: Condition | None, args: dict[str, str]) -> bool:
    if cond is None:
        return True
    text = str(_resolve(cond.expr, args)).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise LaunchParseError(f"condition value {text!r} is not true/false/1/0")
    return (text in ("true", "1")) != cond.negate


def compose(path: str | Path, arguments: dict[str, str] | None = None, *, with_conditions: bool = True,
            _depth: int = 0) -> list[ResolvedNode]:
    """Nodes that ``ros2 launch`` of ``path`` would start, with substitutions and includes resolved.

    Args:
        path: launch file.
        arguments: launch arguments ``name -> string`` (``ros2 launch ... name:=value``).
        with_conditions: False = also list nodes whose condition is false (for static checks).

    Raises:
        LaunchParseError: unknown launch argument, missing value, unsupported construct.
    """
    if _depth > 8:
        raise LaunchParseError("launch includes nest too deeply")
    lf = parse_launch_file(path)
    given = dict(arguments or {})
    unknown = sorted(set(given) - set(lf.arguments))
    if unknown:
        raise LaunchParseError(f"{lf.path.name}: unknown launch arguments {unknown}; declared: {sorted(lf.arguments)}")
    args = {k: (None if v is None else str(_resolve(v, {}))) for k, v in lf.arguments.items()}
    args.update({k: str(v) for k, v in given.items()})
    nodes: list[ResolvedNode] = []
    for a in lf.actions:
        if with_conditions and not _condition_holds(a.kwargs.get("condition"), args):
            continue
        if a.kind == "IncludeLaunchDescription":
            source = Path(_resolve(a.args[0], args))
            inner_args = {k: str(_resolve(v, args)) for k, v in a.kwargs.get("launch_arguments", {}).items()}
            nodes += compose(source, inner_args, with_conditions=with_conditions, _depth=_depth + 1)
            continue
        kw = a.kwargs
        node = ResolvedNode(package=kw["package"], executable=kw["executable"], name=kw.get("name", kw["executable"]),
                            source=f"{lf.path.name}:{a.lineno}", conditional="condition" in kw)
        for entry in kw.get("parameters", []):
            entry = _resolve(entry, args)
            if isinstance(entry, dict):
                node.params.update({k: _typed(v) for k, v in entry.items()})
            elif isinstance(entry, list):  # launch_ros: text and substitutions concatenated into one path
                if not entry or not all(isinstance(part, str) for part in entry):
                    raise LaunchParseError(f"{lf.path.name}:{a.lineno}: a parameter-file entry {entry!r} "
                                           "must be a non-empty list of text and substitutions")
                node.param_files.append(Path("".join(entry)))
            else:
                node.param_files.append(Path(entry))
        node.remappings = [tuple(_resolve(r, args)) for r in kw.get("remappings", [])]
        node.arguments = [str(x) for x in _resolve(kw.get("arguments", []), args)]
        nodes.append(node)
    return nodes


def flatten_params_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """``ros__parameters`` of ``node_name`` (or ``/**``) in a ROS 2 parameter YAML, as dotted names.

    Raises:
        LaunchParseError: when the file has no section for the node or a section lacks ros__parameters.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(name + ".", v)
            else:
                out[name] = v

    found = False
    for key in ("/**", node_name, "/" + node_name):
        if key in data:
            section = data[key]
            if not isinstance(section, dict) or "ros__parameters" not in section:
                raise LaunchParseError(f"{path}: section {key!r} has no ros__parameters")
            walk("", section["ros__parameters"])
            found = True
    if not found:
        raise LaunchParseError(f"{path}: no parameters for node {node_name!r} (keys {sorted(data)})")
    return out
