"""SIMULATED relevancy maps: a stand-in for CLIP relevancy where no CLIP weights exist.

This is **not** CLIP and says nothing about what CLIP would output. It imitates the qualitative
properties of Chefer-style CLIP relevancy that Semantic Abstraction's 3D network has to cope with
(Ha & Song, CoRL 2022, §3.1, App. 6.5: relevancy is partial, blobby, of varying magnitude and
noisy): for each queried label, a few Gaussian blobs on the visible pixels of the objects the label
names, covering only part of each object, with a random peak per object, sometimes missing an
object entirely; weaker false-positive blobs on other objects; smooth background noise; then the
same post-processing as the real extractor (subtract the per-pixel mean over the label set, scale).
With real weights, :class:`occ_audit_ros.relevancy.RelevancyExtractor` replaces it: both return
``(K, ceil(H / s), ceil(W / s))`` float32 per label set.

Parameters (``relevancy_sim`` section of ``training/config/sim_indoor.yaml``, defaults in
:data:`DEFAULTS`): see the comments there and in ``docs/simulator.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["DEFAULTS", "simulate_relevancy"]

#: Default parameters of the simulation (all unitless unless named *_px = pixels of the output map).
DEFAULTS = {
    "output_stride": 2,            # maps at ceil(H/s) x ceil(W/s)
    "blobs_per_object": [1, 3],    # Gaussian blobs per detected object (inclusive range)
    "blob_sigma": [0.15, 0.35],    # blob std as a fraction of sqrt(visible object area)
    "magnitude": [0.4, 1.0],       # peak of a true object's response (before mean subtraction)
    "miss_prob": 0.1,              # probability that a visible named object gets no response
    "mask_leak": 0.3,              # weight of the blob outside the object's mask (0 = clipped)
    "false_positive_prob": 0.15,   # per (label, other visible object)
    "false_positive_magnitude": [0.1, 0.4],
    "background_noise": 0.05,      # std of the smooth background noise after normalisation
    "background_sigma_px": 6.0,    # smoothing of the background noise
    "subtract_mean": True,         # as the real extractor (SemAbs subtract_mean_relevancy)
    "scale": 1.0,                  # multiplier applied last
    "min_pixels": 4,               # objects with fewer visible (output-map) pixels are ignored
}


def _blobs(mask: np.ndarray, n: int, sigma_frac, rng: np.random.Generator) -> np.ndarray:
    """Sum of ``n`` Gaussian blobs centred on random pixels of ``mask``, peak normalised to 1."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    sigma_base = math.sqrt(len(rows))
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    out = np.zeros((h, w), dtype=np.float32)
    for _ in range(n):
        k = rng.integers(len(rows))
        sigma = max(1.0, rng.uniform(*sigma_frac) * sigma_base)
        out += np.exp(-((yy - rows[k]) ** 2 + (xx - cols[k]) ** 2) / (2 * sigma * sigma))
    return out / max(float(out.max()), 1e-6)


def simulate_relevancy(
    instance: np.ndarray,
    categories: dict[int, str],
    labels: Sequence[str],
    label_categories: Callable[[str], set[str]],
    rng: np.random.Generator,
    params: dict | None = None,
) -> np.ndarray:
    """Simulated relevancy maps of one view for a label set (not CLIP: see the module docstring).

    Args:
        instance: (H, W) int instance ids of the view (-1 = nothing), from the renderer.
        categories: instance id -> canonical class name.
        labels: the queried label set (K texts, class names or synonyms).
        label_categories: text -> set of canonical classes it names (e.g. a vocabulary's
            ``categories_of``).
        rng: random generator (the maps are deterministic given its state).
        params: overrides of :data:`DEFAULTS`.

    Returns:
        (K, ceil(H / s), ceil(W / s)) float32, unitless, in label order.

    Raises:
        ValueError: empty label set or instance image not 2-D; unknown parameter names.
    """
    p = dict(DEFAULTS)
    unknown = set(params or {}) - set(DEFAULTS) - {"enabled", "distractor_labels"}
    if unknown:
        raise ValueError(f"unknown relevancy_sim parameters {sorted(unknown)}")
    p.update(params or {})
    inst = np.asarray(instance)
    if inst.ndim != 2:
        raise ValueError(f"instance must be (H, W), got {inst.shape}")
    if not labels:
        raise ValueError("empty label set")
    s = int(p["output_stride"])
    small = inst[::s, ::s]  # pixel (r, c) of the map = pixel (r*s, c*s) of the image
    h, w = small.shape
    ids = [i for i in np.unique(small) if i >= 0]
    masks = {i: small == i for i in ids}
    ids = [i for i in ids if masks[i].sum() >= p["min_pixels"]]
    maps = np.zeros((len(labels), h, w), dtype=np.float32)
    for k, text in enumerate(labels):
        named = label_categories(text)
        acc = np.zeros((h, w), dtype=np.float32)
        for i in ids:
            true = categories.get(int(i)) in named
            if true:
                if rng.random() < p["miss_prob"]:
                    continue
                mag = rng.uniform(*p["magnitude"])
            else:
                if rng.random() >= p["false_positive_prob"]:
                    continue
                mag = rng.uniform(*p["false_positive_magnitude"])
            n = int(rng.integers(p["blobs_per_object"][0], p["blobs_per_object"][1] + 1))
            blob = _blobs(masks[i], n, p["blob_sigma"], rng)
            weight = p["mask_leak"] + (1.0 - p["mask_leak"]) * masks[i]
            acc = np.maximum(acc, mag * blob * weight)
        noise = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32),
                                p["background_sigma_px"])
        noise *= p["background_noise"] / max(float(noise.std()), 1e-6)
        maps[k] = acc + noise
    if p["subtract_mean"] and len(labels) > 1:
        maps -= maps.mean(axis=0, keepdims=True)
    return (maps * float(p["scale"])).astype(np.float32)
