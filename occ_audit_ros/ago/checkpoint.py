"""Atomic safetensors checkpoints of the AGO trainer (model + optimizer + step), and loading.

Layout of a run directory::

    <out>/ckpt-000100/model.safetensors        model weights; metadata "ago" = JSON (config, step,
                                               vocabulary, text encoder, grid, embed_dim)
    <out>/ckpt-000100/train_state.safetensors  optimizer tensors; metadata = JSON (param groups,
                                               non-tensor state, step, ``train_state``: the
                                               trainer's own resumable state, e.g. RNG states)
    <out>/latest                               name of the newest complete checkpoint directory

A checkpoint directory is written under a temporary name and renamed when complete; ``latest`` is
replaced atomically after it (temp + ``os.replace``), so a crash never leaves a half checkpoint
behind ``latest``. A writer killed mid-way leaves ``.ckpt-tmp-*`` / ``.latest-*`` behind;
:func:`remove_stale_temporaries` removes them on the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "read_metadata", "read_train_state",
           "remove_stale_temporaries"]


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{pid}.{k}"] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out_dir, step: int, model: torch.nn.Module, optimizer=None, meta: dict | None = None,
                    keep: int = 2, train_state: dict | None = None) -> Path:
    """Write ``<out_dir>/ckpt-<step>`` atomically and point ``latest`` at it.

    Args:
        out_dir: run directory.
        step: optimisation steps done.
        model: the (unwrapped) model; its ``state_dict`` is saved.
        optimizer: optional optimizer whose state is saved for resuming.
        meta: JSON-serialisable description (config, vocabulary, ...) stored in the model file.
        keep: number of newest checkpoints kept.
        train_state: JSON-serialisable trainer state (RNG states, ...) stored beside the optimizer
            state (only with ``optimizer``); read back with :func:`read_train_state`.

    Returns:
        the checkpoint directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"ckpt-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".ckpt-tmp-"))
    try:
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"ago": json.dumps({**(meta or {}), "step": step})})
        if optimizer is not None:
            tensors, ometa = _flatten_optimizer(optimizer.state_dict())
            ometa = {**ometa, "step": step, "train_state": train_state or {}}
            save_file(tensors, str(tmp / "train_state.safetensors"), metadata={"state": json.dumps(ometa)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    fd, ptr = tempfile.mkstemp(dir=out, prefix=".latest-")
    with os.fdopen(fd, "w") as f:
        f.write(final.name + "\n")
    os.replace(ptr, out / "latest")
    old = sorted(p for p in out.glob("ckpt-*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(out_dir) -> Path | None:
    """The checkpoint directory ``latest`` names, or None when there is none."""
    ptr = Path(out_dir) / "latest"
    if not ptr.is_file():
        return None
    path = Path(out_dir) / ptr.read_text().strip()
    return path if (path / "model.safetensors").is_file() else None


def read_train_state(ckpt_dir) -> dict:
    """The ``train_state`` dict :func:`save_checkpoint` stored ({} when absent: older checkpoints,
    no optimizer)."""
    path = Path(ckpt_dir) / "train_state.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("state", "{}")).get("train_state", {}) or {}


def remove_stale_temporaries(out_dir) -> int:
    """Remove the ``.ckpt-tmp-*`` directories and ``.latest-*`` files a killed :func:`save_checkpoint`
    left in ``out_dir`` (call at the start of the run that owns it). Returns how many were removed."""
    n = 0
    for p in list(Path(out_dir).glob(".ckpt-tmp-*")) + list(Path(out_dir).glob(".latest-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def read_metadata(ckpt_dir) -> dict:
    """The ``ago`` JSON metadata of a checkpoint's model file.

    Raises:
        FileNotFoundError: no ``model.safetensors``; ValueError: not an AGO checkpoint.
    """
    path = Path(ckpt_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {ckpt_dir}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "ago" not in meta:
        raise ValueError(f"{path} is not an AGO checkpoint (no 'ago' metadata)")
    return json.loads(meta["ago"])


def load_checkpoint(ckpt_dir, model: torch.nn.Module, optimizer=None) -> dict:
    """Load weights (strict) and, when given, the optimizer state. Returns the metadata."""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    meta = read_metadata(ckpt_dir)
    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
    if optimizer is not None and (ckpt_dir / "train_state.safetensors").is_file():
        with safe_open(str(ckpt_dir / "train_state.safetensors"), "pt") as f:
            ometa = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        optimizer.load_state_dict(_unflatten_optimizer(tensors, ometa))
    return meta
