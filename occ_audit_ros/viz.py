"""PNG figures of semantic occupancy and CLIP relevancy maps (ROS-free, headless).

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with an Agg canvas instead of
``pyplot``: no global backend switch, no figure registry to leak, safe to call from any thread of a
node. Files are written atomically (temporary file in the target directory, then ``os.replace``)
so a viewer or a file watcher never sees a half-written PNG.

Box interface (duck-typed, used by :func:`save_bev_png`): any object with

* ``center``: (3,) float, box centre in the voxels' frame (``base_link``) [m];
* ``size``: (3,) float, ``(length, width, height)`` [m], length along the box's heading;
* ``yaw``: float, heading about +z [rad], 0 = along +x, counter-clockwise positive (REP-103);
* ``category``: str, class name drawn next to the box.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Polygon

from occ_audit_ros.atomic import atomic_path
from occ_audit_ros.palette import RANDOM_WEIGHTS_BANNER, label_palette  # noqa: F401  (re-exported)
from occ_audit_ros.voxel_grid import SemanticVoxels

#: Colour of the ego marker in the bird's-eye view; pure magenta is in none of the tab20* maps,
#: so the ego stays distinguishable from every label colour.
EGO_COLOR = (1.0, 0.0, 1.0)
#: Background of empty columns in the bird's-eye view.
EMPTY_COLOR = (1.0, 1.0, 1.0)


def _save_figure_atomically(fig: Figure, path: str | os.PathLike, dpi: float) -> Path:
    """Render ``fig`` to ``path`` as PNG (mode 0644) via a temporary file + ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


def random_weights_banner(fig: Figure, text: str = RANDOM_WEIGHTS_BANNER, fontsize: float = 16) -> None:
    """Big red warning across the top of ``fig`` (every picture made from random weights carries one)."""
    fig.text(
        0.5, 0.995, text, ha="center", va="top", fontsize=fontsize, fontweight="bold",
        color="white", bbox=dict(facecolor="red", edgecolor="red", boxstyle="square,pad=0.3"),
    )


def bev_label_image(voxels: SemanticVoxels) -> np.ndarray:
    """Label of the highest occupied voxel of every (x, y) column.

    Args:
        voxels: sparse occupancy; ``indices`` must be sorted ascending (as ``SemanticVoxels``
            requires), which puts each column's voxels next to each other, lowest z first.

    Returns:
        (nx, ny) int64 label ids, -1 where the column is empty; ``[ix, iy]`` is the column at
        ``x = lower_x + (ix + 0.5) * voxel_size``, ``y = lower_y + (iy + 0.5) * voxel_size``.
    """
    nx, ny, nz = voxels.spec.dims
    image = np.full(nx * ny, -1, dtype=np.int64)
    indices = np.asarray(voxels.indices, dtype=np.int64)
    if indices.size:
        columns = indices // nz
        # Sorted flat indices: the last voxel of each run of equal columns is its highest one.
        last = np.r_[columns[1:] != columns[:-1], True]
        image[columns[last]] = np.asarray(voxels.label_ids, dtype=np.int64)[last]
    return image.reshape(nx, ny)


def _bev_rgb(voxels: SemanticVoxels) -> tuple[np.ndarray, np.ndarray]:
    """(nx, ny, 3) float64 colours of :func:`bev_label_image` (empty columns :data:`EMPTY_COLOR`) and the
    (L, 3) palette used."""
    labels_img = bev_label_image(voxels)
    palette = label_palette(len(voxels.labels))
    rgb = np.empty(labels_img.shape + (3,), dtype=np.float64)
    rgb[:] = EMPTY_COLOR
    occupied = labels_img >= 0
    rgb[occupied] = palette[labels_img[occupied]]
    return rgb, palette


def _box_corners_xy(box: Any) -> np.ndarray:
    """(4, 2) x, y corners of a box's footprint in the box's frame [m]."""
    cx, cy = float(box.center[0]), float(box.center[1])
    length, width = float(box.size[0]), float(box.size[1])
    c, s = math.cos(float(box.yaw)), math.sin(float(box.yaw))
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64) * [length / 2, width / 2]
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + [cx, cy]


def save_bev_png(
    voxels: SemanticVoxels,
    path: str | os.PathLike,
    boxes: Iterable[Any] | None = None,
    title: str | None = None,
    *,
    show_box_labels: bool = True,
    figsize: tuple[float, float] = (10.0, 8.0),
    dpi: float = 100.0,
) -> Path:
    """Bird's-eye view of semantic occupancy, written atomically as PNG.

    Layout: REP-103 seen from above with the vehicle pointing up the page: +x (forward) up,
    +y (left) to the left; axes in metres of ``voxels.frame_id``. Each (x, y) column is coloured by
    the label of its highest occupied voxel (colours from :func:`label_palette`, empty columns
    white); the legend on the right lists every label with its number of occupied voxels. The ego
    (origin of the frame) is a magenta triangle pointing forward (:data:`EGO_COLOR`). When
    ``voxels.random_weights`` is set, a red banner says the output is not real.

    Args:
        voxels: the occupancy to draw.
        path: output PNG path; parent directories are created.
        boxes: optional ground-truth boxes in ``voxels.frame_id`` (see the module docstring for the
            duck-typed interface), drawn as oriented black rectangles.
        title: optional axes title (the model name is appended when ``voxels.model`` is set).
        show_box_labels: write each box's ``category`` next to it.
        figsize: figure size [inch]; the PNG is ``round(figsize * dpi)`` pixels.
        dpi: pixels per inch.

    Returns:
        The written path.

    Raises:
        OSError: when the directory is not writable.
    """
    spec = voxels.spec
    rgb, palette = _bev_rgb(voxels)

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_axes((0.08, 0.07, 0.62, 0.83))
    (x0, y0, _), (x1, y1, _) = spec.lower, spec.upper
    # rgb[ix, iy]: rows along x (origin="lower" puts x0 at the bottom), columns along y; the
    # inverted horizontal axis then puts +y (left of the vehicle) on the left of the page.
    ax.imshow(rgb, origin="lower", extent=(y0, y1, x0, x1), interpolation="nearest", aspect="equal")
    ax.set_xlim(y1, y0)
    ax.set_ylim(x0, x1)
    ax.set_xlabel(f"y [m] (left +) in {voxels.frame_id}")
    ax.set_ylabel(f"x [m] (forward +) in {voxels.frame_id}")
    ax.plot([0.0], [0.0], marker="^", markersize=12, color=EGO_COLOR, markeredgecolor=EGO_COLOR,
            linestyle="none", zorder=5)
    ax.annotate("ego", (0.0, 0.0), xytext=(8, -12), textcoords="offset points", fontsize=8)

    for box in boxes or ():
        corners = _box_corners_xy(box)
        ax.add_patch(Polygon(corners[:, ::-1], closed=True, fill=False, edgecolor="black",
                             linewidth=1.0, zorder=4))
        if show_box_labels:
            ax.text(float(box.center[1]), float(box.center[0]), str(box.category), fontsize=6,
                    ha="center", va="center", zorder=6, clip_on=True)

    counts = voxels.counts_per_label()
    handles = [Patch(facecolor=palette[i], edgecolor="none", label=f"{label} ({counts[label]})")
               for i, label in enumerate(voxels.labels)]
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.72, 0.9), fontsize=8,
                   title="label (voxels)", title_fontsize=8, frameon=False)
    full_title = title or "semantic occupancy, bird's-eye view"
    if voxels.model:
        full_title += f"\nmodel: {voxels.model}"
    ax.set_title(full_title, fontsize=9)
    if voxels.random_weights:
        random_weights_banner(fig)
    return _save_figure_atomically(fig, path, dpi)


# Layout of the relevancy figure [inch]: panel width, side margin, panel title, gap + colour bar +
# its tick labels below each image, and the top band for the banner and figure title.
_PANEL_W, _PANEL_MARGIN, _PANEL_TITLE, _PANEL_BELOW, _TOP_BAND, _BOTTOM = 4.0, 0.15, 0.3, 0.6, 1.0, 0.1


def relevancy_figure_size(image_hw: tuple[int, int], num_labels: int, ncols: int = 3) -> tuple[float, float]:
    """Figure size [inch] used by :func:`save_relevancy_overlay_png`.

    ``min(ncols, K)`` panels of 4 inch per row, ``ceil(K / ncols)`` rows; each row is the image
    (3.7 inch wide, image aspect) plus 0.9 inch for the panel title and colour bar; plus 1 inch at
    the top for the banner and title and 0.1 inch at the bottom.
    """
    ncols = max(1, min(ncols, num_labels))
    nrows = max(1, math.ceil(num_labels / ncols))
    h, w = image_hw
    image_h = (_PANEL_W - 2 * _PANEL_MARGIN) * h / w
    return ncols * _PANEL_W, _TOP_BAND + nrows * (image_h + _PANEL_TITLE + _PANEL_BELOW) + _BOTTOM


def save_relevancy_overlay_png(
    image: np.ndarray,
    relevancy: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    random_weights: bool = False,
    *,
    title: str | None = None,
    ncols: int = 3,
    alpha: float = 0.5,
    dpi: float = 100.0,
) -> Path:
    """Grid of panels, one per label: the image with that label's relevancy as a heat overlay.

    The relevancy maps share one colour scale (min..max over all labels, ``turbo``) so panels are
    comparable; each panel has a colour bar on that scale. A map coarser than the image (patch
    grid) is stretched over the whole image with bilinear interpolation.

    Args:
        image: (H, W, 3) uint8 RGB.
        relevancy: (K, H', W') float relevancy per label (unitless), any H', W' >= 1.
        labels: K label names, panel titles.
        path: output PNG path; parent directories are created.
        random_weights: draw the red "RANDOM WEIGHTS" banner.
        title: optional figure title.
        ncols: panels per row (fewer when K is smaller).
        alpha: opacity of the heat map over the image.
        dpi: pixels per inch; the PNG is ``relevancy_figure_size(...) * dpi`` pixels (rounded).

    Returns:
        The written path.

    Raises:
        ValueError: on an image that is not (H, W, 3) uint8, a relevancy that is not (K, H', W')
            with K == len(labels) >= 1, or non-finite relevancy values.
    """
    image = np.asarray(image)
    relevancy = np.asarray(relevancy, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if relevancy.ndim != 3 or 0 in relevancy.shape:
        raise ValueError(f"relevancy must be (K, H', W') with K, H', W' >= 1, got {relevancy.shape}")
    if relevancy.shape[0] != len(labels):
        raise ValueError(f"{relevancy.shape[0]} relevancy maps for {len(labels)} labels")
    if not np.all(np.isfinite(relevancy)):
        raise ValueError("relevancy contains NaN or inf")
    h, w = image.shape[:2]
    k = len(labels)
    ncols = max(1, min(ncols, k))
    fig_w, fig_h = relevancy_figure_size((h, w), k, ncols)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    norm = Normalize(vmin=float(relevancy.min()), vmax=float(relevancy.max()))
    if norm.vmax <= norm.vmin:  # constant maps: give the colour bar a non-empty range
        norm.vmax = norm.vmin + 1e-6
    image_w = _PANEL_W - 2 * _PANEL_MARGIN
    image_h = image_w * h / w
    row_h = image_h + _PANEL_TITLE + _PANEL_BELOW
    for i, label in enumerate(labels):
        row, col = divmod(i, ncols)
        left = col * _PANEL_W + _PANEL_MARGIN
        bottom = fig_h - _TOP_BAND - row * row_h - _PANEL_TITLE - image_h
        # Explicit axes rectangles (inch -> figure fraction): a fixed, predictable layout.
        ax = fig.add_axes((left / fig_w, bottom / fig_h, image_w / fig_w, image_h / fig_h))
        ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest", aspect="auto")
        ax.imshow(relevancy[i], extent=(0, w, h, 0), cmap="turbo", norm=norm, alpha=alpha,
                  interpolation="bilinear", aspect="auto")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
        ax.set_title(str(label), fontsize=9)
        cax = fig.add_axes(((left + 0.1 * image_w) / fig_w, (bottom - 0.25) / fig_h,
                            0.8 * image_w / fig_w, 0.15 / fig_h))
        # Colour bar from an opaque mappable: the overlay's alpha would wash it out.
        fig.colorbar(ScalarMappable(norm=norm, cmap="turbo"), cax=cax, orientation="horizontal")
        cax.tick_params(labelsize=7)
    if title:
        fig.text(0.5, 1.0 - 0.6 / fig_h, title, ha="center", va="center", fontsize=10)
    if random_weights:
        random_weights_banner(fig)
    return _save_figure_atomically(fig, path, dpi)


def hidden_object_bev(answer: Any) -> np.ndarray:
    """(nx, ny) float32 maximum over z of a hidden-object answer's probabilities (0 where no voxel of the
    column is listed); ``[ix, iy]`` indexes as :func:`bev_label_image`."""
    nx, ny, nz = answer.spec.dims
    prob = np.zeros(nx * ny * nz, np.float32)
    prob[np.asarray(answer.indices, np.int64)] = np.asarray(answer.probabilities, np.float32)
    return prob.reshape(nx, ny, nz).max(axis=2)


def save_hidden_object_png(voxels: SemanticVoxels, answer: Any, path: str | os.PathLike, image: np.ndarray | None = None,
                           title: str | None = None, dpi: float = 100.0) -> Path:
    """Hidden-object (VOOL) answer beside the semantic occupancy of the same grid, written atomically.

    Panels: the camera image (when given); the bird's-eye view of ``voxels`` (label of the highest
    occupied voxel per column, as :func:`save_bev_png`); and the answer's probability, maximum over z
    per column (0 where no voxel is listed), same orientation (+x up, +y left), metres of
    ``voxels.frame_id``. A red banner when either comes from random weights.

    Args:
        voxels: the semantic grid (OVSSC output).
        answer: :class:`occ_audit_ros.backends.HiddenObjectAnswer` on the same grid geometry.
        path: output PNG path. image: optional (H, W, 3) uint8 camera image. title: figure title.

    Raises:
        ValueError: when the answer's grid differs from ``voxels.spec``.
    """
    spec = voxels.spec
    if answer.spec != spec:
        raise ValueError(f"answer grid {answer.spec} differs from the semantic grid {spec}")
    prob_bev = hidden_object_bev(answer)
    rgb, palette = _bev_rgb(voxels)
    panels = 3 if image is not None else 2
    fig = Figure(figsize=(5.0 * panels, 5.6), dpi=dpi)
    axes = [fig.add_axes((0.04 + i / panels, 0.1, 0.8 / panels, 0.72)) for i in range(panels)]
    if image is not None:
        axes[0].imshow(image)
        axes[0].set_title("camera image", fontsize=9)
        axes[0].axis("off")
    (x0, y0, _), (x1, y1, _) = spec.lower, spec.upper
    ax_sem, ax_p = axes[-2], axes[-1]
    ax_sem.imshow(rgb, origin="lower", extent=(y0, y1, x0, x1), interpolation="nearest")
    im = ax_p.imshow(prob_bev, origin="lower", extent=(y0, y1, x0, x1), interpolation="nearest", cmap="magma",
                     vmin=0.0, vmax=1.0)
    for ax in (ax_sem, ax_p):
        ax.set_xlim(y1, y0)
        ax.set_ylim(x0, x1)
        ax.set_xlabel(f"y [m] (left +) in {voxels.frame_id}")
        ax.set_ylabel("x [m] (forward +)")
    counts = voxels.counts_per_label()
    ax_sem.legend(handles=[Patch(facecolor=palette[i], label=f"{lab} ({counts[lab]})")
                           for i, lab in enumerate(voxels.labels)], fontsize=7, loc="upper right", framealpha=0.8)
    ax_sem.set_title("OVSSC occupancy (top label per column)", fontsize=9)
    ax_p.set_title(f"P({answer.target} {answer.relation} {answer.reference}), max over z", fontsize=9)
    fig.colorbar(im, ax=ax_p, fraction=0.046, pad=0.04)
    fig.text(0.5, 0.9, title or f"hidden-object query, model {answer.model}", ha="center", fontsize=10)
    if voxels.random_weights or answer.random_weights:
        random_weights_banner(fig)
    return _save_figure_atomically(fig, path, dpi)
