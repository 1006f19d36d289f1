"""Relevancy extractor cost on the real 1600 x 900 nuScenes CAM_FRONT image (ViT-B/32 layout).

Prints, from one run: seconds per image per label of the naive sliding-window Chefer relevancy (per
crop, per label, plain autograd through the whole image tower) and of the batched extractor with the
`semabs` preset, their ratio, the cost per crop of the last-block kernel for K = 1, 10, 20 labels
relative to one plain CLIP image forward, peak memory, and the `fast` preset's seconds per image for
10 labels. Model loading is excluded. The naive side is timed on a subset of windows (all of their
flips) and extrapolated to the preset's crop count, since a full naive run takes hours on a CPU;
the output says so. CLIP weights are random in the real ViT-B/32 layout by default (same cost).

    .venv/bin/python benchmarks/relevancy.py [--clip-model random] [--device auto] [--labels 10]
        [--naive-windows 8] [--autocast none|bfloat16|float16]

Last line: RESULT speedup_vs_naive=<x> multilabel20_vs_forward=<y> fast_s_per_image_10labels=<z>
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from occ_audit_ros import paths
from occ_audit_ros.clip_model import load_clip
from occ_audit_ros.params import DRIVING_LABELS
from occ_audit_ros.relevancy import PRESETS, RelevancyExtractor, augmented_images, scale_tiles

LABELS_20 = DRIVING_LABELS + ["sky", "tree", "person", "traffic light", "pole", "motorcycle", "trailer", "wall",
                              "fence"]


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 1) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def naive_window_label(clip, crop: torch.Tensor, text: torch.Tensor, flip: bool, tile: int,
                       acc: torch.Tensor, y: int, x: int) -> None:
    """Naive relevancy of one window for one label: whole-model autograd per crop (and its mirror),
    batch 1, upsampled and accumulated like the extractor."""
    from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN, device=crop.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=crop.device).view(1, 3, 1, 1)
    maps = []
    for c in ([crop, torch.flip(crop, dims=[-1])] if flip else [crop]):
        px = F.interpolate(c[None], size=(clip.image_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        px = ((px.clamp(0, 1) - mean) / std).requires_grad_(True)
        with torch.enable_grad():
            out = clip.model.vision_model(pixel_values=px, output_attentions=True)
            attn = out.attentions[-1]
            img = clip.model.visual_projection(out.pooler_output)
            logit = 100.0 * (F.normalize(img, dim=-1)[0] * text).sum()
            (grad,) = torch.autograd.grad(logit, attn)
        cam = (grad * attn).clamp(min=0).mean(dim=1)[0]
        maps.append((torch.eye(cam.shape[0], device=cam.device) + cam)[0, 1:].reshape(clip.grid_size, clip.grid_size))
    rel = maps[0] if not flip else 0.5 * (maps[0] + torch.flip(maps[1], dims=[-1]))
    up = F.interpolate(rel[None, None].detach(), size=(tile, tile), mode="bilinear", align_corners=False)[0, 0]
    acc[y:y + tile, x:x + tile] += up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="random")
    p.add_argument("--device", default="auto")
    p.add_argument("--labels", type=int, default=10, help="labels of the semabs and fast runs (<= 20)")
    p.add_argument("--naive-windows", type=int, default=8, help="windows timed on the naive side (x2 labels)")
    p.add_argument("--copies-timed", type=int, default=0,
                   help="time the batched semabs run with only this many of its 6 image copies and scale the "
                        "time by 6 / N (said in the output); 0 = all copies (a full run)")
    p.add_argument("--autocast", default="none", choices=["none", "bfloat16", "float16"],
                   help="autocast of the batched runs (the naive side stays float32)")
    args = p.parse_args(argv)
    if not 1 <= args.labels <= len(LABELS_20):
        p.error(f"--labels must be in [1, {len(LABELS_20)}]")

    path = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[:2]
    clip = load_clip(args.clip_model, device=args.device)
    device = clip.device
    labels = LABELS_20[:args.labels]
    print(f"image {path.name} {width}x{height}; CLIP {clip.name} on {device} (random weights: {clip.random_weights}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; autocast {args.autocast}; {load()}")

    semabs = dataclasses.replace(PRESETS["semabs"], autocast=args.autocast)
    fast_cfg = dataclasses.replace(PRESETS["fast"], autocast=args.autocast)
    scales = scale_tiles(height, width, semabs)
    copies = 1 + semabs.jitter_copies
    flips = 2 if semabs.flip else 1
    windows = sum(len(w) for _, _, w in scales)
    crops = windows * copies * flips
    ref_windows = sum(len(w) for _, _, w in scale_tiles(height, width, PRESETS["semabs_reference"]))
    print(f"semabs: tiles {[t for t, _, _ in scales]} px, strides {[s for _, s, _ in scales]} px, {windows} windows x "
          f"{copies} images x {flips} flips = {crops} CLIP crops (reference tiling: {ref_windows * copies * flips})")

    # --- multi-label cost per crop relative to one plain CLIP image forward (batch 32 windows, no flip)
    ex = RelevancyExtractor(clip, dataclasses.replace(semabs, flip=False))
    tile = scales[-1][0]
    img_t = torch.from_numpy(image.copy()).to(device).permute(2, 0, 1).float() / 255.0
    batch = torch.stack([img_t[:, y:y + tile, x:x + tile] for y, x in scales[-1][2][:32]])
    px = ex.preprocess(batch)
    with torch.inference_mode(), ex._autocast():
        fwd_s, _ = timed(lambda: clip.model.get_image_features(pixel_values=px), device, repeats=3)
    per_crop_fwd = fwd_s / len(px)
    kernel = {}
    for k in (1, 10, 20):
        text = ex.text_embeddings(LABELS_20[:k])
        s, _ = timed(lambda: ex.crop_relevancy(px, text), device, repeats=3)
        kernel[k] = s / len(px)
    print(f"plain CLIP image forward: {1000 * per_crop_fwd:.1f} ms per crop (batch {len(px)}, {load()})")
    for k, s in kernel.items():
        print(f"  relevancy kernel K={k:>2}: {1000 * s:.1f} ms per crop = {s / per_crop_fwd:.2f} x forward")

    # --- naive: per window, per label, whole-model autograd; timed on a subset and extrapolated
    naive_ex = RelevancyExtractor(clip, dataclasses.replace(semabs, autocast="none"))
    naive_labels = labels[:2]
    texts = naive_ex.text_embeddings(naive_labels)  # text once per label (excluded: favours the naive side)
    images = augmented_images(img_t, semabs)
    all_items = [(tile_, y, x) for tile_, _, wins in scales for y, x in wins]
    pick = np.linspace(0, len(all_items) - 1, args.naive_windows).round().astype(int)  # spread over scales
    acc = torch.zeros(height, width, device=device)

    def run_naive() -> None:
        for i in pick:
            tile_, y, x = all_items[i]
            for text in texts:
                naive_window_label(clip, images[int(i) % copies][:, y:y + tile_, x:x + tile_], text, semabs.flip,
                                   tile_, acc, y, x)

    naive_s, _ = timed(run_naive, device)
    naive_per_window_label = naive_s / (len(pick) * len(naive_labels))
    naive_per_label = naive_per_window_label * windows * copies
    print(f"naive (whole-model autograd per crop and label, batch 1): {1000 * naive_per_window_label:.0f} ms per "
          f"window and label ({flips} crops), timed on {len(pick)} windows x {len(naive_labels)} labels and "
          f"EXTRAPOLATED to {windows * copies} windows: {naive_per_label:.0f} s per image per label ({load()})")

    # --- fast preset
    fast = RelevancyExtractor(clip, fast_cfg)
    labels10 = LABELS_20[:10]
    fast(image, labels10)  # warm-up
    fast_s, _ = timed(lambda: fast(image, labels10), device, repeats=3)
    fast_scales = scale_tiles(height, width, fast_cfg)
    fast_crops = sum(len(w) for _, _, w in fast_scales) * (2 if fast_cfg.flip else 1) * (1 + fast_cfg.jitter_copies)
    print(f"fast preset, 10 labels: {fast_s:.2f} s per image ({fast_crops} CLIP crops, "
          f"output stride {fast_cfg.output_stride}; {load()})")

    # --- batched semabs, full image
    ex = RelevancyExtractor(clip, semabs)
    ex.text_embeddings(labels)
    kernel_time = [0.0]
    inner = ex.window_relevancy

    def counted(crops_, text_):
        sync(device)
        t0 = time.perf_counter()
        out = inner(crops_, text_)
        sync(device)
        kernel_time[0] += time.perf_counter() - t0
        return out

    ex.window_relevancy = counted
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed_copies = args.copies_timed if 0 < args.copies_timed < copies else copies
    ex.config = dataclasses.replace(semabs, jitter_copies=timed_copies - 1)
    batched_s, maps = timed(lambda: ex(image, labels), device)
    if timed_copies < copies:
        print(f"batched semabs timed with {timed_copies} of {copies} image copies ({windows * timed_copies * flips} "
              f"crops, {batched_s:.1f} s) and EXTRAPOLATED x {copies / timed_copies:.0f} (upsampling/accumulation is "
              f"done once per window in float32, so this overstates the batched time)")
        batched_s *= copies / timed_copies
        kernel_time[0] *= copies / timed_copies
    batched_per_label = batched_s / len(labels)
    print(f"batched semabs, {len(labels)} labels: {batched_s:.1f} s per image = {batched_per_label:.2f} s per image per "
          f"label; crop resize + CLIP passes {kernel_time[0]:.1f} s ({100 * kernel_time[0] / batched_s:.0f} %), jitter/"
          f"upsampling/accumulation the rest; maps {tuple(maps.shape)} ({load()})")
    speedup = naive_per_label / batched_per_label
    print(f"speedup vs naive at K={len(labels)}: {speedup:.1f} x (naive extrapolated); at K=20 the batched cost per "
          f"crop grows by {kernel[20] / kernel[10]:.2f} x while the naive one doubles")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = f", GPU peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else ""
    print(f"peak resident memory {peak:.0f} MiB{gpu}")
    print(f"RESULT speedup_vs_naive={speedup:.1f} multilabel20_vs_forward={kernel[20] / per_crop_fwd:.2f} "
          f"fast_s_per_image_10labels={fast_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
