"""Train the SemAbs 3D networks (OVSSC completion or VOOL localisation) and evaluate them.

Semantic Abstraction (Ha & Song, CoRL 2022) Sec. 4 / App. 6.4: binary cross-entropy with logits on
query points (padding masked), AdamW, lr 5e-4, cosine annealing with warm restarts. Only the 3D
networks are trained; relevancy comes with the data.

Usage:
    python training/train_semabs.py --config training/config/semabs_cpu.yaml [--set train.max_steps=200 ...]
    torchrun --nproc_per_node 2 training/train_semabs.py --config training/config/semabs_cpu.yaml   # DDP, gloo on CPU

Resume: rerun the same command; the latest checkpoint ``<out_dir>/last.safetensors`` (written atomically
every ``train.ckpt_every`` steps) restores weights, AdamW state, scheduler position and step. The data
of step s on rank k is drawn from a generator seeded with (seed, s, k), so a resumed run continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from occ_audit_ros.paths import REPO_ROOT as ROOT  # noqa: E402

from occ_audit_ros.config_overrides import apply_overrides  # noqa: E402
from occ_audit_ros.devices import resolve_device  # noqa: E402
from training.semabs.batching import num_queried_labels, ovssc_batch, vool_batch  # noqa: E402
from occ_audit_ros.semabs.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from training.semabs.metrics import REFERENCE_CUTOFFS, choose_cutoff, iou_table  # noqa: E402
from occ_audit_ros.semabs.model import RELATIONS, SemAbsConfig  # noqa: E402
from training.semabs.toy import toy_scene  # noqa: E402

DEFAULTS = {
    "task": "ovssc",
    "seed": 0,
    "out_dir": "runs/semabs",
    "model": {},
    "data": {"source": "toy", "train_scenes": 64, "val_scenes": 8, "toy": {}},
    "train": {"max_steps": 100, "batch_size": 2, "labels_per_scene": 4, "descs_per_scene": 4,
              "num_input_points": 4000, "num_queries": 2000, "lr": 5.0e-4, "weight_decay": 1.0e-2,
              "restart_steps": 50, "restart_mult": 1, "grad_clip": 2.0, "ckpt_every": 25, "threads": 0,
              "device": "cpu", "augment": {"rotation": 0.0, "translation": 0.0, "scale": 0.0},
              "warmup_steps": 0, "time_budget_s": 0, "export_weights": False, "amp": None},
    "eval": {"grid": 32, "num_input_points": 4000, "cutoffs": "reference"},
}


def deep_update(base: dict, new: dict) -> dict:
    """Recursive dict merge (``new`` wins); returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None, overrides: list[str] | None = None) -> dict:
    """YAML config merged over :data:`DEFAULTS`; ``overrides`` are ``a.b=value`` (value parsed as YAML).

    Raises:
        ValueError: on a malformed override or an unknown task.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        with open(path) as f:
            cfg = deep_update(cfg, yaml.safe_load(f) or {})
    apply_overrides(cfg, overrides or [])
    if cfg["task"] not in ("ovssc", "vool"):
        raise ValueError(f"task must be 'ovssc' or 'vool', got {cfg['task']!r}")
    return cfg


class SceneSet:
    """Deterministic scene source: scene i of a split is a pure function of (seed, split, i).

    ``data.source: toy`` uses :func:`training.semabs.toy.toy_scene` (test/smoke data only);
    ``data.source: sim`` reads the simulator's shards from ``data.dirs[split]`` (one sample per view,
    :mod:`training.semabs.sim_data`); ``data.source: pack`` reads a compact pack
    ``data.packs[split]`` (:mod:`training.semabs.pack`, made from those shards).

    Raises:
        ValueError: unknown source or no folder/pack for the split.
    """

    SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}

    def __init__(self, cfg: dict, split: str) -> None:
        self.cfg, self.split = cfg, split
        data = cfg["data"]
        self.mcfg = SemAbsConfig.from_dict(cfg["model"])
        self._cache: dict[int, dict] = {}
        if data["source"] == "sim":
            from training.semabs.sim_data import load_sim_samples

            dirs = data.get("dirs") or {}
            if split not in dirs:
                raise ValueError(f"data.dirs has no folder for split {split!r}")
            samples = load_sim_samples(dirs[split], cfg["seed"], int(data.get("max_cloud_points", 20000)))
            self._cache = dict(enumerate(samples))
            self.size = len(samples)
        elif data["source"] == "pack":
            from training.semabs.pack import read_pack

            packs = data.get("packs") or {}
            if split not in packs:
                raise ValueError(f"data.packs has no pack for split {split!r}")
            samples = read_pack(Path(packs[split]) if Path(packs[split]).is_absolute() else ROOT / packs[split])
            self._cache = dict(enumerate(samples))
            self.size = len(samples)
        elif data["source"] == "toy":
            self.size = int(data["train_scenes"] if split == "train" else data["val_scenes"])
        else:
            raise ValueError(f"data.source must be 'toy', 'sim' or 'pack', got {data['source']!r}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        """Scene ``i`` of the split.

        Raises:
            IndexError: ``i`` outside ``[0, len)`` (also ends iteration; without it a pack would run on
                into generated toy scenes).
        """
        if not 0 <= i < self.size:
            raise IndexError(f"scene {i} of split {self.split!r} out of range (size {self.size})")
        if i not in self._cache:
            rng = np.random.default_rng([self.cfg["seed"], self.SPLIT_OFFSET[self.split] + i])
            self._cache[i] = toy_scene(rng, self.mcfg.workspace, **self.cfg["data"].get("toy", {}))
        return self._cache[i]


def with_relevancy_skip(state: dict) -> dict:
    """An OVSSC state dict widened for ``SemAbsConfig.relevancy_skip``: the decoder's first Linear gets two
    zero input columns (cell relevancy, cell occupied), so the widened network computes exactly the
    source network's logits until training moves those weights.

    Args:
        state: ``SemAbsOVSSC.state_dict()`` without the skip (``decoder.0.weight`` (D, D + 3)).

    Returns:
        a new dict; ``decoder.0.weight`` (D, D + 5), every other tensor shared.
    """
    out = dict(state)
    w = state["decoder.0.weight"]
    out["decoder.0.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 2)], dim=1)
    return out


def make_batch(task: str, tcfg: dict, scenes: list[dict], rng: np.random.Generator, workspace=None) -> dict:
    """One batch for the task (see :mod:`training.semabs.batching`), augmented per ``train.augment``
    within ``workspace`` (default: :class:`SemAbsConfig`'s)."""
    if task == "ovssc":
        batch = ovssc_batch(scenes, rng, tcfg["num_input_points"], tcfg["labels_per_scene"], tcfg["num_queries"],
                            balanced=bool(tcfg.get("ovssc_balanced", False)),
                            positive_fraction=float(tcfg.get("ovssc_positive_fraction", 0.0)),
                            importance_weighted=bool(tcfg.get("ovssc_importance_weighted", False)))
    else:
        batch = vool_batch(scenes, rng, tcfg["num_input_points"], tcfg["descs_per_scene"], tcfg["num_queries"],
                           balance_relations=bool(tcfg.get("vool_balance_relations", False)))
    aug = tcfg.get("augment") or {}
    if any(float(aug.get(k, 0.0)) for k in ("rotation", "translation", "scale")):
        augment_batch(batch, rng, float(aug.get("rotation", 0.0)), float(aug.get("translation", 0.0)),
                      float(aug.get("scale", 0.0)),
                      workspace if workspace is not None else SemAbsConfig.from_dict({}).workspace)
    return batch


def augment_batch(batch: dict, rng: np.random.Generator, rotation: float, translation: float, scale: float,
                  workspace) -> dict:
    """Random similarity transform per scene, applied to input and query points together (in place).

    SemAbs' training code augments with a random rigid + scale transform, then filters by the bounds.
    Here, per scene: rotation about the vertical axis through the workspace centre by U(-rotation,
    rotation) rad, uniform scale 1 + U(-scale, scale) about that centre, horizontal translation
    U(-translation, translation) m per axis. Input points that leave the workspace are replaced by
    copies of an in-bounds point of the same scene (no effect on a max-scatter); queries that leave it
    are masked out. Labels stay valid because points and queries move together; viewer-centric VOOL
    relations stay consistent with the cloud, which moves with them.

    Args:
        batch: from :func:`make_batch` (``xyz`` (B, N, 3), ``queries`` (B, K, M, 3), ``mask`` (B, K, M)).
        rng: numpy generator (deterministic per step).

    Returns:
        the same dict.
    """
    lo, up = (torch.tensor(v, dtype=torch.float32) for v in (workspace.lower, workspace.upper))
    centre = (lo + up) / 2
    for b in range(batch["xyz"].shape[0]):
        a = rng.uniform(-rotation, rotation)
        c, s = math.cos(a), math.sin(a)
        k = 1.0 + rng.uniform(-scale, scale)
        R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float32) * k
        t = torch.tensor([rng.uniform(-translation, translation), rng.uniform(-translation, translation), 0.0],
                         dtype=torch.float32)
        x = (batch["xyz"][b] - centre) @ R.T + centre + t
        inside = ((x >= lo) & (x <= up)).all(-1)
        if inside.any() and not inside.all():
            src = inside.nonzero()[:, 0]
            fill = src[torch.from_numpy(rng.integers(0, len(src), int((~inside).sum())))]
            x[~inside] = x[fill]
            for key in ("relevancy", "target_relevancy", "reference_relevancy"):
                if key in batch:
                    batch[key][b][:, ~inside] = batch[key][b][:, fill]
        batch["xyz"][b] = x
        q = (batch["queries"][b] - centre) @ R.T + centre + t
        batch["queries"][b] = q
        batch["mask"][b] &= ((q >= lo) & (q <= up)).all(-1)
    return batch


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over items of 1 - soft IoU (our deviation; soft Jaccard, Rahman & Wang, ISVC 2016).

    An item is one (scene, label) row of the batch; per item, with p = sigmoid(logit), y the target and
    w the query weight, soft IoU = sum(w m p y) / sum(w m (p + y - p y)) over its M queries (m = mask).
    With importance weights (:func:`ovssc_batch`) both sums estimate the sums over uniform queries, so
    the term approximates the item's IoU on the lattice. It counts every item once, as the benchmark's
    per-(view, label) IoU does, where the BCE's query mean is dominated by large structures.

    Args:
        logits, target: (B, K, M) float (target in {0, 1}); mask: (B, K, M) bool; weight: (B, K, M) float
            or None (all ones).

    Returns:
        scalar float32 tensor in [0, 1]; items without any unmasked query are skipped (0 when none is left).
    """
    p = torch.sigmoid(logits.float())
    w = mask.float() if weight is None else mask.float() * weight.float()
    y = target.float()
    inter = (w * p * y).sum(-1)
    union = (w * (p + y - p * y)).sum(-1)
    keep = mask.any(-1) & (union > 0)
    if not bool(keep.any()):
        return logits.float().sum() * 0.0
    return (1.0 - inter[keep] / union[keep]).mean()


def forward_loss(model: torch.nn.Module, task: str, batch: dict, amp: str | None = None,
                 soft_iou_weight: float = 0.0) -> torch.Tensor:
    """Masked BCE-with-logits over query points (SemAbs Sec. 4). Returns a scalar float32 tensor.

    A batch ``weight`` (B, K, M) (importance weights of :func:`ovssc_batch`) multiplies each query's
    term; the sum is still divided by the number of unmasked queries (unbiased for the uniform loss).
    ``soft_iou_weight`` > 0 adds that times :func:`soft_iou_loss` (same weights; ``train.ovssc_soft_iou_weight``,
    our deviation).

    The batch's tensors are moved to the device of the model's parameters. ``amp="bf16"`` runs the
    forward pass under bfloat16 autocast (``train.amp``); the loss is computed in float32.

    Raises:
        ValueError: for another ``amp`` value.
    """
    if amp not in (None, "bf16"):
        raise ValueError(f"train.amp must be null or 'bf16', got {amp!r}")
    dev = next(model.parameters()).device
    batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        if task == "ovssc":
            logits = model(batch["xyz"], batch["relevancy"], batch["queries"])
        else:
            logits = model(batch["xyz"], batch["target_relevancy"], batch["reference_relevancy"], batch["relations"],
                           batch["queries"])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["target"], reduction="none")
    mask = batch["mask"].float()
    weighted = loss * batch["weight"] if "weight" in batch else loss  # importance weights (ovssc_batch)
    total = (weighted * mask).sum() / mask.sum().clamp(min=1.0)
    if soft_iou_weight:
        total = total + soft_iou_weight * soft_iou_loss(logits, batch["target"], batch["mask"], batch.get("weight"))
    return total


@torch.no_grad()
def predict_items(model: torch.nn.Module, task: str, scene: dict, num_points: int, rng) -> list[tuple]:
    """Logits at all valid queries of a scene, one item per label (OVSSC) or description (VOOL).

    OVSSC uses the scene's queried label set only (its first ``num_relevancy_labels`` labels; hidden VOOL
    targets appended with a zero relevancy row are not OVSSC items). Runs on the model's device.

    Returns:
        list of ``(name, queries (M, 3), logits (M,), target (M,) bool)``.
    """
    from occ_audit_ros.semabs.pointcloud import sample_points

    dev = next(model.parameters()).device
    xyz, rel = sample_points(scene["xyz"], scene["relevancy"], num_points, rng)
    valid = scene["valid"]
    q = torch.from_numpy(scene["queries"][valid])[None].to(dev)
    x = torch.from_numpy(xyz)[None].to(dev)
    items = []
    if task == "ovssc":
        n = num_queried_labels(scene)
        logits = model(x, torch.from_numpy(rel[:n])[None].to(dev), q)[0].float().cpu()
        for k, lab in enumerate(scene["labels"][:n]):
            items.append((lab, scene["queries"][valid], logits[k].numpy(), scene["occupancy"][k][valid]))
    else:
        descs = scene["descriptions"]
        if descs:
            ti = torch.tensor([d[0] for d in descs])
            ri = torch.tensor([d[2] for d in descs])
            r = torch.from_numpy(rel)
            logits = model(x, r[ti][None].to(dev), r[ri][None].to(dev),
                           torch.tensor([[RELATIONS.index(d[1]) for d in descs]], device=dev), q)[0].float().cpu()
            for d, (_, relation, _) in enumerate(descs):
                items.append((relation, scene["queries"][valid], logits[d].numpy(), scene["vool_occupancy"][d][valid]))
    return items


def evaluate(model: torch.nn.Module, task: str, cfg: dict, scenes, cutoff: float | None = None) -> dict:
    """Voxel IoU at ``eval.grid``^3 (SemAbs protocol, :mod:`training.semabs.metrics`).

    Args:
        cutoff: fixed logit cutoff (test splits); None sweeps the reference cutoffs and picks the best
            (validation split).

    Returns:
        dict with ``cutoff``, ``mean_iou``, ``per_name`` (mean IoU per label/relation) and ``items``.
    """
    model.eval()
    cutoffs = REFERENCE_CUTOFFS if cutoff is None else np.array([cutoff])
    mcfg = SemAbsConfig.from_dict(cfg["model"])
    rng = np.random.default_rng([cfg["seed"], 7])
    names, pts, preds, gts = [], [], [], []
    for i in range(len(scenes)):
        for name, q, logit, tgt in predict_items(model, task, scenes[i], cfg["eval"]["num_input_points"], rng):
            names.append(name), pts.append(q), preds.append(logit), gts.append(tgt)
    table = iou_table(pts, preds, gts, mcfg.workspace, cutoffs, cfg["eval"]["grid"])
    best, mean = choose_cutoff(table, cutoffs)
    col = int(np.argmin(np.abs(cutoffs - best)))
    per = {}
    for n in sorted(set(names)):
        vals = table[[j for j, m in enumerate(names) if m == n], col]
        per[n] = float(np.nanmean(vals)) if np.any(np.isfinite(vals)) else float("nan")
    return {"cutoff": best, "mean_iou": mean, "per_name": per, "items": len(names)}


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: dict, progress: bool = True) -> dict:
    """Run (or resume) training as configured; returns a summary dict (rank 0: with validation IoU).

    Under ``torchrun`` (env ``WORLD_SIZE`` > 1) a gloo (CPU) or NCCL (CUDA) process group is created and
    the model wrapped in DistributedDataParallel; each rank draws its own scenes; rank 0 writes
    checkpoints.

    Schedule: ``train.warmup_steps`` steps of linear warm-up (lr * (s + 1) / warmup), then cosine annealing
    with warm restarts (``restart_steps``, ``restart_mult``). With ``train.time_budget_s`` > 0 (single
    process), the warm-up steps are timed (the second half of them) and ``max_steps`` is set so that the run
    fits the budget; the cosine then runs one cycle over the remaining steps. The chosen ``max_steps`` is
    stored in the checkpoint's ``train_state`` and reused on resume. ``train.export_weights`` also writes
    ``<out_dir>/weights.safetensors`` (weights only) at the end. ``train.init_weights``: a checkpoint whose
    weights start the run (fine-tuning; fresh optimiser and schedule; ignored once ``last.safetensors``
    exists). ``train.ovssc_positive_fraction`` / ``train.ovssc_balanced`` / ``train.ovssc_importance_weighted``:
    OVSSC query sampling and its importance weights (:func:`training.semabs.batching.ovssc_batch`;
    default uniform as in the paper). ``train.ovssc_soft_iou_weight``: weight of the per-item soft-IoU term
    (:func:`soft_iou_loss`; default 0, the paper's plain BCE). ``train.vool_balance_relations``: draw a scene's
    descriptions with relations balanced, as the reference code does (default false, the shipped VOOL runs'
    uniform draw; :func:`training.semabs.batching.vool_batch`).

    Raises:
        ValueError: ``train.device`` other than cpu / cuda / auto, or cuda without a GPU;
            ``train.init_weights`` holds another task or model configuration; a time budget with
            several processes or fewer than 4 warm-up steps; ``train.ovssc_soft_iou_weight`` with task vool.
    """
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    own_group = False
    if world_env > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        own_group = True
    rank, world = _dist_info()
    tcfg = cfg["train"]
    if tcfg.get("threads"):
        torch.set_num_threads(int(tcfg["threads"]))
    task = cfg["task"]
    mcfg = SemAbsConfig.from_dict(cfg["model"])
    if str(tcfg.get("device", "cpu")) not in ("cpu", "cuda", "auto"):  # a GPU per rank is chosen here, not named
        raise ValueError(f"train.device must be cpu, cuda or auto, got {tcfg.get('device')!r}")
    device = resolve_device(tcfg.get("device", "cpu"), rank, tf32=True)
    torch.manual_seed(cfg["seed"])
    model = build_model(task, mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=int(tcfg["restart_steps"]),
                                                                 T_mult=int(tcfg["restart_mult"]))
    out = Path(cfg["out_dir"])
    last = out / "last.safetensors"
    step = 0
    warmup = int(tcfg.get("warmup_steps") or 0)
    budget = float(tcfg.get("time_budget_s") or 0.0)
    max_steps = int(tcfg["max_steps"])
    if budget > 0 and (world > 1 or warmup < 4):
        raise ValueError("train.time_budget_s needs a single process and train.warmup_steps >= 4")
    base_lr = float(tcfg["lr"])
    soft_iou_weight = float(tcfg.get("ovssc_soft_iou_weight") or 0.0)
    if soft_iou_weight and task != "ovssc":
        raise ValueError("train.ovssc_soft_iou_weight applies to task ovssc only")

    def cosine(total: int):
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, total), T_mult=1)

    init = tcfg.get("init_weights")
    if init and not last.is_file():
        # fine-tuning: weights only (the optimiser and schedule start fresh); a resume ignores this
        source, init_task, init_cfg, _, _ = load_checkpoint(init)
        state = source.state_dict()
        if (task == "ovssc" and init_task == task and mcfg.relevancy_skip and not init_cfg.relevancy_skip
                and dataclasses.replace(init_cfg, relevancy_skip=True,
                                        relevancy_skip_scale=mcfg.relevancy_skip_scale) == mcfg):
            state = with_relevancy_skip(state)
        elif init_task != task or init_cfg != mcfg:
            raise ValueError(f"train.init_weights {init}: task/model config {init_task}/{init_cfg} differ from "
                             f"this run's {task}/{mcfg}")
        model.load_state_dict(state)
    if last.is_file():
        _, _, _, state, _ = load_checkpoint(last, optimizer=opt, model=model)
        step = int(state["step"])
        if budget > 0 and "max_steps" in state:
            max_steps = int(state["max_steps"])
            sched = cosine(max_steps - warmup)
        sched.load_state_dict(state["scheduler"])
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
           if world > 1 else model)
    scenes = SceneSet(cfg, "train")
    bar = tqdm(total=max_steps, initial=step, desc=f"semabs {task}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    losses = []
    t0 = time.time()
    t_half = None
    model.train()
    while step < max_steps:
        if step < warmup:
            for g in opt.param_groups:
                g["lr"] = base_lr * (step + 1) / warmup
        rng = np.random.default_rng([cfg["seed"], step, rank])
        idx = rng.choice(len(scenes), int(tcfg["batch_size"]), replace=len(scenes) < int(tcfg["batch_size"]))
        batch = make_batch(task, tcfg, [scenes[int(i)] for i in idx], rng, mcfg.workspace)
        loss = forward_loss(ddp, task, batch, tcfg.get("amp"), soft_iou_weight=soft_iou_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
        opt.step()
        if step >= warmup:
            sched.step()
        step += 1
        if budget > 0 and step == warmup // 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_half = time.time()
        if budget > 0 and step == warmup and t_half is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            per_step = (time.time() - t_half) / (warmup - warmup // 2)
            max_steps = warmup + max(1, int((budget - (time.time() - t0)) / per_step))
            sched = cosine(max_steps - warmup)
            bar.total = max_steps
            print(f"time budget {budget:.0f} s: {per_step * 1000:.1f} ms/step -> max_steps={max_steps}", flush=True)
        losses.append(loss.detach().item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if rank == 0 and (step % int(tcfg["ckpt_every"]) == 0 or step == max_steps):
            save_checkpoint(last, model, task, mcfg, optimizer=opt,
                            train_state={"step": step, "scheduler": sched.state_dict(), "world_size": world,
                                         "seed": cfg["seed"], "max_steps": max_steps})
    bar.close()
    if rank == 0 and tcfg.get("export_weights"):
        save_checkpoint(out / "weights.safetensors", model, task, mcfg,
                        train_state={"step": step, "world_size": world, "seed": cfg["seed"], "max_steps": max_steps,
                                     "seconds": time.time() - t0, "device": str(device)})
    summary = {"task": task, "step": step, "world_size": world, "losses": losses,
               "seconds": time.time() - t0, "device": str(device)}
    if own_group:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "training" / "config" / "semabs_cpu.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="overrides key.sub=value (YAML values)")
    ap.add_argument("--eval", action="store_true", help="evaluate <out_dir>/last.safetensors on the val split")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.eval:
        model, task, mcfg, _, _ = load_checkpoint(Path(cfg["out_dir"]) / "last.safetensors")
        res = evaluate(model, task, cfg, SceneSet(cfg, "val"))
        print(json.dumps(res, indent=1))
        for split in cfg["eval"].get("test_splits", []):
            print(split, json.dumps(evaluate(model, task, cfg, SceneSet(cfg, split), cutoff=res["cutoff"])))
        return 0
    summary = train(cfg, progress=not args.no_progress)
    if _dist_info()[0] == 0 and int(os.environ.get("RANK", "0")) == 0:
        ls = summary["losses"]
        print(f"RESULT task={summary['task']} step={summary['step']} world_size={summary['world_size']} "
              f"first_loss={ls[0] if ls else float('nan'):.4f} last_loss={ls[-1] if ls else float('nan'):.4f} "
              f"seconds={summary['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
