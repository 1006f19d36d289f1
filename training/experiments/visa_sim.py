"""VISA on the driving simulator with the SIMULATED auditor: baseline vs VISA, each loss alone and
left out, the audit-accuracy sweep with and without reliability weighting, and a softer weighting.

**Simulated audits**: the auditor reads the GT class and is right with a configured probability
(``training.visa.auditors.SimulatedAuditor``); nothing here measures a VLM.

Design (:mod:`training.experiments.cached_study`): per seed, stage 1 trains the whole AGO model once
(``training/config/ago_train_sim_cached.yaml``: 1.6 m voxels, 50 x 28 px cameras) and caches its voxel
features; stage 2 trains every configuration's last layer + head on those features through
``train_ago.train`` with VISA switched on by the config's ``visa:`` mapping (targets file of the run's
audit set). Runs of one seed share features, initialisation, batch order, noise words and audit seed
(paired). ``--mode full`` drops the cache: every configuration trains the whole model from scratch
through the same call (the GPU form, ``training/experiments/gpu_full_study.sh``). Metrics (Occ3D
protocol, validation split inside ``mask_camera``): mIoU over 17 classes, object mIoU over K_obj, rare
mIoU over ``training/config/visa.yaml: evaluation.rare_classes``.

Commands (``occ_audit_exp_visa_sim`` = ``python -m training.experiments.visa_sim``)::

    # simulator data with occ3d.dims [50, 50, 4] (header of training/config/ago_train_sim_cached.yaml)
    occ_audit_exp_visa_sim prepare --train D1 D2 --val D3 D4 --work .visa_work
    occ_audit_exp_visa_sim run --work .visa_work --steps 300 --stage1-steps 400
    occ_audit_exp_visa_sim report --results .visa_work/results/visa-cached.jsonl --img docs/img --md OUT.md
    occ_audit_exp_visa_sim objects --work .visa_work --results .visa_work/results/visa-cached.jsonl
    occ_audit_exp_visa_sim study --train ... --val ... --work .visa_work   # all of them

``objects`` looks where the VISA terms act: the validation voxels of K_obj classes, their share
predicted as an object, the accuracy of the argmax over the K_obj columns alone, and the logit margin
of the best object class over the best other class. The ``*_objmass`` runs are a diagnostic variant
(L_tax on the unrenormalised K_obj probabilities, ``VisaExtraLoss(object_mass=True)``).

Last line of ``report``: ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from occ_audit_ros.paths import REPO_ROOT as REPO

VISA_CONFIG = REPO / "training" / "config" / "visa.yaml"

#: (λ_tax, λ_attr, λ_graph) of training/config/visa.yaml (visa.md §7)
LAMBDAS = (0.5, 0.2, 0.1)
#: weightings of the targets: reliability (w = q·r·gates·ρ), none (w = ρ), soft (w = ρ·(q·r·gates)^γ)
WEIGHTINGS = {"w": "reliability", "nw": "none", "soft": "soft"}
SOFT_GAMMA = 0.5


def run_table(accuracies=(0.6, 0.7, 0.8, 0.9, 1.0)) -> dict:
    """Run name -> (audit setting, weighting key of :data:`WEIGHTINGS`, (λ_tax, λ_attr, λ_graph)
    [, extra keys of the trainer's ``visa:`` block]); ``None`` = baseline (no VISA)."""
    t, a, g = LAMBDAS
    runs = {"baseline": None, "visa": ("default", "w", LAMBDAS),
            "tax_only": ("default", "w", (t, 0, 0)), "attr_only": ("default", "w", (0, a, 0)),
            "graph_only": ("default", "w", (0, 0, g)), "no_tax": ("default", "w", (0, a, g)),
            "no_attr": ("default", "w", (t, 0, g)), "no_graph": ("default", "w", (t, a, 0)),
            "no_reliability": ("default", "nw", LAMBDAS), "visa_soft": ("default", "soft", LAMBDAS)}
    for acc in accuracies:
        k = f"acc{round(acc * 100)}"
        for suf in ("w", "nw"):
            runs[f"{k}_{suf}"] = (k, suf, LAMBDAS)
    runs["acc60_soft"] = ("acc60", "soft", LAMBDAS)
    # diagnostic: L_tax on the unrenormalised K_obj probabilities (VisaExtraLoss object_mass)
    for k in ("default", "acc60", "acc80"):
        runs[f"{'visa' if k == 'default' else k + '_w'}_objmass"] = (k, "w", LAMBDAS, {"object_mass": True})
    return runs


# ----------------------------------------------------------------------------------------- prepare
def prepare(args) -> int:
    """Work folder (``cached_study.prepare_data``) + one VISA targets file per audit setting x seed x
    weighting (``ago_hook.save_targets``; meta: agreement, rows, weight on right / wrong audits)."""
    import dataclasses

    import torch

    from training.ago.data import _find_gt, sample_tokens
    from training.ago.occ_gt import OCC3D_SPEC
    from training.experiments import cached_study as cs
    from training import train_ago
    from occ_audit_ros.ago.classes import load_class_config
    from occ_audit_ros.nuscenes_io import load_keyframe
    from occ_audit_ros.voxel_grid import VoxelGridSpec
    from training.visa.ago_hook import load_visa_config, save_targets, simulate_split_audits, split_targets
    from training.visa.tables import open_tables
    from training.visa.taxonomy import K_OBJ

    t0 = time.time()
    work = Path(args.work)
    if (work / "files.json").is_file():  # samples, dictionary and text cache already there
        files = json.loads((work / "files.json").read_text())
    else:
        files = cs.prepare_data(args.train, args.val, work, args.seeds, overrides=args.set)
    cfg = train_ago.load_config(files.get("config", cs.CONFIG), files.get("config_overrides", []))
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, cfg["data"]["voxel_size"])
    ccfg = load_class_config()
    keyframes, freq = {}, np.zeros(18, np.int64)
    for root in map(Path, args.train):
        keyframes[root] = []
        for tok in sample_tokens(root):
            kf = load_keyframe(root, root / "sim_infos.pkl", tok)
            with np.load(_find_gt(root / "gts", tok)) as z:
                sem, m = z["semantics"], z["mask_camera"].astype(bool)
            keyframes[root].append((kf, sem))
            freq += np.bincount(np.asarray(sem)[m].ravel(), minlength=256)[:18]
    obj = [ccfg.classes[i] for i in ccfg.object_classes]
    f_obj = {n: int(freq[ccfg.classes.index(n)]) for n in obj}
    med = float(np.median(list(f_obj.values())))
    vcfg = load_visa_config({})
    settings = {"default": vcfg["auditor"]["simulated"]["accuracy"]}
    settings.update({f"acc{round(a * 100)}": float(a) for a in args.accuracies})
    tabs = {root: open_tables(root, "v1.0-test") for root in keyframes}
    tdir = work / "visa_targets"
    sets = {}
    for name, acc in settings.items():
        for seed in args.seeds:
            aud = json.loads(json.dumps(vcfg["auditor"]))
            aud["simulated"].update(accuracy=acc, seed=int(seed))
            audits = {}
            for nusc in tabs.values():
                audits.update(simulate_split_audits(nusc, aud)[0])
            agree = sum(r["class_hypothesis"] == r["gt"]["class"] for r in audits.values()) / max(1, len(audits))
            by_w = {}
            for rel in (True, False):
                vrel = dict(vcfg, weights=dict(vcfg["weights"], reliability=rel))
                tg = {}
                for root, nusc in tabs.items():
                    tg.update(split_targets(vrel, {}, spec, audits=audits, keyframes=keyframes[root], nusc=nusc)[0])
                by_w["w" if rel else "nw"] = tg
            by_w["soft"] = {}
            for tok, t in by_w["w"].items():  # same rows in both (asserted): ρ^(1-γ) · w_rel^γ
                rho = by_w["nw"][tok].weight
                assert torch.equal(t.voxel_index, by_w["nw"][tok].voxel_index), "rows differ between weightings"
                soft = rho.clamp_min(0) ** (1 - SOFT_GAMMA) * t.weight.clamp_min(0) ** SOFT_GAMMA
                by_w["soft"][tok] = dataclasses.replace(t, weight=soft)
            for wk, tg in by_w.items():
                right = wrong = rows = 0.0
                n_right = n_wrong = 0
                for t in tg.values():
                    ok = t.hypothesis == t.gt
                    right += float(t.weight[ok].sum())
                    wrong += float(t.weight[~ok].sum())
                    n_right += int(ok.sum())
                    n_wrong += int((~ok).sum())
                    rows += len(t.gt)
                key = f"{name}_{seed}_{wk}"
                meta = {"setting": name, "accuracy": acc, "seed": int(seed), "weighting": WEIGHTINGS[wk],
                        "audits": len(audits), "agreement": agree, "rows": int(rows), "rows_right": n_right,
                        "rows_wrong": n_wrong, "weight_right": right, "weight_wrong": wrong,
                        "num_samples": len(files["train_tokens"])}
                save_targets(tdir / f"{key}.safetensors", tg, meta)
                sets[key] = meta
            m = sets[f"{name}_{seed}_w"]
            print(f"{name} seed {seed}: {len(audits)} audits, agreement {agree:.3f}, {m['rows']} rows "
                  f"({m['rows_wrong']} with a wrong hypothesis); weight share on wrong rows: reliability "
                  f"{m['weight_wrong'] / max(1e-9, m['weight_right'] + m['weight_wrong']):.3f}, none "
                  f"{sets[f'{name}_{seed}_nw']['weight_wrong'] / max(1e-9, sets[f'{name}_{seed}_nw']['weight_right'] + sets[f'{name}_{seed}_nw']['weight_wrong']):.3f}",
                  flush=True)
    info = {"target_sets": sets, "object_voxel_frequency": f_obj,
            "rare_classes_computed": [n for n in obj if f_obj[n] < med], "K_OBJ": list(K_OBJ),
            "prepare_s": round(time.time() - t0, 1)}
    (work / "visa_meta.json").write_text(json.dumps(info, indent=1))
    print(f"work folder {work}: {len(files['train_tokens'])} train / {len(files['val_tokens'])} val samples, "
          f"{len(sets)} target sets, {time.time() - t0:.0f} s; rare (this split): {info['rare_classes_computed']}")
    return 0


# --------------------------------------------------------------------------------------------- run
def _visa_block(work: Path, spec, seed: int):
    if spec is None:
        return None
    setting, wk, (lt, la, lg) = spec[:3]
    return {"targets": str(work / "visa_targets" / f"{setting}_{seed}_{wk}.safetensors"),
            "losses": {"lambda_tax": lt, "lambda_attr": la, "lambda_graph": lg}, **(spec[3] if len(spec) > 3 else {})}


def _todo(args, runs) -> list[tuple[str, int]]:
    names = [n for n in runs if not args.only or n in args.only]
    return [(n, s) for s in args.seeds for n in names]


def run(args) -> int:
    """Every (configuration, seed) through ``cached_study.stage2``; appends to
    ``<work>/results/visa-<mode>.jsonl`` and skips pairs already there (resumable). ``--workers N``
    runs N processes, each taking every N-th pair (full mode on a GPU)."""
    import torch

    from training.experiments import cached_study as cs

    work = Path(args.work)
    res_dir = work / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    runs = run_table(args.accuracies)
    out_path = Path(args.results or res_dir / f"visa-{args.mode}.jsonl")
    if args.workers > 1 and args.mode == "cached":
        raise ValueError("--workers > 1 is for --mode full (cached-mode workers would share stage 1)")
    if args.workers > 1 and args.worker is None:
        procs = []
        for i in range(args.workers):
            cmd = [sys.executable, "-m", "training.experiments.visa_sim", "run", "--work", str(work), "--mode", args.mode,
                   "--steps", str(args.steps), "--stage1-steps", str(args.stage1_steps), "--eval-every",
                   str(args.eval_every), "--device", args.device, "--threads", str(args.threads),
                   "--seeds", *map(str, args.seeds), "--accuracies", *map(str, args.accuracies),
                   *(["--only", *args.only] if args.only else []),
                   "--worker", f"{i}/{args.workers}", "--results", str(out_path.with_suffix(f".w{i}.jsonl"))]
            procs.append(subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1")))
        rc = max(p.wait() for p in procs)
        with out_path.open("a") as f:
            for i in range(args.workers):
                p = out_path.with_suffix(f".w{i}.jsonl")
                if p.is_file():
                    f.write(p.read_text())
                    p.unlink()
        return rc
    torch.set_num_threads(args.threads)
    done = set()
    if out_path.is_file():
        done = {(r["run"], r["seed"]) for r in map(json.loads, out_path.read_text().splitlines()) if r}
    todo = [t for t in _todo(args, runs) if t not in done]
    if args.worker:
        i, n = map(int, args.worker.split("/"))
        todo = todo[i::n]
    t0 = time.time()
    feats = {}
    for name, seed in todo:
        if args.mode == "cached" and seed not in feats:
            feats[seed] = cs.stage1(work, seed, args.stage1_steps, "closed", device=args.device,
                                    eval_every=args.eval_every)
            print(f"stage 1 seed {seed}: {feats[seed]['wall_s']:.0f} s, val mIoU "
                  f"{feats[seed].get('stage1_val', {}).get('miou', float('nan')):.2f}", flush=True)
        rec = cs.stage2(work, seed, name, [], _visa_block(work, runs[name], seed), feats.get(seed), args.mode,
                        args.steps, args.eval_every, args.device)
        rec["spec"] = runs[name]
        with out_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name} seed {seed}: mIoU {rec['miou']:.2f} object {rec['object_miou']:.2f} rare {rec['rare_miou']:.2f} "
              f"({rec['total_s']:.0f} s; {time.time() - t0:.0f} s so far)", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ report
def _paired(a, b) -> float:
    """Two-sided paired t-test p-value of b vs a (scipy.stats.ttest_rel); NaN for < 2 pairs or
    constant differences."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.allclose(a - b, (a - b)[0]):
        return float("nan")
    return float(stats.ttest_rel(b, a).pvalue)


METRICS = (("miou", "mIoU"), ("object_miou", "object mIoU"), ("rare_miou", "rare mIoU"))


def summarise(rows: list[dict]) -> dict:
    """Per run: mean / std of each metric over seeds and the paired difference to the baseline
    (mean Δ, p, n pairs), per class too."""
    by: dict[str, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["run"], {})[r["seed"]] = r
    base = by.get("baseline", {})
    out = {}
    for name, seeds in by.items():
        s = {"n": len(seeds), "seeds": sorted(seeds)}
        common = sorted(set(seeds) & set(base))
        for k, _ in METRICS:
            v = np.array([seeds[x][k] for x in sorted(seeds)], float)
            s[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
            if name != "baseline" and common:
                a = [base[x][k] for x in common]
                b = [seeds[x][k] for x in common]
                s[f"d_{k}"] = (float(np.mean(np.subtract(b, a))), _paired(a, b), len(common))
        if name != "baseline" and common:
            per = {}
            for c in seeds[common[0]]["iou"]:
                a = [base[x]["iou"][c] for x in common]
                b = [seeds[x]["iou"][c] for x in common]
                if None in a or None in b:
                    continue
                per[c] = (float(np.mean(np.subtract(b, a))), _paired(a, b))
            s["d_iou"] = per
        out[name] = s
    return out


def report(args) -> int:
    """Markdown table (mean ± std, paired Δ and p vs baseline), the classes that move, plots
    (ablations, accuracy sweep, learning curves); ``--md`` writes the tables to a file too."""
    rows = [json.loads(ln) for p in args.results for ln in Path(p).read_text().splitlines() if ln.strip()]
    S = summarise(rows)
    order = [n for n in run_table() if n in S]
    lines = ["| run | weighting | n | mIoU | Δ mIoU (p) | object mIoU | Δ object (p) | rare mIoU | Δ rare (p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in order:
        s = S[n]
        spec = run_table()[n]
        wt = "—" if spec is None else WEIGHTINGS[spec[1]]
        cells = []
        for k, _ in METRICS:
            m, sd = s[k]
            cells.append(f"{m:.2f} ± {sd:.2f}")
            d = s.get(f"d_{k}")
            cells.append("—" if d is None else f"{d[0]:+.2f} ({d[1]:.3f})")
        lines.append(f"| {n} | {wt} | {s['n']} | " + " | ".join(cells) + " |")
    out = ["### VISA runs (validation, mean ± std over seeds; Δ = paired difference to the baseline, "
           "p = scipy.stats.ttest_rel)", "", *lines, ""]
    # classes that move: |Δ IoU| >= 1 point in the main runs
    main = [n for n in ("visa", "no_reliability", "visa_soft", "tax_only", "attr_only", "graph_only",
                        "acc60_w", "acc80_w", "acc100_w", "visa_objmass") if n in S and "d_iou" in S[n]]
    moved = sorted({c for n in main for c, (d, _) in S[n]["d_iou"].items() if abs(d) >= 1.0})
    if moved:
        out += ["### Per-class IoU change vs baseline (points; classes with |Δ| ≥ 1 in any of these runs; p in brackets)", "",
                "| run | " + " | ".join(moved) + " |", "|---|" + "---|" * len(moved)]
        base_iou = {c: np.mean([r["iou"][c] for r in rows if r["run"] == "baseline" and r["iou"][c] is not None] or [np.nan])
                    for c in moved}
        out.append("| baseline IoU | " + " | ".join(f"{base_iou[c]:.1f}" for c in moved) + " |")
        for n in main:
            out.append(f"| {n} | " + " | ".join(
                (f"{S[n]['d_iou'][c][0]:+.1f} ({S[n]['d_iou'][c][1]:.2f})" if c in S[n]["d_iou"] else "—") for c in moved) + " |")
        out.append("")
    text = "\n".join(out)
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text + "\n")
    _plots(rows, S, Path(args.img), args.note, getattr(args, "work", None))
    res = {"baseline_miou": S.get("baseline", {}).get("miou", (np.nan,))[0]}
    for n in ("visa", "no_reliability", "visa_soft", "acc60_w", "acc60_soft", "acc80_w", "acc100_w"):
        if n in S and "d_miou" in S[n]:
            res[f"d_miou_{n}"] = S[n]["d_miou"][0]
            res[f"p_miou_{n}"] = S[n]["d_miou"][1]
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
    return 0


def _plots(rows, S, img: Path, note: str = "", work=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    abl = [n for n in ("baseline", "visa", "tax_only", "attr_only", "graph_only", "no_tax", "no_attr", "no_graph",
                       "no_reliability", "visa_soft") if n in S]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (k, t) in zip(axes, METRICS):
        ax.bar(range(len(abl)), [S[n][k][0] for n in abl], yerr=[S[n][k][1] for n in abl], capsize=3,
               color=["grey"] + ["tab:blue"] * (len(abl) - 1))
        ax.set_xticks(range(len(abl)), abl, rotation=45, ha="right")
        ax.set_title(f"{t} (val)")
    fig.suptitle(f"VISA ablations, driving simulator, SIMULATED audits; mean ± std over seeds{note}")
    fig.tight_layout()
    fig.savefig(img / "visa_study_ablation.png", dpi=110)
    plt.close(fig)
    accs = sorted({int(n[3:].split("_")[0]) for n in S if n.startswith("acc")})
    if accs:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, (k, t) in zip(axes, METRICS):
            if "baseline" in S:
                bm, bs = S["baseline"][k]
                ax.axhspan(bm - bs, bm + bs, color="grey", alpha=0.2)
                ax.axhline(bm, color="grey", label="baseline (no VISA)")
            for suf, lab, c in (("_w", "reliability-weighted", "tab:blue"), ("_nw", "unweighted (w = ρ)", "tab:red"),
                                ("_soft", f"soft (γ = {SOFT_GAMMA})", "tab:green")):
                xs = [a for a in accs if f"acc{a}{suf}" in S]
                if xs:
                    ax.errorbar(xs, [S[f"acc{a}{suf}"][k][0] for a in xs], yerr=[S[f"acc{a}{suf}"][k][1] for a in xs],
                                marker="o", capsize=3, label=lab, color=c, ls="-" if len(xs) > 1 else "none")
            ax.set_xlabel("simulated audit accuracy (%)")
            ax.set_title(t)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Audit-accuracy sweep, SIMULATED audits (mean ± std over seeds){note}")
        fig.tight_layout()
        fig.savefig(img / "visa_study_accuracy_sweep.png", dpi=110)
        plt.close(fig)
    stage1 = sorted(Path(work).glob("features/closed-s*.json")) if work else []
    fig, axes = plt.subplots(1, 2 if stage1 else 1, figsize=(12 if stage1 else 7, 4), squeeze=False)
    if stage1:
        for f in stage1:
            pts = [(x["step"], x["val_miou"]) for x in json.loads(f.read_text()).get("curve", []) if "val_miou" in x]
            if pts:
                axes[0, 1].plot(*zip(*pts), marker=".", label=f.stem)
        axes[0, 1].set_xlabel("stage-1 step (whole network)")
        axes[0, 1].set_ylabel("validation mIoU (%)")
        axes[0, 1].set_title("Stage 1 (baseline objective), per seed")
        axes[0, 1].legend(fontsize=8)
    ax = axes[0, 0]
    for n, c in (("baseline", "black"), ("visa", "tab:blue"), ("no_reliability", "tab:red")):
        for r in rows:
            if r["run"] == n:
                pts = [(x["step"], x["val_miou"]) for x in r.get("curve", []) if "val_miou" in x]
                if pts:
                    ax.plot(*zip(*pts), color=c, alpha=0.7, label=f"{n}" if r["seed"] == min(S[n]["seeds"]) else None)
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(f"Learning curves (one line per seed){note}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "visa_study_learning_curves.png", dpi=110)
    plt.close(fig)


def object_voxels(args) -> int:
    """Where VISA can act: on the validation voxels whose GT is a K_obj class (inside ``mask_camera``),
    per trained stage-2 run (its final checkpoint): the share predicted as any K_obj class (argmax over
    every column), the accuracy of the argmax over the K_obj columns alone (what VISA's pooled,
    K_obj-renormalised terms train), and the mean margin max K_obj logit - max other logit (< 0: an
    object is never the argmax). Table with paired Δ vs the baseline; ``--md`` appends it."""
    import torch

    from training import train_ago
    from training.experiments import cached_study as cs
    from training.visa.taxonomy import K_OBJ_OCC3D_INDEX
    from occ_audit_ros.ago.checkpoint import latest_checkpoint, load_checkpoint

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    kidx = torch.tensor(K_OBJ_OCC3D_INDEX)
    rows = []
    for r in map(json.loads, Path(args.results).read_text().splitlines()):
        run_dir = work / "runs" / "cached" / f"{r['run']}-s{r['seed']}"
        ck = latest_checkpoint(run_dir)
        info = work / "features" / f"closed-s{r['seed']}.json"
        if ck is None or not info.is_file():
            continue
        feats = json.loads(info.read_text())
        cfg = cs.run_config(work, r["seed"], run_dir, [f"data.features_file={feats['train']}"])
        _, _, _, bank, _, spec, _, model = train_ago.build_everything(cfg)
        load_checkpoint(ck, model)
        model.eval()
        n = obj = right = 0
        margins = []
        with torch.no_grad():
            for smp in train_ago.load_feature_samples(feats["val"], spec):
                lg = model(smp.images[None], [None], bank, None, None)["class_logits"][0].reshape(-1, 18)
                gt = smp.semantics.reshape(-1)
                sel = smp.mask_camera.reshape(-1) & torch.isin(gt, kidx)
                if not sel.any():
                    continue
                lg, gt = lg[sel], gt[sel]
                other = torch.ones(18, dtype=torch.bool)
                other[kidx] = False
                n += len(gt)
                obj += int(torch.isin(lg.argmax(1), kidx).sum())
                right += int((kidx[lg[:, kidx].argmax(1)] == gt).sum())
                margins.append(lg[:, kidx].max(1).values - lg[:, other].max(1).values)
        m = torch.cat(margins)
        rows.append({"run": r["run"], "seed": r["seed"], "n": n, "object_share": 100 * obj / max(1, n),
                     "kobj_accuracy": 100 * right / max(1, n), "margin": float(m.mean())})
    by: dict = {}
    for x in rows:
        by.setdefault(x["run"], {})[x["seed"]] = x
    base = by.get("baseline", {})
    lines = ["### Validation voxels of K_obj classes (GT), per run: mean ± std over seeds; Δ = paired vs baseline (p)", "",
             "| run | n seeds | predicted as an object (%) | K_obj-only argmax accuracy (%) | Δ (p) | margin max K_obj − max other logit |",
             "|---|---|---|---|---|---|"]
    for name in [n for n in run_table() if n in by]:
        sd = by[name]
        a = np.array([sd[k]["kobj_accuracy"] for k in sorted(sd)])
        o = np.array([sd[k]["object_share"] for k in sorted(sd)])
        g = np.array([sd[k]["margin"] for k in sorted(sd)])
        common = sorted(set(sd) & set(base))
        d = "—"
        if name != "baseline" and common:
            x = [base[k]["kobj_accuracy"] for k in common]
            y = [sd[k]["kobj_accuracy"] for k in common]
            d = f"{np.mean(np.subtract(y, x)):+.2f} ({_paired(x, y):.3f})"
        sdv = (lambda v: v.std(ddof=1) if len(v) > 1 else 0.0)
        lines.append(f"| {name} | {len(sd)} | {o.mean():.2f} ± {sdv(o):.2f} | {a.mean():.2f} ± {sdv(a):.2f} | {d} | "
                     f"{g.mean():.2f} ± {sdv(g):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "a") as f:
            f.write("\n" + text + "\n")
    return 0


def study(args) -> int:
    """prepare (unless the work folder has it) + run + report, one command."""
    work = Path(args.work)
    if not (work / "visa_meta.json").is_file():
        if prepare(args):
            return 1
    args.results = None
    args.worker = None
    t0 = time.time()
    if run(args):
        return 1
    print(f"study runs: {time.time() - t0:.0f} s")
    args.results = [str(work / "results" / f"visa-{args.mode}.jsonl")]
    rc = report(args)
    if args.mode == "cached":  # where the terms act: the object voxels (appended to --md)
        rc |= object_voxels(argparse.Namespace(work=str(work), results=args.results[0], md=args.md,
                                               threads=args.threads))
    return rc


def main(argv=None) -> int:
    """CLI (``occ_audit_exp_visa_sim``): prepare | run | report | objects | study."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def data_args(p):
        p.add_argument("--train", nargs="+", required=True, help="simulator output folders (training split)")
        p.add_argument("--val", nargs="+", required=True, help="simulator output folders (validation split)")

    def run_args(p):
        p.add_argument("--work", required=True)
        p.add_argument("--mode", choices=["cached", "full"], default="cached")
        p.add_argument("--steps", type=int, default=300, help="stage-2 (full mode: every run's) steps")
        p.add_argument("--stage1-steps", type=int, default=400)
        p.add_argument("--eval-every", type=int, default=50, help="learning-curve points (0: none)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--workers", type=int, default=1, help="processes (full mode on a GPU)")
        p.add_argument("--only", nargs="*", default=None, help="run names (default: all)")
        p.add_argument("--worker", default=None, help=argparse.SUPPRESS)

    def common(p):
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        p.add_argument("--accuracies", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 1.0])

    p = sub.add_parser("prepare")
    data_args(p)
    p.add_argument("--work", required=True)
    p.add_argument("--set", nargs="*", default=[], help="config overrides of the study (e.g. data.voxel_size=0.8)")
    common(p)
    r = sub.add_parser("run")
    run_args(r)
    common(r)
    r.add_argument("--results", default=None, help="results JSONL (default <work>/results/visa-<mode>.jsonl)")
    q = sub.add_parser("report")
    q.add_argument("--results", nargs="+", required=True)
    q.add_argument("--img", default=str(REPO / "docs" / "img"))
    q.add_argument("--md", default=None, help="also write the tables to this markdown file")
    q.add_argument("--note", default="")
    q.add_argument("--work", default=None, help="work folder: adds the stage-1 learning curves")
    o = sub.add_parser("objects", help="object-voxel analysis of trained cached runs (where VISA acts)")
    o.add_argument("--work", required=True)
    o.add_argument("--results", required=True, help="one results JSONL of `run`")
    o.add_argument("--md", default=None, help="append the table to this markdown file")
    o.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("study")
    data_args(s)
    s.add_argument("--set", nargs="*", default=[], help="config overrides of the study (prepare)")
    run_args(s)
    common(s)
    s.add_argument("--img", default=str(REPO / "docs" / "img"))
    s.add_argument("--md", default=None)
    s.add_argument("--note", default="")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "run": run, "report": report, "objects": object_voxels, "study": study}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
