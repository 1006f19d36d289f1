"""Command-line overrides of nested YAML configs (``key.sub=value``), shared by the training CLIs."""

from __future__ import annotations

from typing import Any, Iterable

import yaml


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``cfg[key][sub] = value`` in place for each ``"key.sub=value"`` (value parsed as YAML).

    Missing intermediate mappings are created. Returns ``cfg``.

    Raises:
        ValueError: for an item without ``=``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, val = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return cfg
