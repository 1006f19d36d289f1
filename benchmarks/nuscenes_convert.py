"""Converter speed and bag size on a simulated nuScenes scene with sweeps (not a test).

Generates one driving scene (``training.sim.driving``, sweeps at 12 Hz cameras / 20 Hz LiDAR) of
``--seconds`` seconds, then converts it with ``nuscenes_to_bag --sweeps`` three ways: compressed
(JPEG passthrough), raw rgb8, and compressed + depth. Prints seconds per scene, bag size and the
raw / compressed ratios. Then the node part: the compressed + depth bag replayed at ``--rate`` (1 =
real time) through the perception node (``occ_audit_demo --bag``, CLIP ``--clip-model``, default the
tiny random model; ``random`` = ViT-B/32 layout with random weights), printing frames processed per
second and the processed / received ratio. Timings depend on the machine and on what else runs on
it: compare the ratios of one run, not absolute figures across runs.

    python benchmarks/nuscenes_convert.py [--seconds 20] [--image-scale 0.25] [--keep DIR]
        [--clip-model random-tiny|random] [--rate 1] [--cameras CAM_FRONT,...] [--no-node]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from occ_audit_ros import paths


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="scene length (nuScenes: ~20 s)")
    ap.add_argument("--image-scale", type=float, default=0.25, help="of nuScenes' 1600 x 900 images")
    ap.add_argument("--keep", type=Path, default=None, help="keep the dataset and bags here")
    ap.add_argument("--clip-model", default="random-tiny", help="node part: CLIP (random-tiny, random, DIR)")
    ap.add_argument("--rate", type=float, default=1.0, help="node part: replay rate (1 = real time)")
    ap.add_argument("--cameras", default=None, help="node part: comma-separated cameras (default all six)")
    ap.add_argument("--no-node", action="store_true", help="skip the node part")
    args = ap.parse_args(argv)

    from training.sim import generate
    from training.sim.shards import load_config, merge

    from occ_audit_ros.tools import nuscenes_to_bag

    root = args.keep or Path(tempfile.mkdtemp(prefix="nuscenes_convert_"))
    root.mkdir(parents=True, exist_ok=True)
    samples = max(2, int(round(args.seconds * 2)) + 1)
    cfg = merge(load_config(paths.resource("training/config/sim_driving.yaml")),
                {"samples_per_scene": samples, "image_scale": args.image_scale, "sweeps": {"enabled": True},
                 "occ3d": {"dims": [50, 50, 16]}})
    (root / "cfg.yaml").write_text(yaml.safe_dump(dict(cfg)))
    data = root / "data"
    t = time.perf_counter()
    generate.main(["driving", "--out", str(data), "--scenes", "1", "--seed", "0", "--config",
                   str(root / "cfg.yaml"), "--no-progress"])
    gen_s = time.perf_counter() - t
    print(f"simulated scene: {samples} samples ({(samples - 1) / 2:.1f} s) with sweeps, "
          f"{_size(data) / 1e6:.1f} MB of files, generated in {gen_s:.1f} s")
    results = {}
    for name, extra in (("compressed", []), ("raw", ["--image-format", "raw"]),
                        ("compressed+depth", ["--depth"])):
        out = root / f"bag_{name.replace('+', '_')}"
        t = time.perf_counter()
        rc = nuscenes_to_bag.main(["--dataroot", str(data), "--all", "--sweeps", "--output", str(out),
                                   "--overwrite", "--no-progress", *extra])
        if rc:
            return rc
        results[name] = (time.perf_counter() - t, _size(out))
    print("\nconverter (one scene, --sweeps; machine shared, compare ratios):")
    for name, (sec, size) in results.items():
        print(f"  {name:<18} {sec:6.1f} s   {size / 1e6:8.1f} MB")
    c, r = results["compressed"], results["raw"]
    print(f"  raw / compressed: {r[1] / c[1]:.1f}x size, {r[0] / c[0]:.1f}x time")
    if not args.no_node:
        from occ_audit_ros.tools import demo

        bag = next(p for p in (root / "bag_compressed_depth").iterdir() if (p / "metadata.yaml").is_file())
        argv = ["--clip-model", args.clip_model, "--output", str(root / "demo"), "--bag", str(bag),
                "--rate", str(args.rate)] + (["--cameras", args.cameras] if args.cameras else [])
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = demo.main(argv)
        text = buf.getvalue()
        frames = re.search(r"frames: (\d+) camera images received in (\d+) synchronised sets \((\d+) without some "
                           r"camera\); (\d+) processed, (\d+) dropped", text)
        played = re.search(r"messages replayed in ([\d.]+) s", text)
        if rc or not frames or not played:
            print(text)
            return rc or 1
        images, sets, partial, processed, dropped = map(int, frames.groups())
        wall = float(played.group(1))
        latency = next((line for line in text.splitlines() if line.startswith("latency per stage")), "")
        print(f"\nnode (clip_model={args.clip_model}, rate {args.rate:g}, cameras {args.cameras or 'all six'}; "
              "machine shared, compare ratios):")
        print(f"  {images} camera images in {sets} sets ({partial} partial) over {wall:.1f} s of replay")
        print(f"  {processed} processed, {dropped} dropped: {processed / wall:.2f} frames/s, "
              f"{sets / wall:.2f} sets/s offered; processed / received sets {processed / max(sets, 1):.2f}")
        print(f"  {latency}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
