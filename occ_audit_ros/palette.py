"""Label colours and the random-weights banner text (numpy only: no matplotlib, no ROS).

Shared by the PNG figures (:mod:`occ_audit_ros.viz`) and the RViz markers
(:mod:`occ_audit_ros.nodes.conversions`), so a label has the same colour in both. The table is
fixed here rather than read from matplotlib at run time, so the nodes import without a plotting
library.
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["LABEL_COLORS_RGB8", "RANDOM_WEIGHTS_BANNER", "label_palette"]

#: Text of the warning that every output made from random (not trained) weights carries.
RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS \u2014 not a real perception output"

#: The first 60 label colours as 0xRRGGBB: matplotlib's ``tab20`` with its saturated half first
#: (the light twin of a colour comes only after all 10 saturated ones), then ``tab20b`` and
#: ``tab20c`` (Vega / d3 category colours, the values matplotlib ships).
LABEL_COLORS_RGB8: tuple[int, ...] = (
    # tab20, saturated half
    0x1F77B4, 0xFF7F0E, 0x2CA02C, 0xD62728, 0x9467BD, 0x8C564B, 0xE377C2, 0x7F7F7F, 0xBCBD22, 0x17BECF,
    # tab20, light half
    0xAEC7E8, 0xFFBB78, 0x98DF8A, 0xFF9896, 0xC5B0D5, 0xC49C94, 0xF7B6D2, 0xC7C7C7, 0xDBDB8D, 0x9EDAE5,
    # tab20b
    0x393B79, 0x5254A3, 0x6B6ECF, 0x9C9EDE, 0x637939, 0x8CA252, 0xB5CF6B, 0xCEDB9C, 0x8C6D31, 0xBD9E39,
    0xE7BA52, 0xE7CB94, 0x843C39, 0xAD494A, 0xD6616B, 0xE7969C, 0x7B4173, 0xA55194, 0xCE6DBD, 0xDE9ED6,
    # tab20c
    0x3182BD, 0x6BAED6, 0x9ECAE1, 0xC6DBEF, 0xE6550D, 0xFD8D3C, 0xFDAE6B, 0xFDD0A2, 0x31A354, 0x74C476,
    0xA1D99B, 0xC7E9C0, 0x756BB1, 0x9E9AC8, 0xBCBDDC, 0xDADAEB, 0x636363, 0x969696, 0xBDBDBD, 0xD9D9D9,
)

_GOLDEN = 0.6180339887498949


def _table() -> np.ndarray:
    """(60, 3) float64 RGB in [0, 1] of :data:`LABEL_COLORS_RGB8`."""
    rgb8 = np.array([[(c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF] for c in LABEL_COLORS_RGB8], dtype=np.float64)
    return rgb8 / 255.0


def label_palette(n: int) -> np.ndarray:
    """Deterministic, visually distinct colours for ``n`` labels.

    The first 60 colours are :data:`LABEL_COLORS_RGB8`; beyond 60 labels, hues follow the
    golden-ratio sequence (saturation 0.65, value 0.85). The palette is prefix-stable:
    ``label_palette(m) == label_palette(n)[:m]`` for ``m <= n``, so a label keeps its colour when
    the vocabulary grows at the end.

    Args:
        n: number of labels, >= 0.

    Returns:
        (n, 3) float64 RGB in [0, 1].

    Raises:
        ValueError: when ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"number of labels must be >= 0, got {n}")
    colours = _table()
    if n > len(colours):
        extra = [colorsys.hsv_to_rgb((0.1 + i * _GOLDEN) % 1.0, 0.65, 0.85) for i in range(n - len(colours))]
        colours = np.concatenate([colours, np.asarray(extra, dtype=np.float64)], axis=0)
    return np.array(colours[:n], dtype=np.float64)
