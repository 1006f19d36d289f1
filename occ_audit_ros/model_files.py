"""Checks of model files before anything is built from them (ROS-free).

One function per kind of model file; each checks, in order, that the file exists, that it is a
safetensors file (its 8-byte header length and JSON header, never a pickle: a ``torch.save`` file
renamed ``.safetensors`` is refused, not unpickled), that its metadata describe a model of that
kind, and that its tensors have exactly the keys, shapes and dtypes of the network built from that
metadata (built on the ``meta`` device: no memory, no weights), with finite values. Anything wrong
raises one :class:`ModelFileError` naming the file and the problem; the node and the CLIs turn it
into one log line and an exit code.

* :func:`check_semabs_checkpoint`: a SemAbs OVSSC / VOOL ``.safetensors`` (layout in
  ``occ_audit_ros.semabs.checkpoint``);
* :func:`check_ago_checkpoint`: an AGO run or checkpoint directory (layout in
  ``occ_audit_ros.ago.checkpoint``);
* :func:`check_clip_dir`: a Hugging Face CLIP directory (``config.json``, weights, tokenizer files).

``load_state_dict`` alone would cast integer weights to float and accept NaN/inf without a word,
so a broken file would give every voxel occupied, or none; these checks refuse it first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["ModelFileError", "check_safetensors", "check_tensors", "check_semabs_checkpoint",
           "check_ago_checkpoint", "check_clip_dir", "MAX_HEADER_BYTES"]

#: Largest safetensors JSON header accepted [bytes] (safetensors itself refuses more than 100 MB).
MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class ModelFileError(ValueError):
    """A model file or directory that cannot be used; ``str()`` is ``"<path>: <problem>"``.

    Attributes:
        path: the offending file or directory.
        problem: what is wrong with it (one sentence).
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _pickle_kind(head: bytes) -> str | None:
    """What a non-safetensors file looks like from its first bytes (None: not recognised)."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save format, pickled)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    return None


def check_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Check that ``path`` is a complete safetensors file, reading only its header (nothing is unpickled).

    Args:
        path: the file.

    Returns:
        the parsed JSON header: tensor name -> ``{"dtype", "shape", "data_offsets"}``, and
        ``"__metadata__"`` (str -> str, possibly absent).

    Raises:
        ModelFileError: missing, a directory, a pickle / ``torch.save`` file, a header that is not
            JSON or whose size exceeds the file, or tensor data beyond the end of the file (truncated).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "does not exist")
    if not path.is_file():
        raise ModelFileError(path, "is not a file (expected a .safetensors file)")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            kind = _pickle_kind(head)
            if kind is not None:
                raise ModelFileError(path, f"is {kind}, not safetensors; refusing to unpickle it "
                                           "(convert it to safetensors with safetensors.torch.save_file)")
            if len(head) < 8:
                raise ModelFileError(path, f"is not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ModelFileError(path, f"is not a safetensors file or is truncated (header of {n} bytes, "
                                           f"file of {size} bytes)")
            raw = f.read(n)
    except OSError as err:
        raise ModelFileError(path, f"cannot be read: {err.strerror or err}") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(path, f"is not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise ModelFileError(path, "is not a safetensors file (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as err:
            raise ModelFileError(path, f"is not a safetensors file (bad entry for tensor {name!r})") from err
    if 8 + n + end > size:
        raise ModelFileError(path, f"is truncated: its tensors need {8 + n + end} bytes, the file has {size}")
    return header


def check_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor], prefix: str = "",
                  any_float: bool = False) -> None:
    """Check the tensors ``prefix + name`` of a safetensors file against a state dict, then their values.

    Args:
        path: the file (checked with :func:`check_safetensors` first).
        expected: name -> tensor of the network to load into (``meta`` tensors will do: only shapes
            and dtypes are used).
        prefix: prefix of the network's keys in the file (``"model."`` for SemAbs checkpoints); keys
            of the file without it are ignored.

    Raises:
        ModelFileError: missing or unexpected keys, another shape or dtype (integer weights for
            float ones, half for float ...), or NaN / inf values (names the first offending tensor).
    """
    header = check_safetensors(path)
    have = {k[len(prefix):]: v for k, v in header.items() if k != "__metadata__" and k.startswith(prefix)}
    missing = sorted(set(expected) - set(have))
    extra = sorted(set(have) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {prefix}{extra[0]})")
        raise ModelFileError(path, f"does not fit the network its metadata describe: keys {', '.join(parts)}")
    for name, ref in expected.items():
        info = have[name]
        shape = tuple(int(s) for s in info.get("shape", ()))
        if shape != tuple(ref.shape):
            raise ModelFileError(path, f"tensor {prefix}{name} has shape {list(shape)}, the network needs "
                                       f"{list(ref.shape)}")
        dtype = _SAFETENSORS_DTYPES.get(str(info.get("dtype")))
        if dtype != ref.dtype and not (any_float and ref.dtype.is_floating_point and dtype is not None
                                       and dtype.is_floating_point):
            raise ModelFileError(path, f"tensor {prefix}{name} has dtype {info.get('dtype')}, the network needs "
                                       f"{str(ref.dtype).removeprefix('torch.')}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for name, ref in expected.items():
                if not (ref.dtype.is_floating_point and _SAFETENSORS_DTYPES.get(str(have[name].get("dtype")),
                                                                                torch.int8).is_floating_point):
                    continue
                t = f.get_tensor(prefix + name)
                if not bool(torch.isfinite(t).all()):
                    bad = int((~torch.isfinite(t)).sum())
                    raise ModelFileError(path, f"tensor {prefix}{name} has {bad} non-finite values (NaN or inf)")
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own error types differ between versions
        raise ModelFileError(path, f"cannot be read as safetensors: {err}") from err


def _metadata(path: Path, header: dict, keys: tuple[str, ...], kind: str) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ModelFileError(path, f"is not a {kind} checkpoint (metadata lacks {missing}; has {sorted(meta)})")
    return meta


def _json(path: Path, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(path, f"metadata {what!r} is not JSON: {err}") from err


def check_semabs_checkpoint(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """Check a SemAbs checkpoint (``occ_audit_ros.semabs.checkpoint`` layout) before loading it.

    Args:
        path: the ``.safetensors`` file.
        task: ``"ovssc"`` or ``"vool"`` when the caller needs that network; None accepts either.

    Returns:
        ``{"task", "config", "card"}`` (config and card as parsed JSON dicts).

    Raises:
        ModelFileError: see :func:`check_safetensors` and :func:`check_tensors`; metadata that is
            not a SemAbs checkpoint, another task, or a config the network cannot be built from.
    """
    from occ_audit_ros.semabs.checkpoint import build_model
    from occ_audit_ros.semabs.model import SemAbsConfig

    path = Path(path)
    header = check_safetensors(path)
    meta = _metadata(path, header, ("task", "config"), "SemAbs")
    if task is not None and meta["task"] != task:
        raise ModelFileError(path, f"holds a {meta['task']!r} network, expected {task!r}")
    cfg = _json(path, meta["config"], "config")
    card = _json(path, meta.get("card", "{}"), "card")
    try:
        with torch.device("meta"):
            net = build_model(meta["task"], SemAbsConfig.from_dict(cfg))
    except Exception as err:  # noqa: BLE001 - any config the model rejects is a problem of this file
        raise ModelFileError(path, f"its config cannot build a SemAbs network: {err.__class__.__name__}: {err}") from err
    check_tensors(path, net.state_dict(), prefix="model.")
    return {"task": meta["task"], "config": cfg, "card": card if isinstance(card, dict) else {}}


def _meta_clip_bundle(name: str):
    """A :class:`~occ_audit_ros.clip_model.ClipBundle` whose CLIP lives on the ``meta`` device (shapes only)."""
    from transformers import CLIPConfig, CLIPModel

    from occ_audit_ros.clip_model import RANDOM_MODELS, ClipBundle, random_clip_config

    if name in RANDOM_MODELS:
        config = random_clip_config(name)
    else:
        check_clip_dir(name)
        config = CLIPConfig.from_pretrained(str(Path(name).expanduser()))
    with torch.device("meta"):
        model = CLIPModel(config)
    v = config.vision_config
    return ClipBundle(model=model, tokenizer=None, name=name, random_weights=name in RANDOM_MODELS,
                      image_size=v.image_size, patch_size=v.patch_size, device=torch.device("meta"))


def check_ago_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check an AGO run directory (its ``latest``) or checkpoint directory before loading it.

    Args:
        path: run directory of ``training/train_ago.py`` or one ``ckpt-*`` directory in it.

    Returns:
        the ``ago`` metadata (config, grid, vocabulary, embed_dim, ...) plus ``"checkpoint_dir"``.

    Raises:
        ModelFileError: no such directory, no ``model.safetensors`` / ``latest``, a ``latest``
            naming a missing directory, metadata without config / grid / vocabulary / embed_dim,
            a CLIP image encoder whose ``clip_model`` directory is unusable (:func:`check_clip_dir`),
            and everything :func:`check_tensors` refuses.
    """
    from occ_audit_ros.ago.model import build_model

    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "does not exist (expected an AGO run or checkpoint directory)")
    if path.is_file():
        raise ModelFileError(path, "is a file; an AGO checkpoint is a directory (run directory or ckpt-*)")
    ck = path
    if not (path / "model.safetensors").exists():
        ptr = path / "latest"
        if not ptr.is_file():
            raise ModelFileError(path, "holds neither model.safetensors nor a 'latest' file (not an AGO checkpoint)")
        try:
            ck = path / ptr.read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ModelFileError(ptr, f"cannot be read: {err}") from err
        if not (ck / "model.safetensors").exists():
            raise ModelFileError(ptr, f"names {ck.name!r}, which holds no model.safetensors")
    model_file = ck / "model.safetensors"
    header = check_safetensors(model_file)
    meta = _json(model_file, _metadata(model_file, header, ("ago",), "AGO")["ago"], "ago")
    if not isinstance(meta, dict):
        raise ModelFileError(model_file, "metadata 'ago' is not a JSON object")
    missing = [k for k in ("config", "grid", "vocabulary", "embed_dim") if k not in meta]
    if missing:
        raise ModelFileError(model_file, f"metadata 'ago' lacks {missing}")
    try:
        cfg = meta["config"]
        g = meta["grid"]
        if not meta["vocabulary"]:
            raise ValueError("empty vocabulary")
        if not (float(g["voxel_size"]) > 0 and len(g["lower"]) == 3 and len(g["upper"]) == 3):
            raise ValueError(f"bad grid {g}")
        float(cfg["data"]["image_scale"])
    except (TypeError, KeyError, ValueError) as err:
        raise ModelFileError(model_file, f"metadata 'ago' is incomplete: {err.__class__.__name__}: {err}") from err
    clip = None
    if cfg.get("clip_model"):
        try:
            clip = _meta_clip_bundle(cfg["clip_model"])
        except ModelFileError as err:
            raise ModelFileError(model_file, f"its CLIP ({cfg['clip_model']}) is unusable: {err}") from err
    try:
        with torch.device("meta"):
            net = build_model(dict(cfg["model"], voxel_size=float(g["voxel_size"]),
                                   num_categories=len(meta["vocabulary"])), int(meta["embed_dim"]), clip)
    except Exception as err:  # noqa: BLE001 - any config the model rejects is a problem of this file
        raise ModelFileError(model_file, f"its config cannot build an AGO model: {err.__class__.__name__}: {err}") from err
    check_tensors(model_file, net.state_dict())
    return {**meta, "checkpoint_dir": str(ck)}


def check_clip_dir(name: str | os.PathLike) -> None:
    """Check a local Hugging Face CLIP directory: ``config.json`` (a CLIP config), weights that fit
    it (safetensors, single or sharded, checked by :func:`check_tensors` against the CLIP built from
    the config), and tokenizer files.

    Args:
        name: the directory.

    Raises:
        ModelFileError: missing directory, missing / non-JSON / non-CLIP ``config.json``, no
            weights, weights inconsistent with the config (keys, shapes, dtypes, non-finite values),
            no tokenizer files.
    """
    from transformers import CLIPConfig, CLIPModel

    d = Path(name).expanduser()
    if not d.is_dir():
        raise ModelFileError(d, "is not a directory (expected a Hugging Face CLIP directory)")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ModelFileError(cfg_path, "does not exist (a CLIP directory needs config.json)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(cfg_path, f"is not readable JSON: {err}") from err
    if not isinstance(raw, dict) or raw.get("model_type") != "clip":
        kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ModelFileError(cfg_path, f"is not a CLIP config (model_type {kind!r}, expected 'clip')")
    try:
        config = CLIPConfig.from_pretrained(str(d))
        with torch.device("meta"):
            expected = CLIPModel(config).state_dict()
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a bad config
        raise ModelFileError(cfg_path, f"does not describe a buildable CLIP: {err.__class__.__name__}: {err}") from err
    if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ModelFileError(d, "has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.is_file():
        try:
            files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ModelFileError(index, f"is not a safetensors index: {err}") from err
    else:
        pickles = [f for f in ("pytorch_model.bin", "model.pt") if (d / f).exists()]
        raise ModelFileError(d, "has no model.safetensors" + (f" (only {pickles[0]}, a pickle: convert it to "
                                                              "safetensors)" if pickles else ""))
    # transformers ties / drops a few buffers (position_ids); compare what the file holds
    remaining = dict(expected)
    for f in files:
        header = check_safetensors(f)
        names = [k for k in header if k != "__metadata__"]
        unknown = [k for k in names if k not in remaining]
        if unknown:
            raise ModelFileError(f, f"tensor {unknown[0]} is not part of the CLIP that {cfg_path.name} describes "
                                    f"({len(unknown)} such)")
        check_tensors(f, {k: remaining.pop(k) for k in names}, any_float=True)
    missing = [k for k in remaining if not k.endswith("position_ids")]
    if missing:
        raise ModelFileError(d, f"weights lack {len(missing)} tensors of the CLIP that config.json describes "
                                f"(e.g. {missing[0]})")
