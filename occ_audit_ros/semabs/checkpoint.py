"""safetensors checkpoints of the SemAbs networks (weights + config + optional training state).

Layout of one ``.safetensors`` file:
    tensors ``model.<name>``: the network's state dict;
    tensors ``optim.<param index>.<state name>``: AdamW state (only in training checkpoints);
    metadata (str -> str): ``task`` ("ovssc" | "vool"), ``config`` (JSON of :class:`SemAbsConfig`),
    ``train_state`` (JSON: step, optimizer param groups, scheduler state, ...), ``card`` (JSON, free form).
Files are written to a temporary file in the target folder and moved with ``os.replace`` (atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from occ_audit_ros.atomic import atomic_path
from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC, SemAbsVOOL

__all__ = ["save_checkpoint", "load_checkpoint", "build_model"]


def build_model(task: str, config: SemAbsConfig) -> torch.nn.Module:
    """Network for a task ("ovssc" or "vool").

    Raises:
        ValueError: for another task.
    """
    if task == "ovssc":
        return SemAbsOVSSC(config)
    if task == "vool":
        return SemAbsVOOL(config)
    raise ValueError(f"unknown task {task!r}; expected 'ovssc' or 'vool'")


def save_checkpoint(path, model: torch.nn.Module, task: str, config: SemAbsConfig,
                    optimizer: torch.optim.Optimizer | None = None, train_state: dict | None = None,
                    card: dict | None = None) -> None:
    """Write a checkpoint atomically (see module docstring).

    Args:
        path: target ``.safetensors`` file; model: the (unwrapped) network; task, config: as built;
        optimizer: include its tensors and param groups (training checkpoints);
        train_state: JSON-able dict (step, scheduler state, ...); card: JSON-able model card fields.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = dict(train_state or {})
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, pstate in sd["state"].items():
            for name, val in pstate.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{pid}.{name}"] = val.detach().cpu().reshape(val.shape).contiguous()
        state["param_groups"] = sd["param_groups"]
    meta = {"task": task, "config": json.dumps(config.to_dict()), "train_state": json.dumps(state),
            "card": json.dumps(card or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path, optimizer: torch.optim.Optimizer | None = None,
                    model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, str, SemAbsConfig, dict, dict]:
    """Read a checkpoint.

    Args:
        path: ``.safetensors`` file.
        optimizer: when given, its state is restored (it must be built over ``model``'s parameters).
        model: load into this network instead of building a new one.

    Returns:
        ``(model, task, config, train_state, card)``; the model is on the CPU in eval mode when built here.

    Raises:
        FileNotFoundError: missing file; ValueError: not a SemAbs checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SemAbs checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "task" not in meta or "config" not in meta:
            raise ValueError(f"{path} is not a SemAbs checkpoint (metadata keys {sorted(meta)})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    task = meta["task"]
    config = SemAbsConfig.from_dict(json.loads(meta["config"]))
    state = json.loads(meta.get("train_state", "{}"))
    card = json.loads(meta.get("card", "{}"))
    built = model is None
    if built:
        model = build_model(task, config)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "param_groups" in state:
        ostate: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                ostate.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": ostate, "param_groups": state["param_groups"]})
    if built:
        model.eval()
    return model, task, config, state, card
