"""SemAbs on the simulator: trained OVSSC / VOOL vs their baselines, voxel IoU at 32^3 per split.

Protocol (SemAbs Sec. 4, design notes Sec. 6): binary IoU per (view, label) for OVSSC or (view,
description) for VOOL after max-pooling query predictions into 32^3 cells (queries outside the camera
frustum ignored); one cutoff per method chosen on the validation split (network: the reference sweep of
logits [-2.5, -0.1]; baselines: 40 quantiles of their scores), then applied unchanged to every test
split. Aggregation here: plain mean over items (the paper averages per room / per label first).
Baselines: OVSSC - the relevancy cloud thresholded; VOOL - the reference cloud shifted 0.3 m along
the relation direction. The relevancy is SIMULATED (occ_audit_ros.sim.relevancy_sim), not CLIP.

Usage:
    python benchmarks/semabs_sim.py --config config/semabs_sim_cpu.yaml --checkpoints runs/a/last.safetensors [...]
Several checkpoints (seeds) give mean +- std. Last line: ``RESULT k=v ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occ_audit_ros.devices import resolve_device  # noqa: E402
from occ_audit_ros.semabs.baselines import relevancy_cloud_scores, shifted_reference_scores  # noqa: E402
from occ_audit_ros.semabs.batching import num_queried_labels  # noqa: E402
from occ_audit_ros.semabs.checkpoint import load_checkpoint  # noqa: E402
from occ_audit_ros.semabs.metrics import REFERENCE_CUTOFFS, choose_cutoff, iou_table  # noqa: E402
from training.train_semabs import SceneSet, load_config, predict_items  # noqa: E402


def baseline_items(task: str, scene: dict, shift: float) -> list[tuple]:
    """Baseline scores per item: ``(name, queries, scores, target)``."""
    from occ_audit_ros.semabs.model import SemAbsConfig

    ws = SemAbsConfig().workspace
    v = scene["valid"]
    q = scene["queries"][v]
    items = []
    if task == "ovssc":
        n = num_queried_labels(scene)
        for k, lab in enumerate(scene["labels"][:n]):
            items.append((lab, q, relevancy_cloud_scores(scene["xyz"], scene["relevancy"][k], q, ws),
                          scene["occupancy"][k][v]))
    else:
        for d, (ti, relation, ri) in enumerate(scene["descriptions"]):
            items.append((relation, q, shifted_reference_scores(scene["xyz"], scene["relevancy"][ri], relation,
                                                                scene["T_ws_cam"], q, ws, shift),
                          scene["vool_occupancy"][d][v]))
    return items


def score(items: list[tuple], cutoffs) -> tuple[np.ndarray, list[str]]:
    from occ_audit_ros.semabs.model import SemAbsConfig

    names = [i[0] for i in items]
    table = iou_table([i[1] for i in items], [i[2] for i in items], [i[3] for i in items], SemAbsConfig().workspace,
                      cutoffs, 32)
    return table, names


def summarise(table, names, col) -> dict:
    vals = table[:, col]
    per = {}
    for n in sorted(set(names)):
        x = vals[[j for j, m in enumerate(names) if m == n]]
        per[n] = float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")
    return {"mean": float(np.nanmean(vals)), "per_name": per}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--shift", type=float, default=0.3)
    ap.add_argument("--wide", action="store_true",
                    help="sweep network logit cutoffs over [-10, 6] step 0.25 instead of the reference [-2.5, -0.1]")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key.sub=value")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    device = resolve_device(args.device)
    splits = ["val"] + list(cfg["eval"].get("test_splits", []))
    sets = {s: SceneSet(cfg, s) for s in splits}
    cutoffs = np.round(np.arange(-10.0, 6.01, 0.25), 6) if args.wide else REFERENCE_CUTOFFS
    task = None
    results = {"network": [], "baseline": None}
    # baseline (deterministic): cutoffs from quantiles of its validation scores
    for ck in args.checkpoints:
        model, task, _, _, _ = load_checkpoint(ck)
        model.to(device)
        rng = np.random.default_rng([cfg["seed"], 7])
        per_split = {}
        val_items = [it for i in range(len(sets["val"])) for it in predict_items(model, task, sets["val"][i],
                                                                                  cfg["eval"]["num_input_points"], rng)]
        table, names = score(val_items, cutoffs)
        cut, _ = choose_cutoff(table, cutoffs)
        col = int(np.argmin(np.abs(cutoffs - cut)))
        per_split["val"] = summarise(table, names, col) | {"cutoff": cut}
        for s in splits[1:]:
            items = [it for i in range(len(sets[s])) for it in predict_items(model, task, sets[s][i],
                                                                              cfg["eval"]["num_input_points"], rng)]
            t, n = score(items, [cut])
            per_split[s] = summarise(t, n, 0)
        results["network"].append(per_split)
    base_val = [it for i in range(len(sets["val"])) for it in baseline_items(task, sets["val"][i], args.shift)]
    finite = np.concatenate([it[2][np.isfinite(it[2])] for it in base_val])
    bcuts = np.unique(np.quantile(finite, np.linspace(0.0, 0.995, 40)))
    table, names = score(base_val, bcuts)
    bcut, _ = choose_cutoff(table, bcuts)
    col = int(np.argmin(np.abs(bcuts - bcut)))
    results["baseline"] = {"val": summarise(table, names, col) | {"cutoff": float(bcut)}}
    for s in splits[1:]:
        items = [it for i in range(len(sets[s])) for it in baseline_items(task, sets[s][i], args.shift)]
        t, n = score(items, [bcut])
        results["baseline"][s] = summarise(t, n, 0)
    # table
    print(f"task={task} checkpoints={len(args.checkpoints)} (IoU %, 32^3, cutoff chosen on val; network cutoffs "
          f"{cutoffs[0]}..{cutoffs[-1]}, chosen {[r['val']['cutoff'] for r in results['network']]}; "
          f"baseline cutoff {results['baseline']['val']['cutoff']:.3f})")
    print(f"{'split':<15}{'network mean±std':>20}{'baseline':>10}{'ratio':>8}")
    out = {}
    for s in splits:
        vals = np.array([r[s]["mean"] for r in results["network"]]) * 100
        b = results["baseline"][s]["mean"] * 100
        print(f"{s:<15}{vals.mean():>12.1f} ± {vals.std():<5.1f}{b:>10.1f}{vals.mean() / max(b, 1e-9):>8.2f}")
        out[f"{s}_net"] = round(float(vals.mean()), 2)
        out[f"{s}_base"] = round(float(b), 2)
    if task == "vool":
        rels = sorted(results["baseline"][splits[-1]]["per_name"])
        for s in splits:
            print(f"per relation ({s}): network mean ± std over checkpoints, baseline")
            for rel in rels:
                vals = np.array([r[s]["per_name"].get(rel, np.nan) for r in results["network"]]) * 100
                b = results["baseline"][s]["per_name"].get(rel, np.nan) * 100
                print(f"  {rel:<18}{np.nanmean(vals):>8.1f} ± {np.nanstd(vals):<5.1f}{b:>8.1f}")
                key = rel.replace(" ", "_")
                out[f"{s}_{key}_net"] = round(float(np.nanmean(vals)), 2)
                out[f"{s}_{key}_base"] = round(float(b), 2)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("RESULT task=" + str(task) + " " + " ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
