"""Train AGO (adaptive grounding for open-world 3D occupancy, Li et al. ICCV 2025) on nuScenes-format data.

Usage::

    python training/train_ago.py --config training/config/ago_train.yaml [--set optim.steps=50 ...]
    torchrun --nproc_per_node 2 training/train_ago.py --config training/config/ago_train.yaml   # DDP (gloo on CPU)

Model and losses come from :mod:`occ_audit_ros.ago` (the same code the perception node runs).
Checkpoints: ``<out_dir>/ckpt-<step>/`` safetensors, written atomically; a run resumes from
``<out_dir>/latest`` automatically (``--no-resume`` to start over). Progress: tqdm on rank 0 and
``<out_dir>/log.jsonl``. Python API: :func:`train` accepts ``extra_losses`` (hooks
``fn(batch, outputs, model) -> {name: tensor}``) for additional terms such as VISA's, and a
``callback(step, model) -> dict`` whose figures (e.g. validation mIoU) join the log every
``eval_every`` steps.

Cached-feature mode (``data.features_file``, a :func:`save_feature_cache` file): the samples are the
camera-to-voxel network's voxel features before its last layer (``net.out``), stored once; the model is
the last layer (:class:`FeatureTrunk`) + the head, trained by the same loop (same losses, noise
prompts, schedule, batch sampling, seeding and hooks). Its checkpoints hold only those layers.
"""

from __future__ import annotations

import argparse
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

from occ_audit_ros.paths import REPO_ROOT as REPO  # noqa: E402

from occ_audit_ros.config_overrides import apply_overrides  # noqa: E402
from occ_audit_ros.devices import resolve_device  # noqa: E402
from occ_audit_ros.ago.checkpoint import (latest_checkpoint, load_checkpoint, read_train_state,  # noqa: E402
                                          remove_stale_temporaries, save_checkpoint)
from occ_audit_ros.ago.classes import load_class_config  # noqa: E402
from training.ago.data import collate, load_samples, load_samples_file, training_vocabulary  # noqa: E402
from training.ago.metrics import OccConfusion, occ3d_table  # noqa: E402
from occ_audit_ros.ago.model import ago_losses, build_model  # noqa: E402
from occ_audit_ros.ago.network import ClipPatchEncoder  # noqa: E402
from training.ago.occ_gt import OCC3D_SPEC  # noqa: E402
from occ_audit_ros.ago.prompts import NoiseSampler, dictionary_words, encode_vocabulary  # noqa: E402
from occ_audit_ros.ago.text import build_text_encoder  # noqa: E402
from occ_audit_ros.voxel_grid import VoxelGridSpec  # noqa: E402


def load_config(path, overrides=()) -> dict:
    """YAML config with ``a.b=value`` overrides (values parsed as YAML).

    Raises:
        FileNotFoundError, ValueError: missing file / malformed override.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    cfg = yaml.safe_load(path.read_text())
    apply_overrides(cfg, overrides)
    return cfg


def lr_at(step: int, o: dict) -> float:
    """Linear warm-up from ``warmup_start_lr`` to ``lr`` over ``warmup_steps``, then cosine to
    ``min_lr`` at ``steps`` (AGO §4.1 / ago.md §6)."""
    if step < o["warmup_steps"]:
        return o["warmup_start_lr"] + (o["lr"] - o["warmup_start_lr"]) * step / max(1, o["warmup_steps"])
    t = (step - o["warmup_steps"]) / max(1, o["steps"] - o["warmup_steps"])
    return o["min_lr"] + 0.5 * (o["lr"] - o["min_lr"]) * (1 + math.cos(math.pi * min(1.0, t)))


def _dist_setup() -> tuple[int, int]:
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_everything(cfg: dict, rank: int = 0):
    """Class config, text encoder, vocabulary bank, label map, grid, CLIP bundle (or None), model.

    The text-embedding cache is ``cfg["text_cache"]`` when set (a shared, precomputed safetensors
    file: with every text in it the MiniLM weights are never loaded), else
    ``<out_dir>/text_cache_rank<rank>.safetensors``."""
    ccfg = load_class_config(cfg.get("classes"))
    clip = None
    if cfg.get("clip_model"):
        from occ_audit_ros.clip_model import load_clip

        clip = load_clip(cfg["clip_model"])
    out = Path(cfg["out_dir"])
    cache = cfg.get("text_cache") or out / f"text_cache_rank{rank}.safetensors"
    if cfg.get("text_encoder") == "random":  # diagnostic control; never written to a shared cache file
        from occ_audit_ros.ago.text import CachedTextEncoder

        text = CachedTextEncoder(RandomTextEncoder(int(cfg.get("random_text_dim", 384))))
    else:
        text = build_text_encoder(cfg.get("text_encoder", "minilm"), clip, cache)
    vocab, label_map = training_vocabulary(ccfg, cfg.get("vocabulary", "closed"))
    bank = encode_vocabulary(text, vocab)
    d = cfg["data"]
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, d["voxel_size"])
    mcfg = dict(cfg["model"], voxel_size=d["voxel_size"], num_categories=len(vocab))
    model = build_model(mcfg, text.dim, clip)
    if not cfg["model"].get("learn_logit_scale", True) and hasattr(model.head, "log_scale"):
        model.head.log_scale.requires_grad_(False)  # fixed temperature s = logit_scale_init
    if d.get("features_file"):  # cached voxel features: train the last layer + head only
        model.net = FeatureTrunk(model.net.out)
    return ccfg, text, vocab, bank, label_map, spec, clip, model


def extra_losses_from_config(cfg: dict) -> list:
    """Extra loss hooks named by the config: with ``visa: {enabled: true, ...}`` the VISA terms of
    ``training.visa.ago_hook.build_extra_losses(cfg["visa"], cfg)`` (imported lazily, so the
    trainer works without the VISA package); otherwise ``[]``.

    Returns:
        list of hooks ``fn(batch, outputs, model) -> {name: scalar tensor}``.

    Raises:
        ValueError: ``visa`` is not a mapping, or ``visa.enabled`` is set but the hook module /
            function cannot be imported (message says which).
    """
    v = cfg.get("visa")
    if v is None:
        return []
    if not isinstance(v, dict):
        raise ValueError(f"config 'visa' must be a mapping, got {type(v).__name__}")
    if not v.get("enabled", False):
        return []
    try:
        from training.visa.ago_hook import build_extra_losses
    except ImportError as err:
        raise ValueError(f"visa.enabled is true but training.visa.ago_hook.build_extra_losses "
                         f"cannot be imported ({err}); set visa.enabled=false or install the VISA hook") from err
    return list(build_extra_losses(v, cfg))


def sample_to(s, device):
    """An :class:`AgoSample` with every tensor (and its lift geometry, when it has one) on ``device``."""
    import dataclasses

    return dataclasses.replace(s, images=s.images.to(device), depth=s.depth.to(device),
                               geom=None if s.geom is None else s.geom.to(device),
                               semantics=s.semantics.to(device), mask_camera=s.mask_camera.to(device))


class RandomTextEncoder:
    """Diagnostic text encoder without semantic structure: each text maps to a fixed random unit
    vector (seeded by the SHA-1 of the text), so any two texts are nearly orthogonal (|cos| ~ 1/sqrt(dim)).
    A control for how much a real encoder's similarity structure (e.g. ``terrain`` close to
    ``sidewalk``) costs a grounding head; not a text encoder for open-vocabulary use.

    Args:
        dim: embedding width C.
    """

    def __init__(self, dim: int = 384):
        self.dim = int(dim)
        self.name = f"random-unit:{self.dim}"

    def encode(self, texts) -> torch.Tensor:
        """``texts`` (N strings) -> (N, dim) float32 unit rows.

        Raises:
            ValueError: an empty list or an empty string.
        """
        import hashlib

        texts = list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("texts must be a non-empty list of non-empty strings")
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha1(t.encode("utf-8")).hexdigest()[:15], 16))
            rows.append(torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0))
        return torch.stack(rows)


class FeatureTrunk(torch.nn.Module):
    """The camera-to-voxel network reduced to its last layer, for cached voxel features.

    ``forward(images, geoms, depth)`` keeps :class:`CameraToVoxelNet`'s signature; ``images`` are then the
    cached features (B, hidden, X, Y, Z) float (the input of ``net.out``), ``geoms`` / ``depth`` are
    ignored. Returns (B, X, Y, Z, C) like the full network.

    Args:
        out: the network's last layer (``CameraToVoxelNet.out``, a 1x1x1 ``Conv3d`` hidden -> C).
    """

    def __init__(self, out: torch.nn.Module):
        super().__init__()
        self.out = out

    def forward(self, images: torch.Tensor, geoms=None, depth=None) -> torch.Tensor:
        """(B, hidden, X, Y, Z) -> (B, X, Y, Z, C).

        Raises:
            ValueError: ``images`` is not 5-D (raw images given to a cached-feature model).
        """
        if images.ndim != 5:
            raise ValueError(f"cached-feature model expects (B, hidden, X, Y, Z) features, got {tuple(images.shape)}")
        w = self.out.weight
        if isinstance(self.out, torch.nn.Conv3d) and tuple(w.shape[2:]) == (1, 1, 1):
            # the 1x1x1 convolution as a matrix product (same values; far faster backward on a CPU)
            return torch.nn.functional.linear(images.permute(0, 2, 3, 4, 1), w.flatten(1), self.out.bias)
        return self.out(images).permute(0, 2, 3, 4, 1)


@torch.no_grad()
def trunk_features(model, images, geoms, depth=None) -> torch.Tensor:
    """Voxel features entering the network's last layer (``model.net.out``), read by a forward hook
    (the network's own forward runs unchanged).

    Args:
        model: :class:`AgoModel` with a :class:`CameraToVoxelNet`.
        images: (B, Ncam, 3, H, W) float [0, 1]; geoms: B lift geometries; depth: (B, Ncam, Hd, Wd) or None.

    Returns:
        (B, hidden, X, Y, Z) float.
    """
    got = []
    h = model.net.out.register_forward_hook(lambda mod, inp, out: got.append(inp[0].detach()))
    try:
        model.net(images, geoms, depth)
    finally:
        h.remove()
    return got[0]


def save_feature_cache(path, model, samples, meta: dict | None = None, batch_size: int = 4) -> Path:
    """Write the voxel features of ``samples`` (:func:`trunk_features`) to one safetensors file,
    atomically: per sample ``<i>/feats`` (hidden, X, Y, Z) float16, ``<i>/semantics`` uint8 Occ3D
    labels, ``<i>/mask_camera`` uint8, ``<i>/seen`` uint8 (seen by a camera: the voxel set L_align
    uses); tokens and ``meta`` as JSON metadata. Read by
    :func:`load_feature_samples` (``data.features_file``).

    Raises:
        ValueError: labels outside 0-255.
    """
    from safetensors.torch import save_file

    from occ_audit_ros.atomic import atomic_path

    was = model.training
    model.eval()
    tensors, tokens = {}, []
    for i0 in range(0, len(samples), batch_size):
        part = samples[i0:i0 + batch_size]
        b = collate(part)
        feats = trunk_features(model, b["images"], b["geoms"], b["depth"]).cpu()
        for j, s in enumerate(part):
            i = i0 + j
            if int(s.semantics.min()) < 0 or int(s.semantics.max()) > 255:
                raise ValueError(f"sample {s.token}: semantics outside 0-255")
            tensors[f"{i}/feats"] = feats[j].to(torch.float16).contiguous()
            tensors[f"{i}/semantics"] = s.semantics.cpu().to(torch.uint8).contiguous()
            tensors[f"{i}/mask_camera"] = s.mask_camera.cpu().to(torch.uint8).contiguous()
            tensors[f"{i}/seen"] = s.geom.valid.any(0).reshape(s.semantics.shape).cpu().to(torch.uint8).contiguous()
            tokens.append(s.token)
    model.train(was)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"ago_features": json.dumps(tokens), "meta": json.dumps(meta or {})})
    return path


def load_feature_samples(path, spec: VoxelGridSpec | None = None) -> list:
    """Samples of a :func:`save_feature_cache` file as :class:`AgoSample` whose ``images`` are the
    cached features (hidden, X, Y, Z) float32, ``depth`` an empty tensor and ``geom`` a
    :class:`LiftGeometry` holding only the camera visibility (``valid`` (1, V) = seen by any camera;
    no projections), or None for a file without it.

    Raises:
        FileNotFoundError: no file; ValueError: not a feature file, or a grid other than ``spec``'s.
    """
    from safetensors import safe_open

    from training.ago.data import AgoSample

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} not found")
    out = []
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
        if "ago_features" not in md:
            raise ValueError(f"{path} is not an AGO feature file (save_feature_cache)")
        for i, tok in enumerate(json.loads(md["ago_features"])):
            sem = f.get_tensor(f"{i}/semantics").long()
            if spec is not None and tuple(sem.shape) != tuple(spec.dims):
                raise ValueError(f"{path}: sample {i} grid {tuple(sem.shape)} != {spec.dims}")
            geom = None
            if f"{i}/seen" in f.keys():
                from occ_audit_ros.ago.network import LiftGeometry

                geom = LiftGeometry(torch.zeros(1, 0, 2), f.get_tensor(f"{i}/seen").bool().reshape(1, -1),
                                    torch.zeros(1, 0), tuple(sem.shape))
            out.append(AgoSample(tok, f.get_tensor(f"{i}/feats").float(), torch.zeros(0), geom, sem,
                                 f.get_tensor(f"{i}/mask_camera").bool(), None))
    return out


def rng_states(batch_rng: np.random.Generator, sampler=None, align_target=None) -> dict:
    """Every RNG the training loop draws from, as JSON: the batch sampler's numpy generator, the noise
    sampler's (``NoiseSampler.rng``), the oracle aligner's torch generator, torch's CPU and CUDA
    generators (dropout, ...) and Python's ``random``; restored by :func:`restore_rng_states` so a
    resumed run draws exactly what an uninterrupted one would."""
    import base64
    import random

    def tensor_b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.cpu().numpy().tobytes()).decode()

    gen = getattr(align_target, "gen", None)
    return {"batch": batch_rng.bit_generator.state,
            "noise": sampler.rng.bit_generator.state if sampler is not None else None,
            "align": tensor_b64(gen.get_state()) if gen is not None else None,
            "torch": tensor_b64(torch.get_rng_state()),
            "cuda": [tensor_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def restore_rng_states(state: dict, batch_rng: np.random.Generator, sampler=None, align_target=None,
                       device=None) -> None:
    """Set the generators of :func:`rng_states` back to ``state`` (a missing entry is left as seeded);
    ``device``: where the oracle aligner draws (its generator is created there first)."""
    import base64
    import random

    def b64_tensor(text: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())

    if state.get("batch"):
        batch_rng.bit_generator.state = state["batch"]
    if state.get("noise") and sampler is not None:
        sampler.rng.bit_generator.state = state["noise"]
    if state.get("align") and align_target is not None:
        align_target._on(torch.device(device) if device is not None else torch.device("cpu"))  # creates .gen
        align_target.gen.set_state(b64_tensor(state["align"]))
    if state.get("torch"):
        torch.set_rng_state(b64_tensor(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([b64_tensor(s) for s in state["cuda"]])
    if state.get("python"):
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step`` (written after the checkpoint a run resumes from), so
    the resumed run's lines do not repeat them; atomic rewrite."""
    if not log_path.is_file():
        return
    from occ_audit_ros.atomic import write_bytes_atomic

    lines = log_path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) > step:
                continue
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a killed run
        keep.append(line)
    if keep != lines:
        write_bytes_atomic(log_path, "".join(keep).encode())


def train(cfg: dict, extra_losses=None, resume: bool = True, progress: bool = True, callback=None) -> dict:
    """Run training as configured.

    Returns:
        ``{"step", "losses" (last), "log" path, "checkpoint", "stopped_early", "device", "wall_s"}`` (JSON)
        plus the live objects under ``"trained"``: ``{"model"`` (the trained network, on ``device``, equal to
        the final checkpoint), ``"bank"`` (training text bank), ``"label_map"``, ``"class_config"``,
        ``"spec"`` (voxel grid)}``, so a
        caller evaluates without rebuilding or reloading anything.

    Args:
        cfg: parsed config (see ``training/config/ago_train.yaml``).
        extra_losses: list of hooks ``fn(batch, outputs, model) -> {name: scalar tensor}``; their
            terms are added to the total and logged. ``outputs["class_logits"]`` is
            (B, X, Y, Z, K + 1) (Occ3D labels 0-17 for the closed vocabulary). ``None`` (default):
            the hooks the config names (:func:`extra_losses_from_config`: ``visa.enabled``).
        resume: continue from ``<out_dir>/latest`` when present.
        callback: optional ``fn(step, model) -> dict`` run on rank 0 after every ``eval_every``-th
            step (config key, default off) with the model in train mode; its figures are added to
            that step's ``log.jsonl`` line (learning curves, e.g. validation mIoU).

    ``data.features_file`` (cached-feature mode, module docstring) replaces the samples by a
    :func:`save_feature_cache` file and the network by its last layer.

    Raises:
        ValueError: inconsistent config (alignment without a shared CLIP space, CLIP alignment in
            cached-feature mode, or oracle alignment on a feature file without camera visibility).
    """
    rank, world = _dist_setup()
    device = resolve_device(cfg.get("device", "auto"))
    if extra_losses is None:
        extra_losses = extra_losses_from_config(cfg)
    torch.manual_seed(cfg.get("seed", 0))  # same init on every rank (DDP also broadcasts)
    ccfg, text, vocab, bank, label_map, spec, clip, model = build_everything(cfg, rank)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    align_enc = align_target = None
    acfg = cfg.get("align", {}) or {}
    source = acfg.get("source", "clip")
    if acfg.get("enabled") and cfg["data"].get("features_file") and source != "oracle":
        raise ValueError("align.source 'clip' needs the images; with data.features_file (cached features) "
                         "only align.source 'oracle' works")
    if acfg.get("enabled") and source == "oracle":
        from training.ago.oracle_vlm import OracleVoxelVLM

        align_target = OracleVoxelVLM(text, ccfg.phrases, acfg.get("noise", 1.0), acfg.get("confusion", 0.2),
                                      seed=cfg.get("seed", 0) * 1000 + 17 + rank)
    elif acfg.get("enabled"):
        if source != "clip":
            raise ValueError(f"align.source must be 'clip' or 'oracle', got {source!r}")
        if clip is None or cfg.get("text_encoder") != "clip":
            raise ValueError("align.enabled needs clip_model and text_encoder: clip (image and text in one space)")
        align_enc = ClipPatchEncoder(clip).to(device)
    model.to(device)
    d, o = cfg["data"], cfg["optim"]
    gt_dir = d.get("gt_dir")

    def _load():
        if d.get("features_file"):  # cached voxel features (save_feature_cache)
            return load_feature_samples(d["features_file"], spec)
        if d.get("samples_file"):  # precomputed (save_samples_file): no nuScenes devkit needed
            return load_samples_file(d["samples_file"], spec)
        return load_samples(d.get("dataroot"), d.get("annotations"), d.get("tokens"), spec, d["image_scale"],
                            gt_dir, d.get("gt_pixel_stride", 16), progress=progress and rank == 0)

    samples = _load() if rank == 0 else None  # rank 0 first: it writes any missing GT cache files
    if world > 1:
        dist.barrier()
    if samples is None:
        samples = _load()
    if align_target is not None and any(s.geom is None for s in samples):
        raise ValueError(f"L_align needs each sample's camera visibility; {d.get('features_file')} has none "
                         "(rewrite it with save_feature_cache)")
    samples = [sample_to(s, device) for s in samples]
    sampler = None
    if cfg.get("noise", {}).get("enabled", True):
        sampler = NoiseSampler(text, dictionary_words(path=cfg["noise"].get("dictionary_file")), bank.emb, cfg["noise"].get("threshold", 0.8),
                               seed=cfg.get("seed", 0) * 1000 + rank, pool_size=cfg["noise"].get("pool_size"))
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    step = 0
    resumed_from = None
    if rank == 0:
        remove_stale_temporaries(out)  # of a save killed mid-way
    if resume and (ck := latest_checkpoint(out)) is not None:
        step = int(load_checkpoint(ck, model, opt)["step"])
        resumed_from = ck
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    meta = {"config": cfg, "vocabulary": vocab, "embed_dim": text.dim, "text_encoder": text.name,
            "grid": {"lower": spec.lower, "upper": spec.upper, "voxel_size": spec.voxel_size},
            "image_hw": list(samples[0].images.shape[-2:])}
    log_path = out / "log.jsonl"
    rng = np.random.default_rng(cfg.get("seed", 0) + 7919 * rank)
    if resumed_from is not None:  # rank 0's generators are saved; other ranks restart theirs from the seed
        if rank == 0:
            restore_rng_states(read_train_state(resumed_from).get("rng", {}), rng, sampler, align_target, device)
            _truncate_log(log_path, step)
    n_noise = cfg.get("noise", {}).get("count") or len(bank.token_cat)
    from tqdm import tqdm

    bar = tqdm(total=o["steps"], initial=step, desc="train_ago", disable=not progress or rank != 0)
    losses = {}
    t_start = time.monotonic()
    max_wall = float(o["max_wall_s"]) if o.get("max_wall_s") else None  # seconds of training (not loading)
    stopped_early = False
    while step < o["steps"]:
        stop = bool((max_wall and time.monotonic() - t_start > max_wall)
                    or (o.get("stop_step") and step >= int(o["stop_step"])))
        if world > 1:  # any rank's stop stops all
            flag = torch.tensor([float(stop)], device=device)
            dist.all_reduce(flag)
            stop = flag.item() > 0
        if stop:  # wall budget spent or optim.stop_step reached (schedule of optim.steps kept); all ranks stop
            stopped_early = True
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, o)
        # each rank draws its own samples (DistributedSampler-equivalent for a handful of frames)
        idx = rng.choice(len(samples), size=o["batch_size"], replace=len(samples) < o["batch_size"])
        batch = collate([samples[i] for i in idx], label_map)
        noise = sampler.sample(n_noise)[1].to(device) if sampler is not None else None
        outputs = ddp(batch["images"], batch["geoms"], bank, noise, batch["depth"])
        loss = ago_losses(batch, outputs, bank, align_enc, extra_losses, model, align_target)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        if o.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
        opt.step()
        step += 1
        losses = {k: float(v.detach()) for k, v in loss.items()}
        if world > 1:
            t = torch.tensor([losses[k] for k in sorted(losses)], device=device)
            dist.all_reduce(t)
            losses = {k: float(v) / world for k, v in zip(sorted(losses), t)}
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total']:.3f}")
        if rank == 0:
            every = cfg.get("eval_every")
            extra = callback(step, model) if callback is not None and every and step % int(every) == 0 else None
            if step % cfg.get("log_every", 10) == 0 or step == o["steps"] or extra:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "lr": lr_at(step - 1, o), **losses, **(extra or {})}) + "\n")
            if step % cfg.get("checkpoint_every", 50) == 0 or step == o["steps"]:
                save_checkpoint(out, step, model, opt, meta,
                                train_state={"rng": rng_states(rng, sampler, align_target)})
    bar.close()
    if rank == 0:
        ck = latest_checkpoint(out)
        if stopped_early and (ck is None or ck.name != f"ckpt-{step:06d}"):
            save_checkpoint(out, step, model, opt, meta,
                                train_state={"rng": rng_states(rng, sampler, align_target)})
        text.save(only_if_changed=True)
    if world > 1:
        dist.barrier()
    return {"step": step, "losses": losses, "log": str(log_path), "checkpoint": str(latest_checkpoint(out)),
            "stopped_early": stopped_early, "device": str(device), "wall_s": round(time.monotonic() - t_start, 1),
            "trained": {"model": model, "bank": bank, "label_map": label_map, "class_config": ccfg, "spec": spec}}


@torch.no_grad()
def evaluate(model, samples, bank, label_map, identifier: str | None = "entropy") -> OccConfusion:
    """Confusion of a model's predictions (training-label space mapped back to Occ3D labels for the
    closed vocabulary) over samples, inside ``mask_camera``."""
    conf = OccConfusion()
    model.eval()
    for s in samples:
        b = collate([s], label_map)
        pred = model.predict(b["images"], b["geoms"], bank, b["depth"], identifier)["labels"][0]
        conf.update(pred.cpu().numpy(), s.semantics.cpu().numpy(), s.mask_camera.cpu().numpy())
    model.train()
    return conf


def main(argv=None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "training" / "config" / "ago_train.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="overrides key.sub=value")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval", action="store_true", help="print the Occ3D table on the training samples after")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        result = train(cfg, resume=not args.no_resume)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        trained = result.pop("trained")
        print(json.dumps(result))
        if args.eval and cfg.get("vocabulary", "closed") == "closed":
            model, bank, lm, ccfg, spec = (trained[k] for k in ("model", "bank", "label_map", "class_config", "spec"))
            d = cfg["data"]
            samples = load_samples(d.get("dataroot"), d.get("annotations"), d.get("tokens"), spec,
                                   d["image_scale"], d.get("gt_dir"))
            print(occ3d_table(evaluate(model, samples, bank, lm).matrix, ccfg).format())
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
