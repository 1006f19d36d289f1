"""SemAbs on the simulator: trained OVSSC / VOOL vs their baselines, voxel IoU at 32^3 per split.

Protocol (SemAbs Sec. 4; the released code's ``eval.py`` / ``summarize.py``): binary IoU per (view, label) for OVSSC or (view,
description) for VOOL after max-pooling query predictions into 32^3 cells (queries outside the camera
frustum ignored); one cutoff per method chosen on the validation split (network: the reference sweep of
logits [-2.5, -0.1]; baselines: 40 quantiles of their scores), then applied unchanged to every test
split. Aggregation: plain mean over items. OVSSC is also scored under the reference protocol
(``summarize.py`` / dataset code of SemAbs), with its own cutoff chosen on val: items are only the labels
whose object occupies an in-frustum query (the reference also asks that it be visible in the view's
segmentation; on our five splits the two sets are identical, checked against the shards), and the mean is
taken per room first (val, novel scene, novel shape; one view per simulated scene) or per label first
(novel class, novel synonym). VOOL is also scored under the reference protocol at its item-mean cutoff
(``summarize.py::summarize_vool``): per relation, mean per room then over rooms (val, novel scene, novel
shape); novel class keeps descriptions naming a held-out class and novel synonym those naming a synonym,
each a plain mean; the split's value is the mean over relations. Baselines: OVSSC - the relevancy cloud
thresholded; VOOL - the reference cloud shifted 0.3 m along the relation direction. The relevancy is SIMULATED
(training.sim.relevancy_sim), not CLIP.

Usage:
    python training/experiments/semabs_sim.py --config training/config/semabs_sim_cpu.yaml --checkpoints runs/a/last.safetensors [...]
Several checkpoints (seeds) give mean +- std. Last line: ``RESULT k=v ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


from occ_audit_ros.devices import resolve_device  # noqa: E402
from training.semabs.baselines import relevancy_cloud_scores, shifted_reference_scores  # noqa: E402
from training.semabs.batching import num_queried_labels  # noqa: E402
from occ_audit_ros.semabs.checkpoint import load_checkpoint  # noqa: E402
from training.semabs.metrics import (REFERENCE_CUTOFFS, choose_cutoff, iou_table, reference_mean,  # noqa: E402
                                          reference_rows, reference_vool_means, reference_vool_rows)
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


def vocabulary_texts(config: str = "training/config/sim_indoor.yaml") -> tuple[set[str], set[str]]:
    """``(synonym_texts, novel_class_texts)`` of the simulator vocabulary the packs were generated with."""
    from occ_audit_ros import paths
    from training.sim.shards import load_config as load_sim_config
    from training.sim.vocabulary import Vocabulary

    vocab = Vocabulary.from_config(load_sim_config(paths.resource(config)))
    names = set(vocab.classes)
    synonyms = {t for c in vocab.classes.values() for t in c.synonyms} - names
    novel = {t for c in vocab.classes.values() if c.held_out for t in (c.name, *c.synonyms)}
    return synonyms, novel


def description_texts(scene: dict) -> list[tuple[str, str]]:
    """``(target text, reference text)`` per VOOL description of a scene, in item order."""
    return [(scene["labels"][ti], scene["labels"][ri]) for ti, _, ri in scene["descriptions"]]


def score(items: list[tuple], cutoffs) -> tuple[np.ndarray, list[str]]:
    from occ_audit_ros.semabs.model import SemAbsConfig

    names = [i[0] for i in items]
    table = iou_table([i[1] for i in items], [i[2] for i in items], [i[3] for i in items], SemAbsConfig().workspace,
                      cutoffs, 32)
    return table, names


def split_items(make, scenes) -> tuple[list[tuple], list[int]]:
    """Items of every scene of a split and the scene (room) index of each."""
    items, rooms = [], []
    for i in range(len(scenes)):
        got = make(scenes[i])
        items += got
        rooms += [i] * len(got)
    return items, rooms


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
                    help="sweep network logit cutoffs over [-10, 6] (step --step) instead of the reference [-2.5, -0.1]")
    ap.add_argument("--step", type=float, default=0.25,
                    help="step of the --wide sweep (default 0.25; the reference steps 0.1)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key.sub=value")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    device = resolve_device(args.device)
    splits = ["val"] + list(cfg["eval"].get("test_splits", []))
    sets = {s: SceneSet(cfg, s) for s in splits}
    if not 0 < args.step <= 1:
        ap.error(f"--step must be in (0, 1], got {args.step}")
    cutoffs = np.round(np.arange(-10.0, 6.0 + args.step / 2, args.step), 6) if args.wide else REFERENCE_CUTOFFS
    task = None
    results = {"network": [], "baseline": None}

    synonym_texts, novel_texts = vocabulary_texts()
    pairs = {s: [p for sc in sets[s] for p in description_texts(sc)] for s in splits}  # IndexError ends it

    def scored(split, items, rms, cols, val_cut=None):
        """Per-split results: all items (item mean) and the reference protocol."""
        table, names = score(items, cols)
        if val_cut is None:  # validation: choose both cutoffs
            cut, _ = choose_cutoff(table, cols)
            col = int(np.argmin(np.abs(np.asarray(cols) - cut)))
            out = summarise(table, names, col) | {"cutoff": float(cut)}
        else:
            col = 0
            out = summarise(table, names, 0)
        if task == "vool":  # reference protocol at the same (item-mean) cutoff, as summarize_vool
            keep = reference_vool_rows(pairs[split], split, synonym_texts, novel_texts)
            if len(keep) != len(items):
                raise RuntimeError(f"{split}: {len(items)} VOOL items but {len(keep)} descriptions")
            ref = reference_vool_means(table[keep, col], [n for n, k in zip(names, keep) if k],
                                       [r for r, k in zip(rms, keep) if k], split)
            out["reference"] = ref | {"items": int(keep.sum())}
        if task == "ovssc":
            keep = reference_rows(items)
            sub_names = [n for n, k in zip(names, keep) if k]
            sub_rooms = [r for r, k in zip(rms, keep) if k]

            def ref_mean(column):
                return reference_mean(column, sub_names, sub_rooms, split)

            if val_cut is None:
                cut, _ = choose_cutoff(table[keep], cols, ref_mean)
                j = int(np.argmin(np.abs(np.asarray(cols) - cut)))
                ref = {"cutoff": float(cut)}
            else:
                j = 1  # test splits: cols = [item-mean cutoff, reference cutoff]
                ref = {}
            out["reference"] = ref | {"mean": ref_mean(table[keep, j]), "items": int(keep.sum()),
                                      "per_name": summarise(table[keep], sub_names, j)["per_name"]}
        return out

    for ck in args.checkpoints:
        model, task, _, _, _ = load_checkpoint(ck)
        model.to(device)
        rng = np.random.default_rng([cfg["seed"], 7])
        per_split = {}
        pred = lambda sc: predict_items(model, task, sc, cfg["eval"]["num_input_points"], rng)  # noqa: E731
        val_items, val_rooms = split_items(pred, sets["val"])
        per_split["val"] = scored("val", val_items, val_rooms, cutoffs)
        cuts = [per_split["val"]["cutoff"]] + ([per_split["val"]["reference"]["cutoff"]] if task == "ovssc" else [])
        for s in splits[1:]:
            items, rms = split_items(pred, sets[s])
            per_split[s] = scored(s, items, rms, cuts, val_cut=cuts)
        results["network"].append(per_split)
    # baseline (deterministic): cutoffs from quantiles of its validation scores
    base = lambda sc: baseline_items(task, sc, args.shift)  # noqa: E731
    base_val, base_rooms = split_items(base, sets["val"])
    finite = np.concatenate([it[2][np.isfinite(it[2])] for it in base_val])
    bcuts = np.unique(np.quantile(finite, np.linspace(0.0, 0.995, 40)))
    results["baseline"] = {"val": scored("val", base_val, base_rooms, bcuts)}
    bc = [results["baseline"]["val"]["cutoff"]] + ([results["baseline"]["val"]["reference"]["cutoff"]]
                                                   if task == "ovssc" else [])
    for s in splits[1:]:
        items, rms = split_items(base, sets[s])
        results["baseline"][s] = scored(s, items, rms, bc, val_cut=bc)
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
    if task == "ovssc":
        print(f"reference protocol (labels present in the frustum; per room, per label for novel class / synonym; "
              f"own val cutoffs {[r['val']['reference']['cutoff'] for r in results['network']]}, baseline "
              f"{results['baseline']['val']['reference']['cutoff']:.3f})")
        print(f"{'split':<15}{'network mean±std':>20}{'baseline':>10}{'ratio':>8}{'items':>7}")
        for s in splits:
            vals = np.array([r[s]["reference"]["mean"] for r in results["network"]]) * 100
            b = results["baseline"][s]["reference"]["mean"] * 100
            print(f"{s:<15}{vals.mean():>12.1f} ± {vals.std():<5.1f}{b:>10.1f}{vals.mean() / max(b, 1e-9):>8.2f}"
                  f"{results['baseline'][s]['reference']['items']:>7}")
            out[f"{s}_net_ref"] = round(float(vals.mean()), 2)
            out[f"{s}_base_ref"] = round(float(b), 2)
    if task == "vool":
        rels = sorted(results["baseline"][splits[-1]]["per_name"])
        protocols = (("item mean", lambda r: r, ""), ("reference protocol", lambda r: r["reference"], "_ref"))
        for proto, get, tag in protocols:
            for s in splits:
                count = f", {results['baseline'][s]['reference']['items']} items" if tag else ""
                print(f"per relation ({s}, {proto}{count}): network mean ± std over checkpoints, baseline")
                for rel in rels + (["all"] if tag else []):
                    def value(r):
                        return get(r)["mean"] if rel == "all" else get(r)["per_name"].get(rel, np.nan)

                    vals = np.array([value(r[s]) for r in results["network"]]) * 100
                    b = value(results["baseline"][s]) * 100
                    print(f"  {rel:<18}{np.nanmean(vals):>8.1f} ± {np.nanstd(vals):<5.1f}{b:>8.1f}")
                    key = rel.replace(" ", "_")
                    out[f"{s}_{key}_net{tag}"] = round(float(np.nanmean(vals)), 2)
                    out[f"{s}_{key}_base{tag}"] = round(float(b), 2)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("RESULT task=" + str(task) + " " + " ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
