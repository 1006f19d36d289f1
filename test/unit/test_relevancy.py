"""Relevancy extractor against an independent naive implementation on the same random weights."""

import colorsys
import dataclasses
import logging
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from occ_audit_ros import paths
from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD
from occ_audit_ros.relevancy import (PRESETS, RelevancyConfig, RelevancyExtractor, as_rgb_uint8, color_jitter,
                                     jitter_parameters, load_relevancy_presets, reference_tile_windows,
                                     sample_color_jitter, scale_tiles, tile_origins)

LABELS = ["car", "pedestrian", "traffic cone", "road"]


def naive_text(clip, labels, templates):
    """Per label: mean over templates of the L2-normalised text embeddings (the reference's classifier)."""
    out = []
    for label in labels:
        embs = []
        for template in templates:
            tokens = clip.tokenizer([template.format(label)], return_tensors="pt")
            txt = clip.model.get_text_features(**tokens)
            txt = getattr(txt, "pooler_output", txt)
            embs.append(txt[0] / txt[0].norm())
        out.append(torch.stack(embs).mean(0))
    return out


def naive_crop_relevancy(clip, crop: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """One crop, one label, plain autograd through the whole HF image tower (no batching, no shortcuts)."""
    model = clip.model
    size = clip.image_size
    x = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.enable_grad():
        x.requires_grad_(True)  # the weights are frozen; a grad-requiring input builds the graph
        out = model.vision_model(pixel_values=x, output_attentions=True)
        attn = out.attentions[-1]  # (1, heads, T, T), part of the autograd graph
        img = model.visual_projection(out.pooler_output)
        logit = 100.0 * (img[0] / img[0].norm() * text).sum()
        (grad,) = torch.autograd.grad(logit, attn)
    cam = (grad * attn).clamp(min=0).mean(dim=1)[0]  # (T, T)
    rollout = torch.eye(cam.shape[0]) + cam  # R = I + cam @ I, last block only
    g = clip.grid_size
    return rollout[0, 1:].reshape(g, g).detach()


def naive_windows(h, w, tile, stride, compat):
    """Window origins (y, x): the reference's loops (compat) or a grid with the far edges added."""
    if compat:
        return [(int(y), int(x)) for x in np.arange(0, w - tile + 1, stride) if x < h
                for y in np.arange(0, h - tile + 1, stride) if y < w]
    rows = list(range(0, h - tile + 1, stride))
    cols = list(range(0, w - tile + 1, stride))
    rows += [h - tile] if rows[-1] + tile < h else []
    cols += [w - tile] if cols[-1] + tile < w else []
    return [(y, x) for x in cols for y in rows]


def naive_relevancy(clip, image: np.ndarray, labels, cfg: RelevancyConfig) -> np.ndarray:
    """Per augmented copy, tile and label loop with explicit per-pixel coverage averaging (output
    stride 1). Shares only the jitter draws/function with the module (and mirrors float16 accumulation)."""
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
    images = [img] + [color_jitter(img, p) for p in jitter_parameters(cfg)]
    h, w = image.shape[:2]
    d = h if cfg.compat_reference_tiling else min(h, w)
    texts = naive_text(clip, labels, cfg.prompt_templates)
    half = cfg.accumulate_dtype == "float16"
    maps = np.zeros((len(labels), h, w), np.float64)
    for frac in cfg.tile_fractions:
        tile = d * Fraction(frac).numerator // Fraction(frac).denominator
        stride = max(1, tile * cfg.stride_fraction.numerator // cfg.stride_fraction.denominator)
        acc = np.zeros((len(labels), h, w), np.float16 if half else np.float64)
        cnt = np.zeros((h, w)) + cfg.count_epsilon
        for im in images:
            for y, x in naive_windows(h, w, tile, stride, cfg.compat_reference_tiling):
                crop = im[:, y:y + tile, x:x + tile]
                for k, text in enumerate(texts):
                    rel = naive_crop_relevancy(clip, crop, text)
                    if cfg.flip:
                        rel_f = naive_crop_relevancy(clip, torch.flip(crop, dims=[-1]), text)
                        rel = 0.5 * (rel + torch.flip(rel_f, dims=[-1]))
                    up = F.interpolate(rel[None, None], size=(tile, tile), mode="bilinear", align_corners=False)[0, 0]
                    acc[k, y:y + tile, x:x + tile] = acc[k, y:y + tile, x:x + tile] + up.numpy()
                cnt[y:y + tile, x:x + tile] += 1
        maps += acc.astype(np.float64) / (cnt if cfg.count_epsilon > 0 else np.maximum(cnt, 1))
    maps /= len(cfg.tile_fractions)
    if cfg.subtract_mean and len(labels) > 1:
        maps -= maps.mean(axis=0, keepdims=True)
    return (maps * cfg.scale).astype(np.float32)


@pytest.fixture(scope="module")
def front_full():
    path = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def front_image(front_full):
    """Real CAM_FRONT image of the keyframe, downscaled 8x to keep the naive loop fast (200 x 112)."""
    return np.asarray(front_full.resize((200, 112), Image.BILINEAR))


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


@pytest.mark.parametrize("name,size,labels", [
    ("semabs", (48, 48), LABELS[:2]),             # 2,448 crops per label (square: fewest windows), two labels
    ("semabs_reference", (50, 50), LABELS[:2]),   # the reference tiling: no windows at the far edges
    ("fast", (200, 112), LABELS),
])
def test_preset_equals_naive(tiny_clip, front_full, name, size, labels):
    """Every preset (as shipped, output stride 1) equals the naive whole-model loop."""
    cfg = dataclasses.replace(PRESETS[name], output_stride=1)
    image = np.asarray(front_full.resize(size, Image.BILINEAR))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny passes: one thread is faster and robust to a busy machine
    try:
        fast = RelevancyExtractor(tiny_clip, cfg)(image, labels)
        ref = naive_relevancy(tiny_clip, image, labels, cfg)
    finally:
        torch.set_num_threads(threads)
    assert fast.shape == ref.shape == (len(labels), size[1], size[0])
    scale = np.abs(ref).max()
    assert scale > 1e-4
    # float16 accumulation (semabs, as the reference): both sides round each tile sum to half, so
    # results agree to a few half-precision steps of the accumulated sums (~1e-3 relative).
    tol = 3e-3 if cfg.accumulate_dtype == "float16" else 1e-4
    np.testing.assert_allclose(fast, ref, rtol=tol, atol=tol * scale)


def test_reference_tiling_leaves_wide_images_uncovered(tiny_clip, front_full):
    """Compat tiling on a 2:1 image: columns right of every scale's last tile are exactly zero, as in
    the reference; the default tiling covers them."""
    image = np.asarray(front_full.resize((80, 36), Image.BILINEAR))
    cfg = dataclasses.replace(PRESETS["semabs_reference"], tile_fractions=(1, Fraction(1, 2)), jitter_copies=0,
                              flip=False)
    right = max(x + t for t, _, wins in scale_tiles(36, 80, cfg) for _, x in wins)
    assert right == 63
    compat = RelevancyExtractor(tiny_clip, cfg)(image, LABELS[:2])
    assert np.all(compat[:, :, right:] == 0.0) and np.all(np.abs(compat[:, :, :right]).max(axis=(1, 2)) > 0)
    full = RelevancyExtractor(tiny_clip, dataclasses.replace(cfg, compat_reference_tiling=False))(image, LABELS[:2])
    assert np.all(np.abs(full[:, :, right:]).max(axis=(1, 2)) > 0)


def test_reference_tiling_on_nuscenes_size():
    """The reference quirk on 1600 x 900 (design notes): coverage ends at columns 1575, 1350, 1346, 1121
    and the full configuration evaluates 3,456 crops (x 6 images x 2 flips)."""
    cfg = PRESETS["semabs_reference"]
    scales = scale_tiles(900, 1600, cfg)
    assert [t for t, _, _ in scales] == [900, 600, 450, 225]
    assert [s for _, s, _ in scales] == [225, 150, 112, 56]
    assert [max(x + t for _, x in w) for t, _, w in scales] == [1575, 1350, 1346, 1121]
    assert sum(len(w) for _, _, w in scales) * 6 * 2 == 3456
    full = scale_tiles(900, 1600, PRESETS["semabs"])  # default: every pixel covered at every scale
    for t, _, w in full:
        cover = np.zeros((900, 1600), bool)
        for y, x in w:
            cover[y:y + t, x:x + t] = True
        assert cover.all()


def test_flip_equivariance(tiny_clip, front_full):
    """With flips (and jitter, which is per pixel or global) the maps of a mirrored image are the
    mirrored maps, when the tiling is itself symmetric (square image)."""
    cfg = RelevancyConfig(tile_fractions=(1, Fraction(1, 2)), stride_fraction=Fraction(1, 4), flip=True,
                          jitter_copies=1)
    image = np.asarray(front_full.resize((48, 48), Image.BILINEAR))
    ex = RelevancyExtractor(tiny_clip, cfg)
    maps = ex(image, LABELS)
    mirrored = ex(np.ascontiguousarray(image[:, ::-1]), LABELS)
    np.testing.assert_allclose(mirrored[:, :, ::-1], maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    unflipped = RelevancyExtractor(tiny_clip, dataclasses.replace(cfg, flip=False))(image, LABELS)
    assert np.abs(unflipped - maps).max() > 1e-3 * np.abs(maps).max()  # flipping does change the maps


def test_coverage_averaging(tiny_clip, front_image):
    """One scale, one window covering everything = that window's upsampled map; with a stride the
    result is the coverage-weighted mean of the windows (per pixel)."""
    ex = RelevancyExtractor(tiny_clip, RelevancyConfig(subtract_mean=False, scale=1.0))
    text = ex.text_embeddings(LABELS)
    square = np.ascontiguousarray(front_image[:, :112])
    single = ex.raw_maps(square, LABELS)
    crop = torch.from_numpy(square.copy()).permute(2, 0, 1).float()[None] / 255.0
    rel = ex.window_relevancy(crop, text)
    up = F.interpolate(rel, size=(112, 112), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(single, up, rtol=1e-5, atol=1e-7)


def test_label_order_and_mean_subtraction(tiny_clip, front_image):
    ex = RelevancyExtractor(tiny_clip, RelevancyConfig())
    maps = ex(front_image, LABELS)
    np.testing.assert_allclose(maps.mean(axis=0), 0.0, atol=1e-6)
    permuted = ex(front_image, LABELS[::-1])
    np.testing.assert_allclose(permuted[::-1], maps, rtol=1e-5, atol=1e-5)
    raw = ex.raw_maps(front_image, LABELS).numpy()
    np.testing.assert_allclose(maps, 50.0 * (raw - raw.mean(axis=0)), rtol=1e-5, atol=1e-6)


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
    with pytest.raises(ValueError, match="empty label"):
        ex(front_image, ["car", " "])
    with pytest.raises(ValueError):
        ex(np.zeros((0, 10, 3), np.uint8), LABELS)
    with pytest.raises(ValueError):
        ex(np.zeros((10, 10, 2), np.uint8), LABELS)
    with pytest.raises(ValueError, match="smaller than every"):
        ex(front_image[:3, :3], LABELS)
    with caplog.at_level(logging.WARNING):
        small = RelevancyExtractor(tiny_clip, PRESETS["fast"])(front_image[:6, :10], LABELS)  # d/2 = 3 px < 4: skipped
    assert small.shape == (len(LABELS), 2, 3) and "scale skipped" in caplog.text
    single = ex(front_image, ["car"])  # no background set: warns and skips mean subtraction
    assert np.abs(single).max() > 0
    assert "single label" in caplog.text
    gray = ex(front_image.mean(axis=2).astype(np.uint8), LABELS)
    rgba = ex(np.dstack([front_image, np.full(front_image.shape[:2], 255, np.uint8)]), LABELS)
    np.testing.assert_allclose(rgba, ex(front_image, LABELS), atol=1e-6)
    assert gray.shape == rgba.shape
    img16 = front_image.astype(np.uint16) * 257
    np.testing.assert_array_equal(as_rgb_uint8(img16), front_image)
    np.testing.assert_allclose(ex(img16, LABELS), ex(front_image, LABELS), atol=1e-6)


def test_single_label_background_fallback(tiny_clip, front_image):
    cfg = RelevancyConfig(background_labels=("road", "building", "car"))
    ex = RelevancyExtractor(tiny_clip, cfg)
    single = ex(front_image, ["car"])
    joint = ex(front_image, ["car", "road", "building"])  # 'car' is not repeated in the background set
    assert single.shape == (1, 112, 200)
    np.testing.assert_allclose(single[0], joint[0], rtol=1e-5, atol=1e-6)


def test_prompt_templates_mean_embedding(tiny_clip):
    templates = ("a photograph of a {} on a street.", "a photo of the {}.")
    ex = RelevancyExtractor(tiny_clip, RelevancyConfig(prompt_template=templates))
    emb = ex.text_embeddings(["car", "road"])
    ref = naive_text(tiny_clip, ["car", "road"], templates)
    torch.testing.assert_close(emb, torch.stack(ref), rtol=1e-5, atol=1e-6)
    assert emb.norm(dim=-1).max() < 1.0  # a mean of two different unit vectors, not re-normalised


def test_color_jitter_semantics():
    gen = torch.Generator().manual_seed(3)
    draws = [sample_color_jitter(gen) for _ in range(200)]
    for p in draws:
        assert sorted(p.order) == [0, 1, 2, 3]
    for attr, lo, hi in (("brightness", 0.4, 1.6), ("contrast", 0.4, 1.6), ("saturation", 0.4, 1.6), ("hue", -0.1, 0.1)):
        values = np.array([getattr(p, attr) for p in draws])
        assert values.min() >= lo and values.max() <= hi and values.max() - values.min() > 0.8 * (hi - lo)
    assert len({p.order for p in draws}) > 12  # the order is random too
    cfg = PRESETS["semabs"]
    assert jitter_parameters(cfg) == jitter_parameters(cfg) and len(jitter_parameters(cfg)) == 5  # fixed seed

    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((3, 5, 7)).astype(np.float32))
    ident = dict(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
    from occ_audit_ros.relevancy import JitterParams
    one = lambda **kw: color_jitter(img, JitterParams((0, 1, 2, 3), **{**ident, **kw}), quantize=False)  # noqa: E731
    torch.testing.assert_close(one(), img)
    torch.testing.assert_close(one(brightness=0.5), img * 0.5)
    luma = 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    torch.testing.assert_close(one(saturation=0.0), luma.expand(3, -1, -1))
    torch.testing.assert_close(one(contrast=0.0), luma.mean().expand(3, 5, 7))
    shifted = one(hue=0.07).numpy()
    for yx in np.ndindex(5, 7):  # against the standard library's HSV conversion
        hh, ss, vv = colorsys.rgb_to_hsv(*img[:, yx[0], yx[1]].tolist())
        np.testing.assert_allclose(shifted[:, yx[0], yx[1]], colorsys.hsv_to_rgb((hh + 0.07) % 1.0, ss, vv), atol=1e-5)
    q = color_jitter(img, JitterParams((3, 2, 1, 0), 1.3, 0.7, 1.5, -0.05))
    np.testing.assert_allclose((q * 255).numpy(), np.round((q * 255).numpy()), atol=1e-4)  # 8-bit levels


def test_presets_file(tmp_path):
    presets = load_relevancy_presets()
    assert {"semabs", "semabs_reference", "fast"} <= set(presets)
    semabs = presets["semabs"]
    assert semabs.tile_fractions == (1, Fraction(2, 3), Fraction(1, 2), Fraction(1, 4))
    assert (semabs.flip, semabs.jitter_copies, semabs.scale) == (True, 5, 50.0)
    assert presets["semabs_reference"] == dataclasses.replace(semabs, compat_reference_tiling=True,
                                                              accumulate_dtype="float16", count_epsilon=1e-5)
    over = RelevancyConfig.from_preset("fast", output_stride=2, prompt_template="a {} here")
    assert over.output_stride == 2 and over.prompt_template == "a {} here"
    with pytest.raises(KeyError, match="available"):
        RelevancyConfig.from_preset("nope")
    bad = tmp_path / "p.yaml"
    bad.write_text("x:\n  tile_sizes: [1]\n")
    with pytest.raises(ValueError, match="unknown fields"):
        load_relevancy_presets(bad)
    bad.write_text("x:\n  base: y\n")
    with pytest.raises(ValueError, match="missing"):
        load_relevancy_presets(bad)
    with pytest.raises(ValueError):
        RelevancyConfig(accumulate_dtype="int8")


def test_autocast_bfloat16_close(tiny_clip, front_image):
    """bfloat16 autocast (CPU) keeps the maps close to float32 (correlation), it is not a no-op."""
    ref = RelevancyExtractor(tiny_clip, RelevancyConfig())(front_image, LABELS)
    bf = RelevancyExtractor(tiny_clip, RelevancyConfig(autocast="bfloat16"))(front_image, LABELS)
    assert not np.array_equal(bf, ref)
    assert np.corrcoef(bf.ravel(), ref.ravel())[0, 1] > 0.95


def test_tile_origins_cover_the_image():
    assert tile_origins(1600, 900, 225) == [0, 225, 450, 675, 700]
    assert tile_origins(900, 900, 225) == [0]
    with pytest.raises(ValueError):
        tile_origins(100, 200, 50)
    assert reference_tile_windows(900, 1600, 900, 225) == [(0, 0), (0, 225), (0, 450), (0, 675)]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (the CI machine has none; run on a GPU machine)")


@needs_cuda
@pytest.mark.parametrize("name", ["semabs", "fast"])
def test_cuda_preset_equals_naive_cpu(tiny_clip, front_full, name):
    """The CUDA path (float32, batch size from free memory) equals the naive CPU loop on the same weights."""
    from occ_audit_ros.clip_model import load_clip

    cuda_clip = load_clip("random-tiny", device="cuda", seed=0)
    cfg = dataclasses.replace(PRESETS[name], output_stride=1, batch_size=0)
    image = np.asarray(front_full.resize((48, 48) if name == "semabs" else (200, 112), Image.BILINEAR))
    fast = RelevancyExtractor(cuda_clip, cfg)(image, LABELS[:2])
    ref = naive_relevancy(tiny_clip, image, LABELS[:2], cfg)
    scale = np.abs(ref).max()
    assert scale > 1e-4
    # TF32 matmuls are off by default in PyTorch, so float32 on CUDA differs from the CPU by rounding only.
    np.testing.assert_allclose(fast, ref, rtol=1e-3, atol=1e-3 * scale)


@needs_cuda
def test_cuda_autocast_bfloat16_close(front_image):
    """bfloat16 autocast on CUDA keeps the maps close to float32 on CUDA and is not a no-op."""
    from occ_audit_ros.clip_model import load_clip

    cuda_clip = load_clip("random-tiny", device="cuda", seed=0)
    ref = RelevancyExtractor(cuda_clip, RelevancyConfig())(front_image, LABELS)
    bf = RelevancyExtractor(cuda_clip, RelevancyConfig(autocast="bfloat16"))(front_image, LABELS)
    assert not np.array_equal(bf, ref)
    assert np.corrcoef(bf.ravel(), ref.ravel())[0, 1] > 0.95
