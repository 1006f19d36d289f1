"""VISA on the driving simulator with the SIMULATED auditor: baseline vs VISA, per-loss ablations,
no reliability weighting, and the audit-accuracy sweep (visa.md §8; issue 8's experiments).

**Simulated audits**: the auditor reads the GT class and is right with a configured probability
(``training.visa.auditors.SimulatedAuditor``); nothing here measures a VLM.

Three steps (the middle one is the only heavy one and runs where a GPU is)::

    # 1. CPU, needs the simulator output, nuscenes-devkit and the MiniLM wheel: samples, GT, the
    #    text-embedding cache (vocabulary + noise-word pools per seed) and the VISA targets of
    #    every audit setting x seed x weighting -> one cache folder (~30 MB)
    python training/experiments/visa_sim.py prepare --train /tmp/visa_sim/train ... --val /tmp/visa_sim/val ... \
        --cache .visa_cache
    # 2. train + evaluate every run (torch only; MiniLM is never loaded: full text-cache hits)
    python training/experiments/visa_sim.py run --cache .visa_cache --out runs/visa_sim --steps 600 --workers 12
    # 3. table, paired tests, plots
    python training/experiments/visa_sim.py report --results runs/visa_sim/results.jsonl --img docs/img

The training loop is ``training/train_ago.py``'s (same model, losses, optimiser, LR schedule,
noise prompts, batch sampling and seeding; its ``extra_losses`` hook receives
:class:`training.visa.ago_hook.VisaExtraLoss`) with the tensors on a device, which that trainer
does not do; evaluation = ``train_ago.evaluate`` (entropy identifier, training vocabulary) on the
validation split inside ``mask_camera``. Metrics (Occ3D protocol, ``ago.metrics``): mIoU over the 17
classes, object mIoU over the 10 K_obj classes, rare mIoU over the frozen
``training/config/visa.yaml: evaluation.rare_classes`` (visa.md §2, computed by ``prepare`` from the training
split). Runs of one seed share the model initialisation, batch order, noise words and audit seed, so
``baseline`` vs ``X`` is a paired comparison (paired t-test over seeds, scipy).

Last line of ``report``: ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from occ_audit_ros.paths import REPO_ROOT as REPO  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

AGO_CONFIG = REPO / "training" / "config" / "ago_train_sim.yaml"
VISA_CONFIG = REPO / "training" / "config" / "visa.yaml"

#: run name -> (audit setting, reliability weighting, (λ_tax, λ_attr, λ_graph)); None = baseline
LAMBDAS = (0.5, 0.2, 0.1)  # visa.md §7


def run_table(accuracies) -> dict:
    t, a, g = LAMBDAS
    runs = {"baseline": None, "visa": ("default", True, LAMBDAS),
            "tax_only": ("default", True, (t, 0, 0)), "attr_only": ("default", True, (0, a, 0)),
            "graph_only": ("default", True, (0, 0, g)), "no_tax": ("default", True, (0, a, g)),
            "no_attr": ("default", True, (t, 0, g)), "no_graph": ("default", True, (t, a, 0)),
            "no_reliability": ("default", False, LAMBDAS),
            # diagnostic (session 4): the taxonomy term alone without reliability weighting
            "tax_only_nw": ("default", False, (t, 0, 0))}
    for acc in accuracies:
        k = f"acc{round(acc * 100)}"
        runs[f"{k}_w"] = (k, True, LAMBDAS)
        runs[f"{k}_nw"] = (k, False, LAMBDAS)
    return runs


# ----------------------------------------------------------------------------------------- prepare
def _cams_of(kf):
    from occ_audit_ros.geometry import invert_transform

    T_base_map = invert_transform(kf.lidar.T_map_base)
    return [(c.K, T_base_map @ c.T_map_cam, c.width, c.height) for c in kf.cameras.values()]


def prepare(args) -> int:
    from training import train_ago
    from occ_audit_ros.ago.classes import load_class_config
    from training.ago.data import _find_gt, sample_from_keyframe, sample_tokens, training_vocabulary
    from occ_audit_ros.ago.network import lift_geometry
    from training.ago.occ_gt import OCC3D_SPEC, OccupancyGT
    from occ_audit_ros.ago.prompts import NoiseSampler, dictionary_words, encode_vocabulary
    from occ_audit_ros.ago.text import build_text_encoder
    from occ_audit_ros.nuscenes_io import load_keyframe
    from training.visa.ago_hook import _FIELDS, load_visa_config, simulate_split_audits, split_targets
    from training.visa.tables import open_tables
    from training.visa.taxonomy import K_OBJ
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    t0 = time.time()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cfg = train_ago.load_config(AGO_CONFIG)
    d = cfg["data"]
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, d["voxel_size"])
    ccfg = load_class_config()
    arrays, meta = {}, {"train": [], "val": [], "cams": {}}
    train_kf = {}  # dir -> [(kf, sem)]
    freq = np.zeros(18, np.int64)
    for split, dirs in (("train", args.train), ("val", args.val)):
        for root in dirs:
            root = Path(root)
            for tok in sample_tokens(root):
                kf = load_keyframe(root, root / "sim_infos.pkl", tok)
                with np.load(_find_gt(root / "gts", tok)) as z:
                    sem, mcam = z["semantics"], z["mask_camera"]
                    gt = OccupancyGT(spec, sem, z["mask_lidar"] if "mask_lidar" in z else mcam, mcam)
                s = sample_from_keyframe(kf, spec, d["image_scale"], gt, d.get("gt_pixel_stride", 16))
                cams = _cams_of(kf)
                if split == "train" and len(meta["train"]) == 0:  # the cached cameras give the same lifting
                    g = lift_geometry(spec, [(K, T, w, h) for K, T, w, h in cams])
                    assert torch.equal(g.grid, s.geom.grid) and torch.equal(g.valid, s.geom.valid)
                imgs = torch.round(s.images * 255).to(torch.uint8)
                assert torch.equal(imgs.float() / 255.0, s.images)
                arrays[f"{tok}/images"] = imgs.numpy()
                arrays[f"{tok}/depth"] = s.depth.numpy()
                arrays[f"{tok}/semantics"] = np.asarray(sem, np.uint8)
                arrays[f"{tok}/mask_camera"] = np.asarray(mcam, bool)
                meta["cams"][tok] = [[np.asarray(K).tolist(), np.asarray(T).tolist(), int(w), int(h)]
                                     for K, T, w, h in cams]
                meta[split].append(tok)
                if split == "train":
                    train_kf.setdefault(str(root), []).append((kf, sem))
                    m = np.asarray(mcam, bool)
                    freq += np.bincount(np.asarray(sem)[m].ravel(), minlength=256)[:18]
    np.savez_compressed(cache / "data.npz", **arrays)
    # rare classes (visa.md §2): object classes below the median object-class voxel frequency
    obj = [ccfg.classes[i] for i in ccfg.object_classes]
    f_obj = {n: int(freq[ccfg.classes.index(n)]) for n in obj}
    med = float(np.median(list(f_obj.values())))
    meta["object_voxel_frequency"] = f_obj
    meta["rare_classes_computed"] = [n for n in obj if f_obj[n] < med]
    print(f"training-split object voxels (mask_camera): {f_obj}; median {med}; rare: {meta['rare_classes_computed']}")
    # text: vocabulary + the noise pool of each seed, all in one CachedTextEncoder file
    text = build_text_encoder(cfg.get("text_encoder", "minilm"), None, cache / "text_cache.safetensors")
    vocab, _ = training_vocabulary(ccfg, cfg.get("vocabulary", "closed"))
    bank = encode_vocabulary(text, vocab)
    words = dictionary_words()
    for seed in args.seeds:
        NoiseSampler(text, words, bank.emb, cfg["noise"].get("threshold", 0.8), seed=seed * 1000,
                     pool_size=cfg["noise"].get("pool_size"))
    text.save()
    (cache / "words.json").write_text(json.dumps(words))
    meta["text_encoder"] = {"name": text.name, "dim": text.dim}
    # VISA targets: audit setting x seed x weighting; voxel indices shared (same rows in every set)
    vcfg = load_visa_config({})
    settings = {"default": vcfg["auditor"]["simulated"]["accuracy"]}
    settings.update({f"acc{round(a * 100)}": float(a) for a in args.accuracies})
    tensors, sets = {}, {}
    tabs = {root: open_tables(root, "v1.0-test") for root in train_kf}
    for name, acc in settings.items():
        for seed in args.seeds:
            aud_cfg = json.loads(json.dumps(vcfg["auditor"]))
            aud_cfg["simulated"].update(accuracy=acc, seed=int(seed))
            audits, n_rej = {}, 0
            for root, nusc in tabs.items():
                a, rej = simulate_split_audits(nusc, aud_cfg)
                audits.update(a)
                n_rej += len(rej)
            n_agree = sum(r["class_hypothesis"] == r["gt"]["class"] for r in audits.values())
            for rel in (True, False):
                key = f"{name}|{seed}|{int(rel)}"
                rows, wsum = 0, 0.0
                vrel = dict(vcfg, weights=dict(vcfg["weights"], reliability=rel))
                for root, nusc in tabs.items():
                    tg, _ = split_targets(vrel, {}, spec, audits=audits, keyframes=train_kf[root], nusc=nusc)
                    for tok, t in tg.items():
                        vk = f"vox::{tok}"
                        if vk in tensors:
                            assert torch.equal(tensors[vk], t.voxel_index.to(torch.int32)), "rows differ between sets"
                        else:
                            tensors[vk] = t.voxel_index.to(torch.int32)
                        for f in _FIELDS[1:]:  # every field but voxel_index (shared above)
                            v = getattr(t, f)
                            tensors[f"{key}::{tok}::{f}"] = v.to(torch.uint8) if v.dtype == torch.bool else v
                        rows += len(t.gt)
                        wsum += float(t.weight.sum())
                # agreement of the rows actually used (grounded instance-frames) and weight mass on wrong audits
                sets[key] = {"accuracy": acc, "audits": len(audits), "rejected_no_crop": n_rej,
                             "agreement": n_agree / max(1, len(audits)), "rows": rows, "weight_sum": wsum}
            print(f"{name} seed {seed}: {len(audits)} audits, agreement {n_agree / max(1, len(audits)):.3f}, "
                  f"{rows} rows")
    from safetensors.torch import save_file

    save_file(tensors, str(cache / "targets.safetensors"))
    meta["target_sets"] = sets
    meta["K_OBJ"] = list(K_OBJ)
    (cache / "meta.json").write_text(json.dumps(meta))
    size = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
    print(f"cache {cache}: {len(meta['train'])} train / {len(meta['val'])} val samples, "
          f"{len(sets)} target sets, {size:.1f} MiB, {time.time() - t0:.0f} s")
    return 0


# --------------------------------------------------------------------------------------------- run
class OfflineTextEncoder:
    """Stand-in inner encoder for :class:`CachedTextEncoder` where MiniLM is not installed: every
    text must be in the cache file; a miss raises instead of loading a model."""

    def __init__(self, name: str, dim: int):
        self.name, self.dim = name, dim

    def encode(self, texts):
        raise RuntimeError(f"text-cache miss for {list(texts)[:3]}...: rerun `prepare` (MiniLM is not loaded here)")


def _cached_sample(data, meta: dict, tok: str, device="cpu"):
    """Sample ``tok`` of the cache's ``data.npz`` as an :class:`AgoSample` on ``device`` (no geometry;
    images decoded to [0, 1] there)."""
    from training.ago.data import AgoSample

    cams = [(np.asarray(K), np.asarray(T), w, h) for K, T, w, h in meta["cams"][tok]]
    return AgoSample(tok, torch.from_numpy(data[f"{tok}/images"]).to(device).float() / 255.0,
                     torch.from_numpy(data[f"{tok}/depth"]).to(device), None,
                     torch.from_numpy(data[f"{tok}/semantics"].astype(np.int64)).to(device),
                     torch.from_numpy(data[f"{tok}/mask_camera"]).to(device), cams)


def _load_cache(cache: Path, device):
    from occ_audit_ros.ago.network import lift_geometry
    from training.ago.occ_gt import OCC3D_SPEC
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    meta = json.loads((cache / "meta.json").read_text())
    cfg = yaml.safe_load(AGO_CONFIG.read_text())
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, cfg["data"]["voxel_size"])
    data = np.load(cache / "data.npz")
    samples = {}
    for tok in meta["train"] + meta["val"]:
        s = _cached_sample(data, meta, tok, device)
        samples[tok] = {"images": s.images, "depth": s.depth, "geom": lift_geometry(spec, s.cams).to(device),
                        "semantics": s.semantics, "mask_camera": s.mask_camera}
    return meta, cfg, samples


def _targets_for(tensors: dict, key: str, tokens):
    from training.visa.ago_hook import _FIELDS
    from training.visa.losses import AuditTargets

    out = {}
    for tok in tokens:
        vk = f"vox::{tok}"
        if vk not in tensors:
            continue
        f = {n: tensors[f"{key}::{tok}::{n}"] for n in _FIELDS[1:]}
        f["confusion_set"] = f["confusion_set"].bool()
        out[tok] = AuditTargets(voxel_index=tensors[vk].long(), **f)
    return out


def train_and_eval(name, spec, seed, steps, meta, cfg, samples, tensors, text, words, device, rare_ids,
                   evaluate: bool = True):
    """One run: train_ago's loop on ``device`` (+ the VISA hook when ``spec``), then the val table."""
    from training import train_ago
    from occ_audit_ros.ago.classes import load_class_config
    from training.ago.data import training_vocabulary
    from training.ago.metrics import OccConfusion
    from occ_audit_ros.ago.model import ago_losses, build_model
    from occ_audit_ros.ago.prompts import NoiseSampler, TextBank, encode_vocabulary
    from training.visa.ago_hook import VisaExtraLoss

    t0 = time.time()
    ccfg = load_class_config()
    vocab, label_map = training_vocabulary(ccfg, cfg.get("vocabulary", "closed"))
    bank_cpu = encode_vocabulary(text, vocab)
    bank = TextBank(bank_cpu.names, bank_cpu.emb.to(device), bank_cpu.token_cat.to(device))
    lm = torch.from_numpy(label_map).to(device)
    o = dict(cfg["optim"], steps=steps)
    torch.manual_seed(seed)  # as train_ago.train: the same init for every run of a seed
    model = build_model(dict(cfg["model"], voxel_size=cfg["data"]["voxel_size"]), text.dim, None).to(device)
    sampler = NoiseSampler(text, words, bank_cpu.emb, cfg["noise"].get("threshold", 0.8), seed=seed * 1000,
                           pool_size=cfg["noise"].get("pool_size"))
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    train = meta["train"]
    extra = []
    if spec is not None:
        setting, rel, (lt, la, lg) = spec
        targets = _targets_for(tensors, f"{setting}|{seed}|{int(rel)}", train)
        vcfg = yaml.safe_load(VISA_CONFIG.read_text())
        lcfg = dict(vcfg["losses"], lambda_tax=lt, lambda_attr=la, lambda_graph=lg)
        extra = [VisaExtraLoss(targets, lcfg, steps_per_epoch=math.ceil(len(train) / o["batch_size"]), seed=seed)]
    rng = np.random.default_rng(seed)
    n_noise = cfg["noise"].get("count") or len(bank.token_cat)
    sums: dict[str, float] = {}
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = train_ago.lr_at(step, o)
        idx = rng.choice(len(train), size=o["batch_size"], replace=len(train) < o["batch_size"])
        ss = [samples[train[i]] for i in idx]
        sem = torch.stack([s["semantics"] for s in ss])
        batch = {"images": torch.stack([s["images"] for s in ss]), "depth": torch.stack([s["depth"] for s in ss]),
                 "geoms": [s["geom"] for s in ss], "semantics": sem, "target": lm[sem],
                 "mask_camera": torch.stack([s["mask_camera"] for s in ss]), "tokens": [train[i] for i in idx]}
        noise = sampler.sample(n_noise)[1].to(device)
        out = model(batch["images"], batch["geoms"], bank, noise, batch["depth"])
        loss = ago_losses(batch, out, bank, None, extra, model)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        if o.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
        opt.step()
        if step >= steps - 50:
            for k, v in loss.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / min(50, steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.time() - t0
    if not evaluate:
        return {"train_s": t_train}
    conf = OccConfusion()
    model.eval()
    with torch.no_grad():
        for tok in meta["val"]:
            s = samples[tok]
            pred = model.predict(s["images"][None], [s["geom"]], bank, s["depth"][None], "entropy")["labels"][0]
            conf.update(pred.cpu().numpy(), s["semantics"].cpu().numpy(), s["mask_camera"].cpu().numpy())
    return run_record(name, seed, steps, conf.matrix, ccfg, rare_ids, model, sums, t_train, t0)


def run_record(name, seed, steps, m, ccfg, rare_ids, model, final_losses, t_train, t0, **extra) -> dict:
    """One run's line of results.jsonl (both loops): mIoU, object / rare mIoU, geometric IoU and
    per-class IoU in %, the validation confusion matrix ``m`` (18 x 18 counts), the learned logit
    scale, the last losses and the times (``t0``: the run's start, time.time())."""
    from training.ago.metrics import geometric_iou, iou_per_class, mean_iou

    iou = iou_per_class(m)
    return {"run": name, "seed": seed, "steps": steps, **extra, "miou": mean_iou(m, range(17)) * 100,
            "object_miou": mean_iou(m, ccfg.object_classes) * 100, "rare_miou": mean_iou(m, rare_ids) * 100,
            "geo_iou": geometric_iou(m) * 100,
            "iou": {ccfg.classes[i]: (None if not np.isfinite(iou[i]) else float(iou[i] * 100)) for i in range(17)},
            "final_losses": final_losses, "train_s": t_train, "total_s": time.time() - t0,
            "confusion": np.asarray(m).tolist(), "logit_scale": _logit_scale(model)}


def _logit_scale(model) -> float | None:
    """The grounding head's learned temperature s = exp(log_scale) (None for the linear head)."""
    log_scale = getattr(model.head, "log_scale", None)
    return None if log_scale is None else float(log_scale.detach().exp())


def trainer_files(cache: Path, work: Path) -> dict:
    """Inputs of ``training/train_ago.py`` from the cache (no devkit, no MiniLM): the train / val
    samples files (``ago.data.save_samples_file``), the noise dictionary as text, and one VISA
    targets file (``ago_hook.save_targets``) per audit set ``<setting>|<seed>|<weighted>``."""
    from safetensors.torch import load_file

    from training.ago.data import save_samples_file
    from training.visa.ago_hook import save_targets

    work.mkdir(parents=True, exist_ok=True)
    meta = json.loads((cache / "meta.json").read_text())
    data = np.load(cache / "data.npz")
    files = {}
    for split in ("train", "val"):
        samples = [_cached_sample(data, meta, tok) for tok in meta[split]]
        files[split] = str(save_samples_file(work / f"samples_{split}.safetensors", samples))
    words = json.loads((cache / "words.json").read_text())
    (work / "dictionary.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    files["dictionary"] = str(work / "dictionary.txt")
    tensors = load_file(str(cache / "targets.safetensors"))
    for key in meta["target_sets"]:
        path = work / f"targets-{key.replace('|', '_')}.safetensors"
        save_targets(path, _targets_for(tensors, key, meta["train"]),
                     dict(meta["target_sets"][key], num_samples=len(meta["train"])))
        files[key] = str(path)
    (work / "files.json").write_text(json.dumps(files))
    return files


def trainer_run(name, spec, seed, steps, files, cache: Path, out: Path, device, rare_ids, val_samples,
                evaluate: bool = True):
    """One run through ``train_ago.train(cfg)`` itself: VISA enters through the config's ``visa:``
    switch (``visa.targets`` = the run's audit set, λ's from the run table); evaluation =
    ``train_ago.evaluate`` of the final checkpoint on the validation samples."""
    from training import train_ago

    t0 = time.time()
    cfg = train_ago.load_config(AGO_CONFIG)
    run_dir = out / "_runs" / f"{name}-s{seed}-{steps}"
    cfg.update(seed=int(seed), out_dir=str(run_dir), text_cache=str(cache / "text_cache.safetensors"),
               device=str(device), checkpoint_every=10 ** 9, log_every=50)
    cfg["data"]["samples_file"] = files["train"]
    cfg["noise"]["dictionary_file"] = files["dictionary"]
    cfg["optim"]["steps"] = int(steps)
    if spec is not None:
        setting, rel, (lt, la, lg) = spec
        cfg["visa"] = {"enabled": True, "targets": files[f"{setting}|{seed}|{int(rel)}"],
                       "losses": {"lambda_tax": lt, "lambda_attr": la, "lambda_graph": lg}}
    r = train_ago.train(cfg, resume=False, progress=False)
    t_train = time.time() - t0
    if not evaluate:
        return {"train_s": t_train}
    trained = r["trained"]
    ccfg = trained["class_config"]
    m = train_ago.evaluate(trained["model"], val_samples, trained["bank"], trained["label_map"]).matrix
    last = {}
    logp = Path(r["log"])
    if logp.is_file():
        last = json.loads(logp.read_text().splitlines()[-1])
    return run_record(name, seed, steps, m, ccfg, rare_ids, trained["model"], last, t_train, t0, loop="train_ago")


def worker(args) -> int:
    from safetensors.torch import load_file

    from occ_audit_ros.ago.classes import load_class_config
    from occ_audit_ros.ago.text import CachedTextEncoder

    torch.set_num_threads(1)
    i, n = (int(x) for x in args.worker.split("/"))
    device = torch.device(args.device)
    cache = Path(args.cache)
    ccfg = load_class_config()
    rare = yaml.safe_load(VISA_CONFIG.read_text())["evaluation"]["rare_classes"]
    rare_ids = [ccfg.classes.index(c) for c in rare]
    if args.loop == "trainer":
        from training import train_ago
        from training.ago.data import load_samples_file
        from training.ago.occ_gt import OCC3D_SPEC
        from occ_audit_ros.voxel_grid import VoxelGridSpec

        files = json.loads((Path(args.out) / "_work" / "files.json").read_text())
        vs = yaml.safe_load(AGO_CONFIG.read_text())["data"]["voxel_size"]
        val = [train_ago.sample_to(s, device)
               for s in load_samples_file(files["val"], VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, vs))]

        def one(name, spec, seed, steps, evaluate=True):
            return trainer_run(name, spec, seed, steps, files, cache, Path(args.out), device, rare_ids, val, evaluate)
    else:
        meta, cfg, samples = _load_cache(cache, device)
        tensors = load_file(str(cache / "targets.safetensors"))
        te = meta["text_encoder"]
        text = CachedTextEncoder(OfflineTextEncoder(te["name"], te["dim"]), cache / "text_cache.safetensors")
        words = json.loads((cache / "words.json").read_text())

        def one(name, spec, seed, steps, evaluate=True):
            return train_and_eval(name, spec, seed, steps, meta, cfg, samples, tensors, text, words, device,
                                  rare_ids, evaluate)
    runs = run_table(args.accuracies)
    todo = _order(runs, args.seeds, args.only)[i::n]
    out = Path(args.out)
    deadline = args.start + args.deadline_s
    steps = args.steps
    if steps <= 0:  # automatic: probe the step time with every worker running, then fit the budget
        t_load = time.time() - args.start
        p_short, p_long = args.probe_steps
        short = one("probe", runs["visa"], 0, p_short, evaluate=False)["train_s"]
        long_ = one("probe", runs["visa"], 0, p_long, evaluate=False)["train_s"]
        t0 = time.time()
        one("probe", None, 0, 1)
        t_eval = time.time() - t0
        (out / f"probe-{i}.json").write_text(json.dumps({"step_s": (long_ - short) / (p_long - p_short), "eval_s": t_eval,
                                                         "load_s": t_load, "overhead_s": short}))
        if i == 0:
            while len(list(out.glob("probe-*.json"))) < n and time.time() < args.start + 0.5 * args.deadline_s:
                time.sleep(0.5)
            pr = [json.loads(q.read_text()) for q in out.glob("probe-*.json")]
            step_s = max(p["step_s"] for p in pr)
            per_run = max(p["eval_s"] + p["overhead_s"] for p in pr)
            left = deadline - time.time() - 5.0
            per_worker = math.ceil(len(_order(runs, args.seeds, args.only)) / n)
            steps = int((left / per_worker - per_run) / step_s) // 50 * 50
            steps = max(args.min_steps, min(args.max_steps, steps))
            (out / "steps.json").write_text(json.dumps({"steps": steps, "step_s": step_s, "per_run_s": per_run,
                                                        "probes": pr}))
            print(f"auto steps: {steps} (step {step_s * 1000:.1f} ms with {n} workers, {per_run:.1f} s per run "
                  f"overhead, {left:.0f} s left, {per_worker} runs per worker)", flush=True)
        else:
            while not (out / "steps.json").exists():
                time.sleep(0.5)
            time.sleep(0.2)
            steps = json.loads((out / "steps.json").read_text())["steps"]
    with open(out / f"results.worker-{i}-of-{n}.jsonl", "a") as f:
        for name, seed in todo:
            if time.time() > deadline:
                print(f"worker {i}: deadline, skipping {name} seed {seed}", flush=True)
                continue
            r = one(name, runs[name], seed, steps)
            r["spec"] = runs[name]
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(f"worker {i}: {name} seed {seed}: mIoU {r['miou']:.2f} obj {r['object_miou']:.2f} "
                  f"rare {r['rare_miou']:.2f} ({r['total_s']:.0f} s)", flush=True)
    return 0


#: run first (a deadline drops the end of each worker's list): baseline, VISA, no weighting, the
#: sweep's ends and middle
TIER1 = ("baseline", "visa", "no_reliability", "acc60_w", "acc60_nw", "acc80_w", "acc80_nw", "acc100_w", "acc100_nw")


def _order(runs, seeds, only):
    names = [n for n in runs if not only or n in only]
    first = [n for n in names if n in TIER1]
    rest = [n for n in names if n not in TIER1]
    return [(n, s) for group in (first, rest) for s in seeds for n in group]


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args)
    start = time.time()
    if args.loop == "trainer":
        trainer_files(Path(args.cache), out / "_work")
        print(f"trainer inputs written in {time.time() - start:.0f} s", flush=True)
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, __file__, "run", "--cache", args.cache, "--out", args.out, "--steps", str(args.steps),
               "--min-steps", str(args.min_steps), "--max-steps", str(args.max_steps),
               "--probe-steps", *map(str, args.probe_steps), "--loop", args.loop,
               "--device", args.device, "--worker", f"{i}/{args.workers}", "--deadline-s", str(args.deadline_s),
               "--start", str(start), "--seeds", *map(str, args.seeds), "--accuracies", *map(str, args.accuracies)]
        if args.only:
            cmd += ["--only", *args.only]
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")))
    rc = max(p.wait() for p in procs)
    lines = []
    for p in sorted(out.glob("results.worker-*.jsonl")):
        lines += [ln for ln in p.read_text().splitlines() if ln.strip()]
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} runs in {time.time() - start:.0f} s -> {out / 'results.jsonl'} (worker rc {rc})")
    return rc


# ------------------------------------------------------------------------------------------ report
def _paired(a, b):
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.allclose(a - b, (a - b)[0]):
        return float("nan")
    return float(stats.ttest_rel(b, a).pvalue)


def report(args) -> int:
    rows = [json.loads(ln) for p in args.results for ln in Path(p).read_text().splitlines() if ln.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["run"], {})[r["seed"]] = r
    metrics = [("miou", "mIoU"), ("object_miou", "object mIoU"), ("rare_miou", "rare mIoU")]
    base = by.get("baseline", {})
    lines = ["| run | n | " + " | ".join(f"{t} (mean ± std)" for _, t in metrics) + " | Δ object vs baseline (paired p) |",
             "|---" * 5 + "|---|"]
    summary = {}
    for name, seeds in by.items():
        common = sorted(set(seeds) & set(base))
        cells = []
        for k, _ in metrics:
            v = np.array([seeds[s][k] for s in sorted(seeds)], float)
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}")
            summary[(name, k)] = (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0)
        if name != "baseline" and common:
            a = [base[s]["object_miou"] for s in common]
            b = [seeds[s]["object_miou"] for s in common]
            dm = np.mean(np.subtract(b, a))
            delta = f"{dm:+.2f} (p={_paired(a, b):.3f})"
            for k, _ in metrics:
                a2 = [base[s][k] for s in common]
                b2 = [seeds[s][k] for s in common]
                summary[(name, k, "delta")] = (float(np.mean(np.subtract(b2, a2))), _paired(a2, b2))
        else:
            delta = "—"
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + f" | {delta} |")
    print("\n".join(lines))
    # full paired table (every metric)
    print("\npaired differences vs baseline over common seeds (mean Δ, paired t-test p):")
    for name in by:
        if name == "baseline":
            continue
        parts = []
        for k, t in metrics:
            d = summary.get((name, k, "delta"))
            if d:
                parts.append(f"{t} {d[0]:+.2f} (p={d[1]:.3f})")
        print(f"  {name}: " + "; ".join(parts))
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    abl = [n for n in ("baseline", "visa", "tax_only", "attr_only", "graph_only", "no_tax", "no_attr", "no_graph",
                       "no_reliability", "tax_only_nw") if n in by]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (k, t) in zip(axes, metrics):
        m = [summary[(n, k)][0] for n in abl]
        s = [summary[(n, k)][1] for n in abl]
        ax.bar(range(len(abl)), m, yerr=s, capsize=3, color=["grey"] + ["tab:blue"] * (len(abl) - 1))
        ax.set_xticks(range(len(abl)), abl, rotation=45, ha="right")
        ax.set_title(f"{t} (val)")
        for x, n in enumerate(abl):
            ax.annotate(f"n={len(by[n])}", (x, 0), ha="center", va="bottom", fontsize=7)
    fig.suptitle("VISA ablations on the driving simulator — SIMULATED audits (not a VLM); mean ± std over "
                 f"n seeds{args.note}")
    fig.tight_layout()
    fig.savefig(img / "visa_sim_ablation.png", dpi=110)
    accs = sorted({int(n[3:-2]) for n in by if n.startswith("acc") and n.endswith("_w")})
    result = {}
    if accs:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, (k, t) in zip(axes, metrics):
            if ("baseline", k) in summary:
                bm, bs = summary[("baseline", k)]
                ax.axhspan(bm - bs, bm + bs, color="grey", alpha=0.2)
                ax.axhline(bm, color="grey", label="baseline (no VISA)")
            for suf, lab, c in (("_w", "VISA, reliability-weighted", "tab:blue"),
                                ("_nw", "VISA, unweighted", "tab:red")):
                xs = [a for a in accs if f"acc{a}{suf}" in by]
                m = [summary[(f"acc{a}{suf}", k)][0] for a in xs]
                s = [summary[(f"acc{a}{suf}", k)][1] for a in xs]
                ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=lab, color=c)
                for x, y in zip(xs, m):
                    ax.annotate(f"n={len(by[f'acc{x}{suf}'])}", (x, y), fontsize=7, color=c,
                                textcoords="offset points", xytext=(4, 4 if suf == "_w" else -10))
            ax.set_xlabel("simulated audit accuracy (%)")
            ax.set_title(t)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Audit-accuracy sweep — SIMULATED audits (mean ± std over n seeds){args.note}")
        fig.tight_layout()
        fig.savefig(img / "visa_sim_accuracy_sweep.png", dpi=110)
        for a in accs:
            for suf in ("_w", "_nw"):
                d = summary.get((f"acc{a}{suf}", "miou", "delta"))
                if d:
                    result[f"d_miou_acc{a}{suf}"] = d[0]
    for n in ("visa", "no_reliability"):
        for k, _ in metrics:
            d = summary.get((n, k, "delta"))
            if d:
                result[f"d_{k}_{n}"] = d[0]
                result[f"p_{k}_{n}"] = d[1]
    if ("baseline", "miou") in summary:
        result["baseline_miou"] = summary[("baseline", "miou")][0]
    print(f"plots: {img / 'visa_sim_ablation.png'}, {img / 'visa_sim_accuracy_sweep.png'}")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--val", nargs="+", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--accuracies", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 1.0])
    r = sub.add_parser("run")
    r.add_argument("--cache", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=600, help="steps per run; 0: fit --deadline-s (probe first)")
    r.add_argument("--min-steps", type=int, default=300)
    r.add_argument("--loop", choices=["trainer", "own"], default="trainer",
                   help="trainer: training/train_ago.py's train() with the config's visa: switch (default); "
                        "own: this script's copy of that loop (the partial GPU run of docs/visa.md used it)")
    r.add_argument("--probe-steps", nargs=2, type=int, default=[5, 25], help="two probe lengths (auto steps)")
    r.add_argument("--max-steps", type=int, default=3000)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--accuracies", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 1.0])
    r.add_argument("--only", nargs="*", default=None, help="run names to do (default: all)")
    r.add_argument("--deadline-s", type=float, default=1e9, help="start no run after this many seconds")
    r.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    r.add_argument("--start", type=float, default=time.time(), help=argparse.SUPPRESS)
    q = sub.add_parser("report")
    q.add_argument("--results", nargs="+", required=True)
    q.add_argument("--img", default=str(REPO / "docs" / "img"))
    q.add_argument("--note", default="", help="appended to the plot titles")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
