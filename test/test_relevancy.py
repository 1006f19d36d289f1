"""Relevancy extractor against an independent naive implementation on the same random weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from occ_audit_ros import paths
from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD
from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor, as_rgb_uint8, tile_origins

LABELS = ["car", "pedestrian", "traffic cone", "road"]


def naive_crop_relevancy(clip, crop: torch.Tensor, prompt: str) -> torch.Tensor:
    """One crop, one label, plain autograd through the whole HF model (no batching, no shortcuts)."""
    model = clip.model
    size = clip.image_size
    x = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tokens = clip.tokenizer([prompt], return_tensors="pt")
    with torch.enable_grad():
        x.requires_grad_(True)  # the weights are frozen; a grad-requiring input builds the graph
        out = model.vision_model(pixel_values=x, output_attentions=True)
        attn = out.attentions[-1]  # (1, heads, T, T), part of the autograd graph
        img = model.visual_projection(out.pooler_output)
        txt = model.get_text_features(**tokens)
        txt = getattr(txt, "pooler_output", txt)
        logit = 100.0 * F.cosine_similarity(img, txt)
        (grad,) = torch.autograd.grad(logit.sum(), attn)
    cam = (grad * attn).clamp(min=0).mean(dim=1)[0]  # (T, T)
    rollout = torch.eye(cam.shape[0]) + cam  # R = I + cam @ I, last block only
    g = clip.grid_size
    return rollout[0, 1:].reshape(g, g).detach()


def naive_relevancy(clip, image: np.ndarray, labels, cfg: RelevancyConfig) -> np.ndarray:
    """Per tile, per label loop with explicit per-pixel coverage averaging (output_stride 1)."""
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
    h, w = image.shape[:2]
    maps = np.zeros((len(labels), h, w), np.float64)
    for frac in cfg.tile_fractions:
        tile = int(round(frac * min(h, w)))
        stride = int(round(tile * cfg.stride_fraction))
        acc = np.zeros((len(labels), h, w))
        cnt = np.zeros((h, w))
        for y in tile_origins(h, tile, stride):
            for x in tile_origins(w, tile, stride):
                crop = img[:, y:y + tile, x:x + tile]
                for k, label in enumerate(labels):
                    rel = naive_crop_relevancy(clip, crop, cfg.prompt_template.format(label))
                    if cfg.flip:
                        rel_f = naive_crop_relevancy(clip, torch.flip(crop, dims=[-1]), cfg.prompt_template.format(label))
                        rel = 0.5 * (rel + torch.flip(rel_f, dims=[-1]))
                    up = F.interpolate(rel[None, None], size=(tile, tile), mode="bilinear", align_corners=False)[0, 0]
                    acc[k, y:y + tile, x:x + tile] += up.numpy()
                cnt[y:y + tile, x:x + tile] += 1
        maps += acc / cnt
    maps /= len(cfg.tile_fractions)
    if cfg.subtract_mean and len(labels) > 1:
        maps -= maps.mean(axis=0, keepdims=True)
    return (maps * cfg.scale).astype(np.float32)


@pytest.fixture(scope="module")
def front_image():
    """Real CAM_FRONT image of the keyframe, downscaled 8x to keep the naive loop fast (200 x 112)."""
    path = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
    return np.asarray(Image.open(path).convert("RGB").resize((200, 112), Image.BILINEAR))


@pytest.mark.parametrize("cfg", [
    RelevancyConfig(tile_fractions=(1.0,), stride_fraction=0.25),
    RelevancyConfig(tile_fractions=(1.0, 0.5), stride_fraction=0.5, flip=True, batch_size=3),
])
def test_batched_equals_naive(tiny_clip, front_image, cfg):
    fast = RelevancyExtractor(tiny_clip, cfg)(front_image, LABELS)
    ref = naive_relevancy(tiny_clip, front_image, LABELS, cfg)
    assert fast.shape == ref.shape == (len(LABELS), 112, 200)
    assert np.abs(ref).max() > 1e-4  # the maps are not trivially zero
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_label_order_and_mean_subtraction(tiny_clip, front_image):
    ex = RelevancyExtractor(tiny_clip, RelevancyConfig())
    maps = ex(front_image, LABELS)
    np.testing.assert_allclose(maps.mean(axis=0), 0.0, atol=1e-6)
    permuted = ex(front_image, LABELS[::-1])
    np.testing.assert_allclose(permuted[::-1], maps, rtol=1e-5, atol=1e-5)


def test_output_stride_matches_full_resolution(tiny_clip, front_image):
    full = RelevancyExtractor(tiny_clip, RelevancyConfig(output_stride=1))(front_image, LABELS)
    half = RelevancyExtractor(tiny_clip, RelevancyConfig(output_stride=2))(front_image, LABELS)
    assert half.shape == (len(LABELS), 56, 100)
    # A coarser accumulation grid of the same smooth maps: close to the subsampled full-res map.
    err = np.abs(half - full[:, ::2, ::2]).max()
    assert err < 0.2 * np.abs(full).max()


def test_bad_input(tiny_clip, front_image, caplog):
    ex = RelevancyExtractor(tiny_clip)
    with pytest.raises(ValueError, match="empty"):
        ex(front_image, [])
    with pytest.raises(ValueError):
        ex(np.zeros((0, 10, 3), np.uint8), LABELS)
    single = ex(front_image, ["car"])  # warns and skips mean subtraction instead of returning zeros
    assert np.abs(single).max() > 0
    assert "single label" in caplog.text
    gray = ex(front_image.mean(axis=2).astype(np.uint8), LABELS)
    rgba = ex(np.dstack([front_image, np.full(front_image.shape[:2], 255, np.uint8)]), LABELS)
    np.testing.assert_allclose(rgba, ex(front_image, LABELS), atol=1e-6)
    assert gray.shape == rgba.shape
    img16 = front_image.astype(np.uint16) * 257
    np.testing.assert_array_equal(as_rgb_uint8(img16), front_image)


def test_tile_origins_cover_the_image():
    assert tile_origins(1600, 900, 225) == [0, 225, 450, 675, 700]
    assert tile_origins(900, 900, 225) == [0]
    with pytest.raises(ValueError):
        tile_origins(100, 200, 50)
