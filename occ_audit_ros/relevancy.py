"""CLIP relevancy maps (Chefer et al. gradient-weighted attention on the last ViT block), ROS-free.

Semantic Abstraction (Ha & Song, CoRL 2022, Sec. 3.1 and App. 6.3; released code ``CLIP/clip/clip_gradcam.py``)
turns (image, label set) into one relevancy map per label:

* for each label l: logit_l = 100 * cos(f_img(crop), f_txt(prompt(l)));
* on the last ViT block: A = attention probabilities (heads x T x T), G = d logit_l / d A,
  cam = mean_heads(clamp(G * A, min=0)); relevancy rollout R = I + cam (only the last block is used);
* relevancy(crop) = R[CLS, 1:] as a g x g patch map (7 x 7 for ViT-B/32), averaged with the map of the
  mirrored crop mirrored back (``flip``), bilinearly upsampled to the crop;
* multi-scale sliding window over the original image and ``jitter_copies`` colour-jittered copies
  (:func:`color_jitter`); per pixel and per scale, the sum over covering crops (all copies pooled)
  divided by their number (+ ``count_epsilon``), then the mean over scales;
* the per-pixel mean over the queried label set is subtracted and the result multiplied by 50.

Named presets (``config/relevancy_presets.yaml``): ``semabs`` is the reference configuration
(``saliency_configs["ours"]``), ``semabs_reference`` adds the reference's tiling quirk
(``compat_reference_tiling``), ``fast`` is the node's cheap setting. See ``docs/relevancy.md``.

Batching: the first blocks run once per crop without gradients. Only the CLS query row of the last
block's attention reaches the pooled image embedding, so the gradient of every label's logit with
respect to A is zero outside that row and cam[CLS, :] needs only A[:, :, CLS, :]. That row is expanded
over labels and the remainder of the block, the projection and the K logits are computed for all
labels at once; one backward pass gives G for every (crop, label). ``test/test_relevancy.py`` shows it
equals plain autograd through the whole model, one crop and one label at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD, ClipBundle

LOG = logging.getLogger(__name__)

ACCUMULATE_DTYPES = ("float32", "float16")
AUTOCAST_DTYPES = ("none", "bfloat16", "float16")
CROP_RESIZES = ("torch", "pil")


def as_fraction(value: Any) -> Fraction:
    """A tile or stride fraction as an exact :class:`~fractions.Fraction`.

    Accepts a Fraction, an int, a float (snapped to the nearest fraction with denominator <= 10,000,
    so ``2/3`` written as 0.6666666666666666 becomes exactly 2/3) or a string ``"a/b"`` / ``"0.25"``.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a fraction: {value!r}")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite fraction: {value!r}")
        return Fraction(value).limit_denominator(10_000)
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"not a fraction: {value!r}") from err
    raise ValueError(f"not a fraction: {value!r}")


@dataclass(frozen=True)
class RelevancyConfig:
    """Settings of the multi-scale sliding-window relevancy extractor.

    Attributes:
        tile_fractions: tile side per scale as a fraction of d, the image's short side (with
            ``compat_reference_tiling``: the image height, as the reference); tile = floor(d * f) [px].
            Floats, Fractions or ``"a/b"`` strings. SemAbs: (1, 2/3, 1/2, 1/4).
        stride_fraction: window stride as a fraction of the tile; stride = floor(tile * f) [px]
            (SemAbs: 1/4).
        flip: also evaluate every crop mirrored horizontally (map mirrored back, the two averaged).
        prompt_template: text prompt with one ``{}`` for the label, or a sequence of such templates
            (the label embedding is then the mean of the L2-normalised template embeddings, not
            re-normalised, as the reference's ``zeroshot_classifier``).
        subtract_mean: subtract the per-pixel mean over the queried labels (SemAbs default).
        scale: multiplier applied last (SemAbs: 50).
        output_stride: maps are returned at ceil(H / s) x ceil(W / s) [px of the input image].
        batch_size: image windows per CLIP forward (doubled when ``flip``); 0 = from free memory.
        jitter_copies: number of colour-jittered copies of the image added to the original (SemAbs: 5).
        jitter_brightness / jitter_contrast / jitter_saturation / jitter_hue: ColorJitter strengths
            (SemAbs: 0.6, 0.6, 0.6, 0.1), see :func:`sample_color_jitter`.
        jitter_seed: seed of the jitter parameters; the same image always gets the same copies.
        compat_reference_tiling: reproduce the reference code's tile origins exactly (see
            :func:`reference_tile_windows`); default covers the whole image (:func:`tile_origins`).
        accumulate_dtype: ``"float32"`` or ``"float16"`` (the reference accumulates tile maps in half).
        count_epsilon: added to the per-pixel coverage count before dividing (reference: 1e-5).
        autocast: ``"none"``, ``"bfloat16"`` or ``"float16"``: autocast dtype of the CLIP passes.
        crop_resize: how a crop is resized to the CLIP input: ``"torch"`` [default; faster, batched]
            antialiased bicubic on the float crop, or ``"pil"``: the crop rounded to uint8 and resized
            with PIL's bicubic filter, as the reference code's CLIP preprocessing (for exact parity
            with it; the whole no-jitter gap to the reference is this resize).
        min_tile_px: scales whose tile would be smaller than this are skipped (with a warning).
        background_labels: with a single queried label, the mean is subtracted over it plus these
            labels (if empty, mean subtraction is skipped); see :meth:`RelevancyExtractor.__call__`.
    """

    tile_fractions: tuple = (1.0,)
    stride_fraction: Any = 0.25
    flip: bool = False
    prompt_template: Any = "a photograph of a {} on a street."
    subtract_mean: bool = True
    scale: float = 50.0
    output_stride: int = 1
    batch_size: int = 32
    jitter_copies: int = 0
    jitter_brightness: float = 0.6
    jitter_contrast: float = 0.6
    jitter_saturation: float = 0.6
    jitter_hue: float = 0.1
    jitter_seed: int = 0
    compat_reference_tiling: bool = False
    accumulate_dtype: str = "float32"
    count_epsilon: float = 0.0
    autocast: str = "none"
    crop_resize: str = "torch"
    min_tile_px: int = 4
    background_labels: tuple = field(default_factory=tuple)

    def __post_init__(self) -> None:
        fractions = tuple(as_fraction(f) for f in self.tile_fractions)
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"tile_fractions must be in (0, 1], got {self.tile_fractions}")
        stride = as_fraction(self.stride_fraction)
        if not 0 < stride <= 1:
            raise ValueError(f"stride_fraction must be in (0, 1], got {self.stride_fraction}")
        templates = (self.prompt_template,) if isinstance(self.prompt_template, str) else tuple(self.prompt_template)
        if not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
            raise ValueError(f"prompt_template needs a '{{}}' placeholder, got {self.prompt_template!r}")
        if self.output_stride < 1 or self.batch_size < 0 or self.min_tile_px < 1:
            raise ValueError("output_stride and min_tile_px must be >= 1, batch_size >= 0")
        if self.jitter_copies < 0:
            raise ValueError(f"jitter_copies must be >= 0, got {self.jitter_copies}")
        if min(self.jitter_brightness, self.jitter_contrast, self.jitter_saturation) < 0 or not 0 <= self.jitter_hue <= 0.5:
            raise ValueError("jitter strengths must be >= 0 and jitter_hue in [0, 0.5]")
        if self.accumulate_dtype not in ACCUMULATE_DTYPES:
            raise ValueError(f"accumulate_dtype must be one of {ACCUMULATE_DTYPES}, got {self.accumulate_dtype!r}")
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {AUTOCAST_DTYPES}, got {self.autocast!r}")
        if self.crop_resize not in CROP_RESIZES:
            raise ValueError(f"crop_resize must be one of {CROP_RESIZES}, got {self.crop_resize!r}")
        if self.count_epsilon < 0:
            raise ValueError(f"count_epsilon must be >= 0, got {self.count_epsilon}")
        background = tuple(str(b) for b in self.background_labels)
        if any(not b.strip() for b in background):
            raise ValueError(f"empty background label in {self.background_labels!r}")
        object.__setattr__(self, "tile_fractions", fractions)
        object.__setattr__(self, "stride_fraction", stride)
        object.__setattr__(self, "prompt_template", templates[0] if len(templates) == 1 else templates)
        object.__setattr__(self, "background_labels", background)

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        """The prompt template(s) as a tuple."""
        t = self.prompt_template
        return (t,) if isinstance(t, str) else tuple(t)

    @classmethod
    def from_preset(cls, name: str, path: str | os.PathLike | None = None, **overrides: Any) -> "RelevancyConfig":
        """The preset ``name`` of :func:`load_relevancy_presets` with fields replaced by ``overrides``.

        Raises:
            KeyError: for an unknown preset name (the message lists the known ones).
            ValueError: for invalid override values or unknown field names.
        """
        presets = load_relevancy_presets(path) if path is not None else PRESETS
        if name not in presets:
            raise KeyError(f"unknown relevancy preset {name!r}; available: {sorted(presets)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown RelevancyConfig fields {unknown}")
        return dataclasses.replace(presets[name], **overrides)


def default_presets_path() -> Path:
    """``config/relevancy_presets.yaml`` of the source tree or the colcon install."""
    from occ_audit_ros import paths

    return paths.resource("config/relevancy_presets.yaml")


def load_relevancy_presets(path: str | os.PathLike | None = None) -> dict[str, RelevancyConfig]:
    """Named :class:`RelevancyConfig` presets from a YAML file.

    The file maps preset names to dictionaries of RelevancyConfig fields; a ``base: <name>`` key
    starts from another preset of the same file.

    Args:
        path: YAML file; default :func:`default_presets_path`.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: on malformed YAML, unknown fields, invalid values or a bad ``base``.
    """
    import yaml

    path = Path(path) if path is not None else default_presets_path()
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of preset names to settings")
    names = {f.name for f in dataclasses.fields(RelevancyConfig)}
    out: dict[str, RelevancyConfig] = {}

    def build(name: str, seen: tuple[str, ...]) -> RelevancyConfig:
        if name in out:
            return out[name]
        if name in seen or name not in raw or not isinstance(raw[name], dict):
            raise ValueError(f"{path}: preset {name!r} is missing, not a mapping, or its base chain loops")
        entry = dict(raw[name])
        base = entry.pop("base", None)
        unknown = sorted(set(entry) - names)
        if unknown:
            raise ValueError(f"{path}: preset {name!r} has unknown fields {unknown}")
        for key in ("tile_fractions", "background_labels", "prompt_template"):
            if isinstance(entry.get(key), list):
                entry[key] = tuple(entry[key])
        try:
            cfg = dataclasses.replace(build(base, seen + (name,)), **entry) if base else RelevancyConfig(**entry)
        except TypeError as err:
            raise ValueError(f"{path}: preset {name!r}: {err}") from err
        out[name] = cfg
        return cfg

    for preset in raw:
        build(str(preset), ())
    return out


# ------------------------------------------------------------------------------------------ tiling
def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Window origins along one axis that cover ``[0, length)`` completely.

    Origins are 0, stride, 2*stride, ... while the window fits, plus ``length - tile`` when the last
    regular window stops short of the edge (so the border is covered, unlike the reference code's
    tiling, which leaves the right-most columns of wide images uncovered).

    Raises:
        ValueError: when ``tile > length`` or a size is not positive.
    """
    if tile <= 0 or stride <= 0 or tile > length:
        raise ValueError(f"invalid tiling: length {length}, tile {tile}, stride {stride}")
    origins = list(range(0, length - tile + 1, stride))
    if origins[-1] != length - tile:
        origins.append(length - tile)
    return origins


def reference_tile_windows(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(row, column) window origins exactly as the reference code (``ClipWrapper.create_tiles``).

    Columns run over ``range(0, W - tile + 1, stride)`` but only origins below the image *height* are
    kept; rows run over ``range(0, H - tile + 1, stride)`` keeping origins below the *width*; no
    window is added at the far edges. Order: columns outer, rows inner (the reference's order, which
    fixes the float16 accumulation order). On a 1600 x 900 image the 900 px tiles stop at column 1575.

    Returns:
        list of (y, x) [px]; empty when the tile does not fit.

    Raises:
        ValueError: when a size is not positive.
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"invalid tiling: tile {tile}, stride {stride}")
    return [(y, x) for x in range(0, width - tile + 1, stride) if x < height
            for y in range(0, height - tile + 1, stride) if y < width]


def scale_tiles(height: int, width: int, config: RelevancyConfig) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """(tile, stride, windows) per scale of ``config`` for an H x W image.

    tile = floor(d * fraction) with d = min(H, W) (compat: d = H), stride = max(1, floor(tile *
    stride_fraction)); windows = (y, x) origins [px]. Scales with tile < ``min_tile_px`` are left out
    with a warning; in compat mode a scale whose tile does not fit keeps an empty window list (it
    still counts in the mean over scales, as in the reference).

    Raises:
        ValueError: when no scale is left (the image is smaller than every tile).
    """
    d = height if config.compat_reference_tiling else min(height, width)
    out = []
    for fraction in config.tile_fractions:
        tile = math.floor(d * fraction)
        if tile < config.min_tile_px:
            LOG.warning("relevancy: %d x %d image: tile %d px of scale %s is below min_tile_px=%d; scale skipped",
                        width, height, tile, fraction, config.min_tile_px)
            continue
        stride = max(1, math.floor(tile * config.stride_fraction))
        if config.compat_reference_tiling:
            windows = reference_tile_windows(height, width, tile, stride)
        else:
            windows = [(y, x) for x in tile_origins(width, tile, stride) for y in tile_origins(height, tile, stride)]
        out.append((tile, stride, windows))
    if not out or not any(w for _, _, w in out):
        raise ValueError(f"image {width} x {height} px is smaller than every relevancy tile "
                         f"(min_tile_px={config.min_tile_px}, tile fractions {config.tile_fractions})")
    return out


# ------------------------------------------------------------------------------------------ images
def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Normalise an image to (H, W, 3) uint8 RGB.

    Accepts (H, W) grayscale, (H, W, 1), (H, W, 3) RGB and (H, W, 4) RGBA (alpha dropped), as uint8,
    uint16 (divided by 257) or float in [0, 1].

    Raises:
        ValueError: for other shapes, dtypes, or an empty image.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0, 1]")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@dataclass(frozen=True)
class JitterParams:
    """One draw of ColorJitter: ``order`` of the ops (0 brightness, 1 contrast, 2 saturation, 3 hue)
    and their factors (brightness/contrast/saturation multiplicative, hue an additive shift in turns)."""

    order: tuple[int, int, int, int]
    brightness: float
    contrast: float
    saturation: float
    hue: float


def sample_color_jitter(generator: torch.Generator, brightness: float = 0.6, contrast: float = 0.6,
                        saturation: float = 0.6, hue: float = 0.1) -> JitterParams:
    """Draw ColorJitter parameters with torchvision's ``ColorJitter.get_params`` semantics.

    Draw order: ``randperm(4)`` for the op order, then brightness, contrast and saturation factors
    uniform in [max(0, 1 - s), 1 + s] and the hue shift uniform in [-h, h], each one
    ``torch.empty(1).uniform_`` call (a strength of 0 draws nothing and gives the identity, as
    torchvision's ``None``). Given the same generator state, the draws equal torchvision's.
    """
    order = tuple(int(i) for i in torch.randperm(4, generator=generator))

    def draw(lo: float, hi: float, active: bool) -> float:
        return float(torch.empty(1).uniform_(lo, hi, generator=generator)) if active else None

    b = draw(max(0.0, 1 - brightness), 1 + brightness, brightness > 0)
    c = draw(max(0.0, 1 - contrast), 1 + contrast, contrast > 0)
    s = draw(max(0.0, 1 - saturation), 1 + saturation, saturation > 0)
    h = draw(-hue, hue, hue > 0)
    return JitterParams(order, 1.0 if b is None else b, 1.0 if c is None else c, 1.0 if s is None else s,
                        0.0 if h is None else h)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W) luma with ITU-R 601-2 weights (torchvision's ``rgb_to_grayscale``)."""
    return (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def _shift_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of a (3, H, W) RGB image in [0, 1] by ``shift`` turns (RGB -> HSV -> RGB)."""
    r, g, b = img[0], img[1], img[2]
    maxc, _ = img.max(dim=0)
    minc, _ = img.min(dim=0)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hr = ((g - b) / safe) % 6.0
    hg = (b - r) / safe + 2.0
    hb = (r - g) / safe + 4.0
    h = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = (h + shift) % 1.0
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    i = i.long() % 6
    table_r = torch.stack([v, q, p, p, t, v])
    table_g = torch.stack([t, v, v, q, p, p])
    table_b = torch.stack([p, p, t, v, v, q])
    idx = i.unsqueeze(0)
    return torch.cat([table_r.gather(0, idx), table_g.gather(0, idx), table_b.gather(0, idx)]).clamp(0.0, 1.0)


def color_jitter(img: torch.Tensor, params: JitterParams, quantize: bool = True) -> torch.Tensor:
    """Apply ColorJitter ``params`` to a (3, H, W) float RGB image in [0, 1] (torchvision semantics).

    Ops in ``params.order``: brightness = blend with black; contrast = blend with the image's mean
    luma; saturation = blend with the per-pixel luma; hue = rotation of the HSV hue; each result
    clamped to [0, 1] (torchvision ``functional_tensor``). With ``quantize`` the result is rounded
    to 8-bit levels, as the reference jitters a uint8 PIL image. Returns a new (3, H, W) tensor.
    """
    out = img
    for op in params.order:
        if op == 0:
            out = _blend(out, torch.zeros_like(out), params.brightness)
        elif op == 1:
            out = _blend(out, _grayscale(out).mean(), params.contrast)
        elif op == 2:
            out = _blend(out, _grayscale(out), params.saturation)
        elif params.hue != 0.0:
            out = _shift_hue(out, params.hue)
    if quantize:
        out = torch.round(out * 255.0) / 255.0
    return out


def jitter_parameters(config: RelevancyConfig) -> list[JitterParams]:
    """The ``config.jitter_copies`` ColorJitter draws, from a generator seeded with ``jitter_seed``."""
    gen = torch.Generator().manual_seed(int(config.jitter_seed))
    return [sample_color_jitter(gen, config.jitter_brightness, config.jitter_contrast, config.jitter_saturation,
                                config.jitter_hue) for _ in range(config.jitter_copies)]


def augmented_images(img: torch.Tensor, config: RelevancyConfig) -> list[torch.Tensor]:
    """[original, jittered copy 1, ..., copy n] of a (3, H, W) float RGB image in [0, 1]."""
    return [img] + [color_jitter(img, p) for p in jitter_parameters(config)]


# ------------------------------------------------------------------------------------------ extractor
class RelevancyExtractor:
    """Per-label CLIP relevancy maps of an image (Chefer last-block relevancy, multi-scale window).

    Args:
        clip: a loaded :class:`~occ_audit_ros.clip_model.ClipBundle` (CPU or CUDA).
        config: :class:`RelevancyConfig` (e.g. ``RelevancyConfig.from_preset("semabs")``).

    Text embeddings are cached per (label tuple, templates).
    """

    def __init__(self, clip: ClipBundle, config: RelevancyConfig | None = None) -> None:
        self.clip = clip
        self.config = config or RelevancyConfig()
        self._text_cache: dict[tuple, torch.Tensor] = {}
        self._warned_single = False
        self._mean = torch.tensor(CLIP_MEAN, device=clip.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=clip.device).view(1, 3, 1, 1)

    # ----------------------------------------------------------------------------------------- text
    def text_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        """(K, P) float32 text embeddings of the labels: per label, the mean over the prompt templates
        of the L2-normalised embeddings (one template: the normalised embedding).

        Raises:
            ValueError: on an empty label list or an empty label.
        """
        labels = tuple(str(label) for label in labels)
        if not labels:
            raise ValueError("the label list is empty: relevancy needs at least one label")
        if any(not label.strip() for label in labels):
            raise ValueError(f"empty label in {labels!r}")
        templates = self.config.prompt_templates
        key = (labels, templates)
        cached = self._text_cache.get(key)
        if cached is None:
            prompts = [t.format(label) for label in labels for t in templates]
            tokens = self.clip.tokenizer(prompts, padding=True, truncation=True, max_length=77,
                                         return_tensors="pt").to(self.clip.device)
            with torch.no_grad():
                emb = self.clip.model.get_text_features(**tokens)
                emb = getattr(emb, "pooler_output", emb)
            emb = F.normalize(emb.float(), dim=-1).view(len(labels), len(templates), -1)
            cached = emb.mean(dim=1)
            self._text_cache[key] = cached
        return cached

    # ----------------------------------------------------------------------------------------- crops
    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, t, t) float RGB in [0, 1] -> (N, 3, S, S) CLIP input (bicubic resize, mean/std;
        ``config.crop_resize`` selects torch's antialiased bicubic or PIL's bicubic on uint8)."""
        size = self.clip.image_size
        if self.config.crop_resize == "pil":
            from PIL import Image

            u8 = (crops.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            crops = torch.stack([torch.from_numpy(np.asarray(
                Image.fromarray(c).resize((size, size), Image.BICUBIC) if c.shape[:2] != (size, size)
                else Image.fromarray(c), dtype=np.float32)).permute(2, 0, 1) for c in u8]).to(crops.device) / 255.0
        elif crops.shape[-1] != size or crops.shape[-2] != size:
            crops = F.interpolate(crops, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return (crops.clamp(0.0, 1.0) - self._mean) / self._std

    def _autocast(self):
        if self.config.autocast == "none":
            return torch.autocast(self.clip.device.type, enabled=False)
        dtype = torch.bfloat16 if self.config.autocast == "bfloat16" else torch.float16
        return torch.autocast(self.clip.device.type, dtype=dtype)

    def crop_relevancy(self, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Last-block Chefer relevancy of preprocessed crops for K labels.

        Args:
            pixel_values: (N, 3, S, S) float CLIP input.
            text: (K, P) text embeddings (:meth:`text_embeddings`).

        Returns:
            (N, K, g, g) float32 patch relevancy R[CLS, 1:], g = S / patch size.
        """
        vision = self.clip.model.vision_model
        layers = vision.encoder.layers
        with self._autocast():
            with torch.no_grad():
                hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
                for layer in layers[:-1]:
                    hidden = layer(hidden, None)
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                last = layers[-1]
                attn = last.self_attn
                x = last.layer_norm1(hidden)
                n, t, d = x.shape
                heads, head_dim = attn.num_heads, attn.head_dim
                q = attn.q_proj(x[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)  # CLS query only
                k = attn.k_proj(x).view(n, t, heads, head_dim).transpose(1, 2)
                v = attn.v_proj(x).view(n, t, heads, head_dim).transpose(1, 2)
                cls_attn = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)
                cls_attn = cls_attn[:, :, 0, :].to(v.dtype)  # (N, heads, T)
            num_labels = text.shape[0]
            with torch.enable_grad():
                a = cls_attn.unsqueeze(1).expand(n, num_labels, heads, t).contiguous().requires_grad_(True)
                ctx = torch.einsum("nkht,nhtd->nkhd", a, v).reshape(n, num_labels, d)
                cls = hidden[:, None, 0, :] + attn.out_proj(ctx)
                cls = cls + last.mlp(last.layer_norm2(cls))
                img = self.clip.model.visual_projection(vision.post_layernorm(cls))
                logits = 100.0 * (F.normalize(img.float(), dim=-1) * text[None].float()).sum(-1)  # (N, K)
                (grad,) = torch.autograd.grad(logits.sum(), a)
        cam = (grad.float() * a.detach().float()).clamp(min=0).mean(dim=2)  # (N, K, T)
        g = self.clip.grid_size
        return cam[:, :, 1:].reshape(n, num_labels, g, g)

    def window_relevancy(self, crops: torch.Tensor | Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """RGB crops in [0, 1] -> (N, K, g, g) float32 relevancy, flip-averaged when ``config.flip``
        (the mirrored crops run in the same batch).

        Args:
            crops: (N, 3, t, t) tensor, or a sequence of N (3, t, t) tensors (views into the image are
                fine: each is resized to the CLIP input on its own, without stacking full-size crops).
            text: (K, P) text embeddings.
        """
        if isinstance(crops, torch.Tensor):
            pixel_values = self.preprocess(crops)
        else:
            pixel_values = torch.cat([self.preprocess(c[None]) for c in crops])
        n = pixel_values.shape[0]
        if not self.config.flip:
            return self.crop_relevancy(pixel_values, text)
        rel = self.crop_relevancy(torch.cat([pixel_values, torch.flip(pixel_values, dims=[-1])]), text)
        return 0.5 * (rel[:n] + torch.flip(rel[n:], dims=[-1]))

    def auto_batch_size(self, num_labels: int) -> int:
        """Windows per batch from free memory (CUDA: half the free memory over a per-crop estimate of
        activations; CPU: 32). Not exercised on the CPU-only build machines."""
        if self.clip.device.type != "cuda":
            return 32
        vcfg = self.clip.model.config.vision_config
        tokens = self.clip.grid_size ** 2 + 1
        width, inter = vcfg.hidden_size, vcfg.intermediate_size
        elem = 2 if self.config.autocast != "none" else 4
        per_crop = elem * (tokens * (4 * width + 2 * inter + vcfg.num_attention_heads * tokens) * 2
                           + num_labels * (8 * width + 2 * inter + vcfg.num_attention_heads * tokens) * 3)
        per_crop = (per_crop + 4 * 3 * self.clip.image_size ** 2 * 2) * (2 if self.config.flip else 1)
        free, _ = torch.cuda.mem_get_info(self.clip.device)
        return int(max(1, min(1024, 0.5 * free // per_crop)))

    # ----------------------------------------------------------------------------------------- image
    def __call__(self, image: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Relevancy maps of one image.

        Args:
            image: (H, W[, C]) image, see :func:`as_rgb_uint8` for accepted layouts and dtypes.
            labels: the label set queried jointly (K >= 1). With K = 1 mean subtraction over the set
                would zero the map: a warning is logged once and the mean is taken over the label plus
                ``config.background_labels`` (when set; only the label's map is returned), else
                mean subtraction is skipped.

        Returns:
            (K, ceil(H / output_stride), ceil(W / output_stride)) float32 relevancy (unitless), in
            label order, in image pixel coordinates.

        Raises:
            ValueError: on an empty label list, an unsupported image, or an image smaller than every tile.
        """
        cfg = self.config
        labels = [str(label) for label in labels]
        self.text_embeddings(labels)  # validates the labels
        query = list(labels)
        if len(labels) == 1 and cfg.subtract_mean:
            extra = [b for b in cfg.background_labels if b != labels[0]]
            if not self._warned_single:
                LOG.warning("a single label was queried: mean subtraction over the label set would zero its map; %s",
                            f"subtracting the mean over it and the background labels {extra}" if extra
                            else "mean subtraction is skipped (query labels jointly as a scene vocabulary)")
                self._warned_single = True
            query += extra
        maps = self.raw_maps(image, query)
        if cfg.subtract_mean and len(query) > 1:
            maps -= maps.mean(dim=0, keepdim=True)
        return (maps[:len(labels)] * cfg.scale).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def raw_maps(self, image: np.ndarray, labels: Sequence[str]) -> torch.Tensor:
        """(K, ceil(H / s), ceil(W / s)) float32 multi-scale relevancy before mean subtraction and
        scaling (per scale: sum over covering tiles / (count + count_epsilon); then the mean over scales).

        Raises:
            ValueError: as :meth:`__call__`.
        """
        cfg = self.config
        text = self.text_embeddings(labels)
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        scales = scale_tiles(height, width, cfg)
        device = self.clip.device
        img = torch.from_numpy(rgb.copy()).to(device).permute(2, 0, 1).float().div_(255.0)
        images = augmented_images(img, cfg)
        s = cfg.output_stride
        out_h, out_w = math.ceil(height / s), math.ceil(width / s)
        num_labels = text.shape[0]
        batch_size = cfg.batch_size or self.auto_batch_size(num_labels)
        half = cfg.accumulate_dtype == "float16"
        copies = len(images)
        total = torch.zeros(num_labels, out_h, out_w, device=device)
        for tile, _stride, windows in scales:
            # All window maps of this scale first ((copies x windows, K, g, g): small), then accumulation.
            items = [(a, y, x) for a in range(copies) for y, x in windows]  # the reference's order
            rel = torch.cat([self.window_relevancy([images[a][:, y:y + tile, x:x + tile] for a, y, x in
                                                    items[i:i + batch_size]], text)
                             for i in range(0, len(items), batch_size)]) if items else None
            acc = torch.zeros(num_labels, out_h, out_w, device=device, dtype=torch.float16 if half else torch.float32)
            count = torch.full((1, out_h, out_w), float(cfg.count_epsilon), device=device)
            if rel is not None:
                rel = rel.view(copies, len(windows), num_labels, rel.shape[-2], rel.shape[-1])
                if not half:  # bilinear upsampling is linear: sum the copies' maps first (float32 only)
                    rel = rel.sum(dim=0, keepdim=True)
                for copy_maps in rel:  # float16: one rounding per copy and window, as the reference
                    for (y, x), crop_rel in zip(windows, copy_maps):
                        y0, x0 = y // s, x // s
                        y1, x1 = min(out_h, -(-(y + tile) // s)), min(out_w, -(-(x + tile) // s))
                        acc[:, y0:y1, x0:x1] += F.interpolate(crop_rel[None], size=(y1 - y0, x1 - x0),
                                                              mode="bilinear", align_corners=False)[0]
                for y, x in windows:
                    y0, x0 = y // s, x // s
                    count[:, y0:min(out_h, -(-(y + tile) // s)), x0:min(out_w, -(-(x + tile) // s))] += copies
            if cfg.count_epsilon > 0:
                total += acc.float() / count
            else:
                total += acc.float() / count.clamp(min=1.0)
        return total / len(scales)


def _load_default_presets() -> dict[str, RelevancyConfig]:
    try:
        return load_relevancy_presets()
    except FileNotFoundError as err:  # an install without config/: no presets, explicit configs still work
        LOG.warning("relevancy presets not loaded: %s", err)
        return {}


#: Named presets from ``config/relevancy_presets.yaml`` (``semabs``, ``semabs_reference``, ``fast``).
PRESETS: Mapping[str, RelevancyConfig] = _load_default_presets()
