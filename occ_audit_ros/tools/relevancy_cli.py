"""Relevancy overlay pictures (PNG) of an image for a label set, with a named relevancy preset.

Writes ``<out>/relevancy.png`` (one panel per label, shared colour scale) and
``<out>/<index>_<label>.png`` (one picture per label), and optionally the maps as ``relevancy.npy``
((K, H', W') float32, written atomically). Semantic Abstraction's relevancy (Ha & Song, CoRL 2022,
Sec. 3.1); see ``docs/relevancy.md``.

    python -m occ_audit_ros.tools.relevancy_cli IMAGE --labels car road pedestrian \\
        [--preset fast|semabs|semabs_reference] [--presets-file YAML] [--prompt "a photo of a {}."] \\
        [--clip-model random|DIR|HUB_ID] [--device auto] [--out output/relevancy] [--npy]

Without IMAGE, the embedded nuScenes CAM_FRONT image is used. Exit status 2 on bad input (message on
stderr), 3 when CLIP weights cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from occ_audit_ros.atomic import atomic_path


def build_arg_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="occ_audit_relevancy", description=__doc__.splitlines()[0])
    p.add_argument("image", nargs="?", type=Path, help="image file (PNG/JPEG, 8/16-bit, gray/RGB/RGBA); "
                   "default: the embedded nuScenes CAM_FRONT image")
    p.add_argument("--labels", nargs="+", required=True, help="labels queried jointly (mean-subtracted over the set)")
    p.add_argument("--preset", default="fast", help="relevancy preset name (config/relevancy_presets.yaml)")
    p.add_argument("--presets-file", type=Path, default=None, help="other presets YAML file")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt template with '{}' (repeat for several; default: the preset's)")
    p.add_argument("--output-stride", type=int, default=None, help="override the preset's output stride")
    p.add_argument("--clip-model", default="random",
                   help="CLIP directory or hub id; 'random' = ViT-B/32 layout with random weights (meaningless maps)")
    p.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda)")
    p.add_argument("--out", type=Path, default=Path("output/relevancy"), help="output directory")
    p.add_argument("--npy", action="store_true", help="also write the maps as relevancy.npy")
    return p


def read_image(path: Path) -> np.ndarray:
    """Pixels of an image file as a numpy array (layout and dtype as stored; 16-bit kept).

    Raises:
        ValueError: when the file is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "LA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            arr = np.asarray(im)
    except (FileNotFoundError, IsADirectoryError, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    if arr.dtype == np.int32 or arr.dtype == np.int16:  # PIL 'I' / 'I;16' modes
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return arr


def _check_files(args: argparse.Namespace) -> None:
    """Check the file options before any model is loaded: ``--presets-file`` an existing, readable
    YAML file (the YAML error's line named), ``--out`` not an existing non-directory.

    Raises:
        ValueError: in one line naming the option and the file.
    """
    import yaml

    if args.presets_file is not None:
        if not args.presets_file.is_file():
            raise ValueError(f"--presets-file {args.presets_file}: no such file")
        try:
            yaml.safe_load(args.presets_file.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"--presets-file {args.presets_file}: not valid YAML{at}: "
                             f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--presets-file {args.presets_file}: cannot read: {err}") from None
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a directory")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "label"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from occ_audit_ros import paths
    from occ_audit_ros.clip_model import ClipWeightsUnavailable, load_clip
    from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor, as_rgb_uint8
    from occ_audit_ros.viz import save_relevancy_overlay_png

    try:
        labels = [str(label) for label in args.labels]
        if not labels or any(not label.strip() for label in labels):
            raise ValueError(f"labels must be non-empty strings, got {labels!r}")
        _check_files(args)
        overrides = {}
        if args.prompt:
            overrides["prompt_template"] = tuple(args.prompt) if len(args.prompt) > 1 else args.prompt[0]
        if args.output_stride is not None:
            overrides["output_stride"] = args.output_stride
        try:
            config = RelevancyConfig.from_preset(args.preset, args.presets_file, **overrides)
        except KeyError as err:
            raise ValueError(err.args[0]) from err
        if args.image is None:
            args.image = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
        raw = read_image(args.image)
        rgb = as_rgb_uint8(raw)
        from occ_audit_ros.devices import resolve_device

        try:
            resolve_device(args.device)
        except RuntimeError as err:
            raise ValueError(f"--device {args.device!r}: {str(err).splitlines()[0]}") from None
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        clip = load_clip(args.clip_model, device=args.device)
    except ClipWeightsUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    extractor = RelevancyExtractor(clip, config)
    t0 = time.perf_counter()
    try:
        maps = extractor(raw, labels)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.image.name}: preset {args.preset}, {clip.name}"
    written = [save_relevancy_overlay_png(rgb, maps, labels, args.out / "relevancy.png", clip.random_weights,
                                          title=title)]
    for i, label in enumerate(labels):
        written.append(save_relevancy_overlay_png(rgb, maps[i:i + 1], [label], args.out / f"{i:02d}_{_slug(label)}.png",
                                                  clip.random_weights, title=title, ncols=1))
    if args.npy:
        with atomic_path(args.out / "relevancy.npy", suffix=".npy") as tmp:
            np.save(tmp, maps)
        written.append(args.out / "relevancy.npy")
    print(f"{len(labels)} labels, maps {maps.shape[1]}x{maps.shape[2]}, {seconds:.2f} s; wrote:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
