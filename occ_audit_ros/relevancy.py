"""CLIP relevancy maps (Chefer et al. gradient-weighted attention on the last ViT block), ROS-free.

Semantic Abstraction (Ha & Song, CoRL 2022, Sec. 3.1 and App. 6.3; design notes
``semantic_abstraction.md`` Sec. 2) turns (image, label set) into one relevancy map per label:

* for each label l: logit_l = 100 * cos(f_img(crop), f_txt(prompt(l)));
* on the last ViT block: A = attention probabilities (heads x T x T), G = d logit_l / d A,
  cam = mean_heads(clamp(G * A, min=0)); relevancy rollout R = I + cam (only the last block is used);
* relevancy(crop) = R[CLS, 1:] as a g x g patch map (7 x 7 for ViT-B/32), bilinearly upsampled to the
  crop; per pixel, the sum over covering crops divided by their number, then averaged over scales;
* the per-pixel mean over the queried label set is subtracted and the result multiplied by 50.

This module is the first, simple extractor (sliding window over a few scales, no colour jitter);
the faithful multi-scale preset with jitter and flips is built on the same last-block kernel.

Batching: the first blocks run once per crop without gradients. Only the CLS query row of the last
block's attention reaches the pooled image embedding, so the gradient of every label's logit with
respect to A is zero outside that row and cam[CLS, :] needs only A[:, :, CLS, :]. That row is expanded
over labels and the remainder of the block, the projection and the K logits are computed for all
labels at once; one backward pass gives G for every (crop, label). ``test/test_relevancy.py`` shows it
equals plain autograd through the whole model, one crop and one label at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clip_model import CLIP_MEAN, CLIP_STD, ClipBundle

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelevancyConfig:
    """Settings of the sliding-window relevancy extractor.

    Attributes:
        tile_fractions: tile side per scale as a fraction of the image's short side
            (SemAbs: (1, 2/3, 1/2, 1/4); the single-scale default uses (1.0,)).
        stride_fraction: window stride as a fraction of the tile side (SemAbs: 1/4).
        flip: also evaluate every tile mirrored horizontally (map mirrored back, pooled).
        prompt_template: text prompt with one ``{}`` for the label.
        subtract_mean: subtract the per-pixel mean over the queried labels (SemAbs default).
        scale: multiplier applied last (SemAbs: 50).
        output_stride: maps are returned at ceil(H / s) x ceil(W / s) [px of the input image].
        batch_size: crops per CLIP forward.
    """

    tile_fractions: tuple[float, ...] = (1.0,)
    stride_fraction: float = 0.25
    flip: bool = False
    prompt_template: str = "a photograph of a {} on a street."
    subtract_mean: bool = True
    scale: float = 50.0
    output_stride: int = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.tile_fractions or any(not 0 < f <= 1 for f in self.tile_fractions):
            raise ValueError(f"tile_fractions must be in (0, 1], got {self.tile_fractions}")
        if not 0 < self.stride_fraction <= 1:
            raise ValueError(f"stride_fraction must be in (0, 1], got {self.stride_fraction}")
        if "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template needs a '{{}}' placeholder, got {self.prompt_template!r}")
        if self.output_stride < 1 or self.batch_size < 1:
            raise ValueError("output_stride and batch_size must be >= 1")


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


class RelevancyExtractor:
    """Per-label CLIP relevancy maps of an image (Chefer last-block relevancy, sliding window).

    Args:
        clip: a loaded :class:`~occ_audit_ros.clip_model.ClipBundle`.
        config: :class:`RelevancyConfig`.

    Text embeddings are cached per label tuple.
    """

    def __init__(self, clip: ClipBundle, config: RelevancyConfig | None = None) -> None:
        self.clip = clip
        self.config = config or RelevancyConfig()
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._warned_single = False
        self._mean = torch.tensor(CLIP_MEAN, device=clip.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=clip.device).view(1, 3, 1, 1)

    # ----------------------------------------------------------------------------------------- text
    def text_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        """(K, P) float32 L2-normalised text embeddings of ``prompt_template.format(label)``.

        Raises:
            ValueError: on an empty label list or an empty label.
        """
        labels = tuple(labels)
        if not labels:
            raise ValueError("the label list is empty: relevancy needs at least one label")
        if any(not str(label).strip() for label in labels):
            raise ValueError(f"empty label in {labels!r}")
        cached = self._text_cache.get(labels)
        if cached is None:
            prompts = [self.config.prompt_template.format(label) for label in labels]
            tokens = self.clip.tokenizer(prompts, padding=True, truncation=True, max_length=77,
                                         return_tensors="pt").to(self.clip.device)
            with torch.no_grad():
                emb = self.clip.model.get_text_features(**tokens)
                emb = getattr(emb, "pooler_output", emb)
            cached = F.normalize(emb.float(), dim=-1)
            self._text_cache[labels] = cached
        return cached

    # ----------------------------------------------------------------------------------------- crops
    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, t, t) float RGB in [0, 1] -> (N, 3, S, S) CLIP input (bicubic resize, mean/std)."""
        size = self.clip.image_size
        if crops.shape[-1] != size or crops.shape[-2] != size:
            crops = F.interpolate(crops, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return (crops.clamp(0.0, 1.0) - self._mean) / self._std

    def crop_relevancy(self, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Last-block Chefer relevancy of preprocessed crops for K labels.

        Args:
            pixel_values: (N, 3, S, S) float CLIP input.
            text: (K, P) L2-normalised text embeddings.

        Returns:
            (N, K, g, g) float32 patch relevancy, g = S / patch size.
        """
        vision = self.clip.model.vision_model
        layers = vision.encoder.layers
        with torch.no_grad():
            hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
            for layer in layers[:-1]:
                hidden = layer(hidden, None)
            last = layers[-1]
            attn = last.self_attn
            x = last.layer_norm1(hidden)
            n, t, d = x.shape
            heads, head_dim = attn.num_heads, attn.head_dim
            q = attn.q_proj(x[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)  # CLS query only
            k = attn.k_proj(x).view(n, t, heads, head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(n, t, heads, head_dim).transpose(1, 2)
            cls_attn = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1, dtype=torch.float32)
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
        cam = (grad * a.detach()).clamp(min=0).mean(dim=2).float()  # (N, K, T)
        g = self.clip.grid_size
        return cam[:, :, 1:].reshape(n, num_labels, g, g)

    # ----------------------------------------------------------------------------------------- image
    @torch.no_grad()
    def __call__(self, image: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Relevancy maps of one image.

        Args:
            image: (H, W[, C]) image, see :func:`as_rgb_uint8` for accepted layouts and dtypes.
            labels: the label set queried jointly (K >= 1; with K = 1 mean subtraction would zero
                the map, so it is skipped and a warning is logged once).

        Returns:
            (K, ceil(H / output_stride), ceil(W / output_stride)) float32 relevancy (unitless), in
            label order.

        Raises:
            ValueError: on an empty label list or an unsupported image.
        """
        cfg = self.config
        text = self.text_embeddings(labels)
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        img = torch.from_numpy(rgb.copy()).to(self.clip.device).permute(2, 0, 1).float().div_(255.0)
        s = cfg.output_stride
        out_h, out_w = math.ceil(height / s), math.ceil(width / s)
        num_labels = text.shape[0]
        total = torch.zeros(num_labels, out_h, out_w, device=self.clip.device)
        for fraction in cfg.tile_fractions:
            tile = max(1, int(round(fraction * min(height, width))))
            stride = max(1, int(round(tile * cfg.stride_fraction)))
            windows = [(y, x) for y in tile_origins(height, tile, stride) for x in tile_origins(width, tile, stride)]
            acc = torch.zeros(num_labels, out_h, out_w, device=self.clip.device)
            count = torch.zeros(1, out_h, out_w, device=self.clip.device)
            for start in range(0, len(windows), cfg.batch_size):
                batch = windows[start:start + cfg.batch_size]
                crops = torch.stack([img[:, y:y + tile, x:x + tile] for y, x in batch])
                pixel_values = self.preprocess(crops)
                rel = self.crop_relevancy(pixel_values, text)
                if cfg.flip:
                    rel_flip = self.crop_relevancy(torch.flip(pixel_values, dims=[-1]), text)
                    rel = 0.5 * (rel + torch.flip(rel_flip, dims=[-1]))
                for (y, x), crop_rel in zip(batch, rel):
                    y0, x0 = y // s, x // s
                    y1, x1 = min(out_h, -(-(y + tile) // s)), min(out_w, -(-(x + tile) // s))
                    up = F.interpolate(crop_rel[None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                       align_corners=False)[0]
                    acc[:, y0:y1, x0:x1] += up
                    count[:, y0:y1, x0:x1] += 1.0
            total += acc / count.clamp(min=1.0)
        total /= len(cfg.tile_fractions)
        if cfg.subtract_mean:
            if num_labels > 1:
                total -= total.mean(dim=0, keepdim=True)
            elif not self._warned_single:
                LOG.warning("a single label was queried: mean subtraction over the label set would zero "
                            "its map, so it is skipped (query labels jointly as a scene vocabulary)")
                self._warned_single = True
        return (total * cfg.scale).cpu().numpy().astype(np.float32)
