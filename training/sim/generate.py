"""Dataset CLI of the procedural scene simulator (research tool; simulated data, exact GT).

Usage::

    python -m training.sim.generate indoor  --out DIR --scenes N [--seed S] [--config YAML]
    python -m training.sim.generate driving --out DIR --scenes N [--seed S] [--config YAML]
        [--shard i/n]

* ``indoor`` writes ``DIR/indoor_00000.npz`` ... (``scenes_per_shard`` scenes each, keys
  ``"<scene index:06d>/<array>"``, see :mod:`.indoor`; read with :func:`.shards.read_shard`).
* ``driving`` writes a nuScenes table-format dataset (``DIR/<version>/*.json``, ``DIR/samples``,
  ``DIR/sweeps``, ``DIR/occ3d/<scene>/<sample token>/labels.npz``), see :mod:`.driving` and
  :mod:`.nuscenes_writer`; a scene is one 2 Hz sequence.

Every scene depends only on ``(seed, scene index)``, so datasets are reproducible byte for byte and
independent of sharding. Files are written atomically (temp + ``os.replace``); a rerun skips
complete shards / sequences (resumable). ``DIR/dataset.json`` records the config; a rerun with a
different config or seed into the same folder is refused. Several processes split the work by
``--shard i/n`` or, under ``torchrun``, by the ``RANK`` / ``WORLD_SIZE`` environment variables
(process ``i`` of ``n`` takes shards ``i, i + n, ...``); the driving tables are merged by whichever
process finds all sequences done.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from occ_audit_ros import paths
from training.sim.shards import check_dataset_record, load_config, scene_rng, write_npz

__all__ = ["main", "generate_indoor", "parse_shard"]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); None -> torchrun's (RANK, WORLD_SIZE) or (0, 1).

    Raises:
        ValueError: malformed text or i outside [0, n).
    """
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def generate_indoor(cfg: dict, out, scenes: int, seed: int, shard=(0, 1),
                    progress: bool = True) -> dict:
    """Generate indoor shards (see the module docstring).

    Args:
        cfg: indoor config. out: output folder. scenes: number of scenes. seed: dataset seed.
        shard: (process index, process count). progress: show a tqdm bar.

    Returns:
        ``{"written": n, "skipped": n, "bytes": n, "seconds": s}`` for this process.
    """
    from training.sim.indoor import generate_indoor_scene
    from training.sim.vocabulary import Vocabulary

    out = Path(out)
    vocab = Vocabulary.from_config(cfg)
    per = int(cfg["scenes_per_shard"])
    if per < 1:
        raise ValueError("scenes_per_shard must be >= 1")
    num_shards = -(-scenes // per)
    check_dataset_record(out, {"kind": "indoor", "seed": seed, "scenes": scenes, "config": cfg})
    mine = [s for s in range(num_shards) if s % shard[1] == shard[0]]
    stats = {"written": 0, "skipped": 0, "bytes": 0, "seconds": 0.0}
    start = time.perf_counter()
    bar = tqdm(total=sum(min(per, scenes - s * per) for s in mine), unit="scene",
               desc=f"indoor {shard[0]}/{shard[1]}", disable=not progress)
    for s in mine:
        path = out / f"indoor_{s:05d}.npz"
        count = min(per, scenes - s * per)
        if path.is_file():
            stats["skipped"] += 1
            bar.update(count)
            continue
        arrays = {}
        for idx in range(s * per, s * per + count):
            scene = generate_indoor_scene(cfg, vocab, scene_rng(seed, idx))
            arrays.update({f"{idx:06d}/{k}": v for k, v in scene.items()})
            bar.update(1)
        stats["bytes"] += write_npz(path, arrays)
        stats["written"] += 1
    bar.close()
    stats["seconds"] = time.perf_counter() - start
    return stats


def main(argv=None) -> int:
    """Command-line entry point.

    Returns:
        0 on success, 1 on a config / data / output error (message on stderr), 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.sim.generate",
        description="Generate simulated datasets with exact ground truth (research tool).")
    parser.add_argument("kind", choices=("indoor", "driving"))
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--scenes", type=int, required=True, help="scenes (driving: sequences)")
    parser.add_argument("--seed", type=int, default=None, help="dataset seed (default: config)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML overrides merged over training/config/sim_<kind>.yaml")
    parser.add_argument("--shard", default=None, help="process i of n as i/n (default: torchrun "
                        "RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.scenes < 1:
            raise ValueError("--scenes must be >= 1")
        shard = parse_shard(args.shard)
        # The packaged YAML holds every key; a user config only needs the keys it changes.
        cfg = load_config(paths.resource(f"training/config/sim_{args.kind}.yaml"))
        if args.config is not None:
            cfg = load_config(args.config, defaults=cfg)
        seed = int(cfg.get("seed", 0) if args.seed is None else args.seed)
        cfg["seed"] = seed
        if args.kind == "indoor":
            stats = generate_indoor(cfg, args.out, args.scenes, seed, shard,
                                    progress=not args.no_progress)
        else:
            from training.sim.driving import generate_driving

            stats = generate_driving(cfg, args.out, args.scenes, seed, shard,
                                     progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as exc:
        print(f"{parser.prog}: error: bad config value or type: {exc!r}", file=sys.stderr)
        return 1
    done = stats["written"]
    unit = "shard(s)" if args.kind == "indoor" else "sequence(s)"
    print(f"{args.kind}: wrote {done} {unit}, skipped {stats['skipped']} complete, "
          f"{stats['bytes'] / 1e6:.2f} MB, {stats['seconds']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
