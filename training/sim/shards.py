"""Deterministic, atomically written ``.npz`` shards and YAML config loading for the simulator.

``numpy.savez`` stamps every zip member with the current time, so two runs with the same seed would
differ in bytes; :func:`write_npz` writes the same ``.npy`` members with a fixed timestamp and in
sorted key order, so the same arrays always give the same file. ``numpy.load`` reads it as usual.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from occ_audit_ros.atomic import write_bytes_atomic

__all__ = ["write_npz", "read_shard", "load_config", "scene_rng",
           "check_dataset_record", "token"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path, arrays: Mapping[str, Any], compress: bool = True) -> int:
    """Write arrays as a byte-for-byte reproducible ``.npz`` (atomically).

    Args:
        path: target file.
        arrays: name -> array (anything ``np.asarray`` accepts; strings become unicode arrays, dicts
            and lists of dicts should be passed through :func:`json.dumps` first).
        compress: deflate members (like ``np.savez_compressed``).

    Returns:
        Size of the written file in bytes.
    """
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    return len(data)


def read_shard(path) -> dict[str, dict[str, Any]]:
    """Read a shard written by the generators.

    Returns:
        scene key (e.g. ``"000012"``) -> {array name -> array}; ``meta`` members are decoded from
        JSON into dicts.

    Raises:
        FileNotFoundError: missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} not found")
    scenes: dict[str, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            scene, _, name = key.partition("/")
            value = z[key]
            if name == "meta":
                value = json.loads(str(value))
            scenes.setdefault(scene, {})[name] = value
    return scenes


def load_config(path, defaults: Mapping[str, Any] | None = None) -> dict:
    """Load a YAML config and merge it over ``defaults`` (nested dicts merged key by key).

    Raises:
        FileNotFoundError: missing file. ValueError: the YAML top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: top level must be a mapping")
    return merge(dict(defaults or {}), data)


def merge(base: dict, over: Mapping[str, Any]) -> dict:
    """Recursive dict merge: values of ``over`` replace those of ``base``; returns ``base``."""
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            base[k] = merge(dict(base[k]), v)
        else:
            base[k] = v
    return base


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Random generator of one scene: depends only on (dataset seed, scene index, stream).

    Scenes are therefore identical however the dataset is split into shards or processes.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def check_dataset_record(out, record: dict) -> None:
    """Write ``out/dataset.json`` (the generation settings) or check an existing one matches.

    Raises:
        ValueError: the folder holds a dataset generated with other settings.
    """
    path = Path(out) / "dataset.json"
    text = json.dumps(record, sort_keys=True, indent=1)
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(text):
            raise ValueError(
                f"{path} was written with another config/seed/scene count; use a new --out folder")
        return
    write_bytes_atomic(path, text.encode())


def token(*parts) -> str:
    """Deterministic 32-hex-digit nuScenes-style token of its parts (md5 of their text)."""
    import hashlib

    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()
