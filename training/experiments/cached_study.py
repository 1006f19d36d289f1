"""Two-stage study design for the simulator studies of VISA (``visa_sim.py``) and AGO
(``ago_sim_experiments.py diagnose``) at a size two CPU cores run, and its uncached (full) form.

* **Stage 1** (once per seed and training vocabulary): ``train_ago.train`` trains the whole AGO model
  (``training/config/ago_train_sim_cached.yaml``) on the training split; the voxel features entering
  its last layer (``net.out``) are written for the training and validation samples
  (``train_ago.save_feature_cache``).
* **Stage 2** (every configuration): ``train_ago.train`` again, with ``data.features_file`` set, trains a
  freshly initialised last layer + head (seeded like a full run) on those features, with or without
  the extra terms (VISA's ``visa:`` switch), and evaluates on the cached validation features. The runs
  of one seed share stage 1's features, the initialisation, the batch order and the noise words
  (paired comparison).
* **Full mode** (``mode="full"``, for a GPU): stage 2 without the cache: every configuration trains
  the whole model from scratch through the same ``train_ago.train`` call (data.samples_file).

Everything reads one work folder written by :func:`prepare_data` (samples files, the noise dictionary,
a text-embedding cache with every text the runs use, so MiniLM is loaded only there).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from occ_audit_ros.paths import REPO_ROOT as REPO

CONFIG = REPO / "training" / "config" / "ago_train_sim_cached.yaml"

__all__ = ["CONFIG", "prepare_data", "run_config", "stage1", "stage2", "confusion_record", "learning_curve"]


def prepare_data(train_dirs, val_dirs, work, seeds=(0, 1, 2), config=CONFIG, extra_texts=(), overrides=()) -> dict:
    """Write the work folder: ``train_samples.safetensors`` / ``val_samples.safetensors``
    (``ago.data.save_samples_file`` of every sample of the simulator folders), ``dictionary.txt``,
    ``text_cache.safetensors`` (MiniLM: the closed and open-world vocabularies, the noise-word pool of
    every seed for both, the 17 classes as names / phrases / synonyms, the simulated VLM targets of
    L_align, ``extra_texts``) and ``files.json`` (those paths).

    Args:
        train_dirs, val_dirs: simulator output folders (``training.sim.generate driving``; GT grid =
            the config's voxel size).
        work: output folder.
        config, overrides: the study's training config and ``a.b=value`` overrides (e.g. the full-size
            grid ``data.voxel_size=0.8 data.image_scale=0.25``), recorded in ``files.json`` so every run
            of the work folder uses them.

    Returns:
        the ``files.json`` dict.

    Raises:
        FileNotFoundError / ValueError: from the loaders (missing tables, GT of another grid).
    """
    from training import train_ago
    from training.ago.data import load_samples, save_samples_file, training_vocabulary
    from training.ago.occ_gt import OCC3D_SPEC
    from occ_audit_ros.ago.classes import load_class_config
    from occ_audit_ros.ago.prompts import NoiseSampler, dictionary_words, encode_vocabulary, write_dictionary
    from occ_audit_ros.ago.text import build_text_encoder
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = train_ago.load_config(config, overrides)
    d = cfg["data"]
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, d["voxel_size"])
    files = {"config": str(config), "config_overrides": list(overrides)}
    for split, dirs in (("train", train_dirs), ("val", val_dirs)):
        samples = []
        for root in map(Path, dirs):
            samples += load_samples(root, root / "sim_infos.pkl", "all", spec, d["image_scale"], root / "gts",
                                    d.get("gt_pixel_stride", 16))
        files[split] = str(save_samples_file(work / f"{split}_samples.safetensors", samples))
        files[f"{split}_tokens"] = [s.token for s in samples]
    files["dictionary"] = str(write_dictionary(work / "dictionary.txt"))
    words = dictionary_words(path=files["dictionary"])
    text = build_text_encoder("minilm", cache_file=work / "text_cache.safetensors")
    ccfg = load_class_config()
    texts = [p for ph in ccfg.phrases.values() for p in ph] + [n.replace("_", " ") for n in ccfg.classes]
    from training.ago.oracle_vlm import oracle_target_texts

    texts += [t for ts in oracle_target_texts(ccfg.phrases).values() for t in ts]  # L_align's simulated VLM
    texts += list(extra_texts)
    text.encode(texts)
    for mode in ("closed", "open_world_pretrain"):
        vocab, _ = training_vocabulary(ccfg, mode)
        bank = encode_vocabulary(text, vocab)
        for seed in seeds:  # the pool each run draws (train_ago: seed * 1000 + rank 0)
            NoiseSampler(text, words, bank.emb, cfg["noise"]["threshold"], seed=int(seed) * 1000,
                         pool_size=cfg["noise"]["pool_size"])
    text.save()
    files["text_cache"] = str(work / "text_cache.safetensors")
    (work / "files.json").write_text(json.dumps(files))
    return files


def run_config(work, seed: int, out_dir, overrides=()) -> dict:
    """The training config of one run: the work folder's config and overrides (:func:`prepare_data`)
    + its files + ``seed`` / ``out_dir`` + ``overrides`` (``a.b=value`` strings)."""
    from training import train_ago

    work = Path(work)
    files = json.loads((work / "files.json").read_text())
    return train_ago.load_config(files.get("config", CONFIG), [*files.get("config_overrides", []),
                                          f"seed={int(seed)}", f"out_dir={out_dir}",
                                          f"data.samples_file={files['train']}", f"text_cache={files['text_cache']}",
                                          f"noise.dictionary_file={files['dictionary']}", *overrides])


def stage1(work, seed: int, steps: int, vocabulary: str = "closed", overrides=(), device: str = "cpu",
           eval_every: int | None = None) -> dict:
    """Train the whole model once (``train_ago.train``) and cache its voxel features.

    Reuses ``<work>/features/<vocabulary>-s<seed>-{train,val}.safetensors`` when both exist.

    Returns:
        ``{"train": path, "val": path, "wall_s", "miou_val" (stage-1 model, %), "log"}``.
    """
    from training import train_ago
    from training.ago.data import load_samples_file

    work = Path(work)
    name = f"{vocabulary}-s{seed}"
    fdir = work / "features"
    paths = {k: fdir / f"{name}-{k}.safetensors" for k in ("train", "val")}
    info_path = fdir / f"{name}.json"
    if all(p.is_file() for p in paths.values()) and info_path.is_file():
        return json.loads(info_path.read_text())
    t0 = time.time()
    out = work / "stage1" / name
    cfg = run_config(work, seed, out, [f"vocabulary={vocabulary}", f"optim.steps={int(steps)}", f"device={device}",
                                       *([f"eval_every={int(eval_every)}"] if eval_every else []), *overrides])
    files = json.loads((work / "files.json").read_text())
    cb = (_val_callback(cfg, lambda spec: load_samples_file(files["val"], spec))
          if eval_every and vocabulary == "closed" else None)
    r = train_ago.train(cfg, resume=True, progress=False, callback=cb)
    tr = r["trained"]
    model, spec = tr["model"], tr["spec"]
    dev = next(model.parameters()).device
    info = {"wall_train_s": r["wall_s"], "steps": r["step"], "log": r["log"], "curve": learning_curve(r["log"])}
    for split in ("train", "val"):
        samples = [train_ago.sample_to(s, dev) for s in load_samples_file(files[split], spec)]
        save_feature_cache(paths[split], model, samples, {"stage1": str(out), "seed": seed, "vocabulary": vocabulary,
                                                          "steps": r["step"]})
        if split == "val" and vocabulary == "closed":
            m = train_ago.evaluate(model, samples, tr["bank"], tr["label_map"], identifier=None).matrix
            info["stage1_val"] = confusion_record(m)
    info.update({k: str(p) for k, p in paths.items()}, wall_s=round(time.time() - t0, 1))
    info_path.write_text(json.dumps(info))
    return info


def save_feature_cache(path, model, samples, meta):
    """``train_ago.save_feature_cache`` (kept as a name here so the drivers import one module)."""
    from training import train_ago

    return train_ago.save_feature_cache(path, model, samples, meta)


def confusion_record(m, rare_classes=None) -> dict:
    """Figures of an 18 x 18 validation confusion (Occ3D labels, rows GT): mIoU (17), object mIoU,
    rare mIoU (``rare_classes`` names; default ``training/config/visa.yaml``), geometric IoU, per-class
    IoU (%, None for a class absent from GT and predictions) and the matrix itself."""
    import yaml

    from occ_audit_ros.ago.classes import load_class_config
    from training.ago.metrics import geometric_iou, iou_per_class, mean_iou

    ccfg = load_class_config()
    if rare_classes is None:
        rare_classes = yaml.safe_load((REPO / "training" / "config" / "visa.yaml").read_text())["evaluation"]["rare_classes"]
    m = np.asarray(m)
    iou = iou_per_class(m)
    return {"miou": mean_iou(m, range(17)) * 100, "object_miou": mean_iou(m, ccfg.object_classes) * 100,
            "rare_miou": mean_iou(m, [ccfg.classes.index(c) for c in rare_classes]) * 100,
            "geo_iou": geometric_iou(m) * 100,
            "iou": {ccfg.classes[i]: (None if not np.isfinite(iou[i]) else float(iou[i] * 100)) for i in range(17)},
            "confusion": m.tolist()}


def _val_callback(cfg: dict, load_val, identifier: str | None = None):
    """``train_ago.train`` callback: validation mIoU / object mIoU (%) of the model being trained
    (closed vocabulary); ``load_val(spec)`` gives the validation samples (loaded once)."""
    from training import train_ago
    from occ_audit_ros.ago.prompts import TextBank

    state = {}

    def callback(step, model):
        dev = next(model.parameters()).device
        if "bank" not in state:
            _, _, _, bank, lm, spec, _, _ = train_ago.build_everything(cfg)
            state.update(bank=TextBank(bank.names, bank.emb.to(dev), bank.token_cat.to(dev)), lm=lm,
                         val=[train_ago.sample_to(s, dev) for s in load_val(spec)])
        m = train_ago.evaluate(model, state["val"], state["bank"], state["lm"], identifier=identifier).matrix
        r = confusion_record(m)
        return {"val_miou": round(r["miou"], 3), "val_object_miou": round(r["object_miou"], 3)}

    return callback


def learning_curve(log_path) -> list[dict]:
    """``log.jsonl`` lines (step, losses, and ``val_miou`` where the callback ran)."""
    p = Path(log_path)
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.is_file() else []


def stage2(work, seed: int, name: str, overrides=(), visa: dict | None = None, features: dict | None = None,
           mode: str = "cached", steps: int = 600, eval_every: int | None = None, device: str = "cpu",
           evaluator=None, identifier: str | None = None) -> dict:
    """One configuration through ``train_ago.train``.

    Args:
        work: work folder (:func:`prepare_data`).
        seed: run seed (initialisation, batch order, noise words, VISA edge sampling).
        name: run name (folder ``<work>/runs/<mode>/<name>-s<seed>``).
        overrides: config overrides of this configuration.
        visa: the trainer's ``visa:`` mapping (``enabled`` added) or None.
        features: :func:`stage1` output (cached mode).
        mode: ``"cached"`` (last layer + head on ``features``) or ``"full"`` (whole model from scratch).
        steps: optimiser steps.
        eval_every: validation mIoU every this many steps into ``log.jsonl`` (learning curve).
        evaluator: optional ``fn(model, trained, val_samples) -> dict`` of extra figures (open world).
        identifier: the evaluation's open-world identifier (None: grounding branch argmax).

    Returns:
        the run's record: :func:`confusion_record` figures, ``run``, ``seed``, ``steps``, ``mode``,
        ``logit_scale``, ``final_losses``, ``curve`` (log lines), times, and ``evaluator``'s figures.

    Raises:
        ValueError: unknown mode, or cached mode without ``features``.
    """
    from training import train_ago
    from training.ago.data import load_samples_file

    if mode not in ("cached", "full"):
        raise ValueError(f"mode must be 'cached' or 'full', got {mode!r}")
    if mode == "cached" and not features:
        raise ValueError("cached mode needs the stage-1 features (stage1(...))")
    t0 = time.time()
    work = Path(work)
    out = work / "runs" / mode / f"{name}-s{seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    sets = [f"optim.steps={int(steps)}", f"device={device}", *overrides]
    if mode == "cached":
        sets.append(f"data.features_file={features['train']}")
    if eval_every:
        sets.append(f"eval_every={int(eval_every)}")
    cfg = run_config(work, seed, out, sets)
    if visa is not None:
        cfg["visa"] = {"enabled": True, **visa}
    files = json.loads((work / "files.json").read_text())
    val = None

    def _val(spec, dev):
        nonlocal val
        if val is None:
            raw = (train_ago.load_feature_samples(features["val"], spec) if mode == "cached"
                   else load_samples_file(files["val"], spec))
            val = [train_ago.sample_to(s, dev) for s in raw]
        return val

    callback = None
    if eval_every and cfg.get("vocabulary", "closed") == "closed":
        callback = _val_callback(cfg, lambda spec: (train_ago.load_feature_samples(features["val"], spec)
                                                    if mode == "cached" else load_samples_file(files["val"], spec)),
                                 identifier)

    r = train_ago.train(cfg, resume=False, progress=False, callback=callback)
    t_train = time.time() - t0
    tr = r["trained"]
    model = tr["model"]
    dev = next(model.parameters()).device
    vs = _val(tr["spec"], dev)
    rec = {"run": name, "seed": int(seed), "steps": r["step"], "mode": mode}
    if cfg.get("vocabulary", "closed") == "closed":
        rec.update(confusion_record(train_ago.evaluate(model, vs, tr["bank"], tr["label_map"], identifier).matrix))
    if evaluator is not None:
        rec.update(evaluator(model, dict(tr, cfg=cfg), vs))
    log_scale = getattr(model.head, "log_scale", None)
    rec.update(logit_scale=None if log_scale is None else float(log_scale.detach().exp()),
               final_losses=r["losses"], curve=learning_curve(r["log"]), train_s=round(t_train, 1),
               total_s=round(time.time() - t0, 1))
    return rec
