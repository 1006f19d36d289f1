"""Latency of the ROS-free perception pipeline on the real nuScenes keyframe (6 cameras).

Prints per-stage seconds (mean and standard deviation over --repeats runs after one warm-up), the
number of CLIP crops, and the peak resident memory. Model loading is excluded. CLIP weights are
the ViT-B/32 layout with random values by default: the cost is that of the real model.

    .venv/bin/python benchmarks/pipeline_latency.py [--clip-model random] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from occ_audit_ros import paths
from occ_audit_ros.clip_model import load_clip
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera, load_keyframe
from occ_audit_ros.nodes.backend_params import pipeline_config
from occ_audit_ros.pipeline import CameraInput, PerceptionPipeline
from occ_audit_ros.relevancy import tile_origins


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="random")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    keyframe = load_keyframe(paths.nuscenes_keyframe_dir(), paths.nuscenes_annotations_pkl())
    cameras = [CameraInput(ch, cam.image, cam.K, cam.T_base_cam, lidar_depth_for_camera(keyframe, ch),
                           cam.timestamp_us * 1000) for ch, cam in keyframe.cameras.items()]
    t0 = time.perf_counter()
    clip = load_clip(args.clip_model, device=args.device)
    load_s = time.perf_counter() - t0
    config = pipeline_config({})  # the perception node's parameter defaults
    pipeline = PerceptionPipeline(clip, config)
    rel = config.relevancy
    crops = 0
    for cam in cameras:
        h, w = cam.image.shape[:2]
        for frac in rel.tile_fractions:
            tile = int(round(frac * min(h, w)))
            stride = int(round(tile * rel.stride_fraction))
            crops += len(tile_origins(h, tile, stride)) * len(tile_origins(w, tile, stride)) * (2 if rel.flip else 1)

    pipeline.process(cameras)  # warm-up: tokenisation, text embeddings, allocator
    runs = [pipeline.process(cameras).timings_s for _ in range(args.repeats)]
    print(f"CLIP {clip.name} on {clip.device} (load {load_s:.1f} s, random weights: {clip.random_weights}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(cameras)} cameras, {len(config.labels)} labels, {crops} CLIP crops per keyframe, "
          f"tiles {rel.tile_fractions} of the short side, output stride {rel.output_stride}")
    for stage in ("relevancy", "backproject", "fuse", "total"):
        values = [r[stage] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {stage:<12} {statistics.mean(values):8.3f} s  ± {sd:.3f}")
    total = statistics.mean(r["total"] for r in runs)
    print(f"  per crop (all labels)  {1000 * statistics.mean(r['relevancy'] for r in runs) / crops:.1f} ms")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")
    print(f"RESULT keyframe_s_{clip.device.type}={total:.3f} peak_rss_mib={peak_mib:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
