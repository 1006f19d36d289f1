"""Ship a trained SemAbs checkpoint: weights only + model card, plus a small fixed check split.

The card records data, command, seeds and metrics; ``small_split`` is the mean 32^3 IoU (at the card's
cutoff) on simulator scenes regenerated in-process from (training/config/sim_indoor.yaml, seed, indices), which
``test/test_semabs_shipped.py`` recomputes and compares.

Usage:
    python training/semabs_card.py --checkpoint /tmp/semabs_runs/ovssc/last.safetensors --cutoff 1.3 \
        --out models/semabs/ovssc_sim.safetensors --card-json '{"val_iou": ...}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


from occ_audit_ros.semabs.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from training.semabs.metrics import iou_table  # noqa: E402

SMALL_SPLIT = {"config": "training/config/sim_indoor.yaml", "seed": 1, "indices": [0, 1], "num_input_points": 6000}


def small_split_samples(spec: dict = SMALL_SPLIT) -> list[dict]:
    """SemAbs samples of the fixed check scenes, regenerated with the simulator."""
    from occ_audit_ros import paths
    from training.semabs.sim_data import samples_from_scene
    from training.sim.indoor import generate_indoor_scene
    from training.sim.shards import load_config, scene_rng
    from training.sim.vocabulary import Vocabulary

    cfg = load_config(paths.resource(spec["config"]))
    vocab = Vocabulary.from_config(cfg)
    out = []
    for i in spec["indices"]:
        scene = generate_indoor_scene(cfg, vocab, scene_rng(spec["seed"], i))
        scene["meta"] = json.loads(scene["meta"])
        out.extend(samples_from_scene(scene, np.random.default_rng([spec["seed"], i])))
    return out


def small_split_iou(model, task: str, cutoff: float, samples: list[dict], num_points: int) -> float:
    """Mean IoU (NaN items skipped) at ``cutoff`` over the samples' items."""
    from training.train_semabs import predict_items

    rng = np.random.default_rng(0)
    items = [it for s in samples for it in predict_items(model, task, s, num_points, rng)]
    table = iou_table([i[1] for i in items], [i[2] for i in items], [i[3] for i in items], model.config.workspace,
                      [cutoff], 32)
    return float(np.nanmean(table[:, 0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cutoff", type=float, required=True, help="validation-chosen logit cutoff")
    ap.add_argument("--out", required=True)
    ap.add_argument("--card-json", default="{}", help="extra card fields (JSON)")
    args = ap.parse_args(argv)
    model, task, cfg, state, _ = load_checkpoint(args.checkpoint)
    iou = small_split_iou(model, task, args.cutoff, small_split_samples(), SMALL_SPLIT["num_input_points"])
    card = {"task": task, "cutoff": args.cutoff, "steps": state.get("step"), "train_seed": state.get("seed"),
            "small_split": dict(SMALL_SPLIT, iou=iou)} | json.loads(args.card_json)
    save_checkpoint(args.out, model, task, cfg, card=card)
    print(json.dumps(card, indent=1))
    print(f"RESULT task={task} small_split_iou={iou:.4f} bytes={Path(args.out).stat().st_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
