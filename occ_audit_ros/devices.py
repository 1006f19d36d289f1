"""Torch device names as the package's parameters and training configs give them (ROS-free)."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto", rank: int | None = None,
                   tf32: bool = False) -> torch.device:
    """Turn a ``device`` parameter into a ``torch.device``.

    ``"auto"`` (or None): CUDA when available, else the CPU; anything else as ``torch.device(name)``.
    A CUDA device without an index becomes this process's GPU: ``rank`` (default: the ``LOCAL_RANK``
    that ``torchrun`` sets, else 0) modulo the number of GPUs, made the current device.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or a ``torch.device``.
        rank: local process rank for the GPU choice (None: ``LOCAL_RANK``).
        tf32: on CUDA, allow TF32 matmuls and convolutions and let cuDNN pick algorithms (training).

    Raises:
        RuntimeError: for a malformed device name (from ``torch.device``).
        ValueError: CUDA requested but ``torch.cuda.is_available()`` is False.
    """
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch.cuda.is_available() is False")
    if dev.index is None:
        local = int(os.environ.get("LOCAL_RANK", 0)) if rank is None else int(rank)
        dev = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev
