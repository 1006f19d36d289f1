"""Write the SemAbs golden fixtures by running the released Semantic Abstraction code (run by hand).

The fixtures in ``test/data/semabs_golden/`` let the tests check, without the released code and without
network access, that ``occ_audit_ros.semabs`` with ``decoder_convention="reference"`` computes what the
released networks compute (real-stanford/semantic-abstraction, commit e76495e, MIT licence, ``net.py``).
This script contains none of that code: it imports it from a checkout given on the command line, builds
its ``SemAbs3D`` (OVSSC) and ``SemAbsVOOL`` at reduced width on seeded, perturbed random weights, runs
them on seeded inputs and writes

* ``ovssc/ovssc.pth`` and ``vool/vool.pth`` in the released layout (``{"net": state dict with the
  ``module.`` prefix of DistributedDataParallel, "optimizer": Lamb state, "epochs": int}``), each with
  an ``args.pkl`` (``argparse.Namespace`` of the training arguments) beside it;
* ``golden.npz``: the inputs (2 scenes, 3,000 points with duplicates, points on the workspace faces and a
  few outside, 3 labels / descriptions, 500 queries per label about half outside the workspace) and the
  expected logits.

Sizes: grid 16, 3 U-Net levels, f_maps 8, 4 GroupNorm groups, 3 feature channels (so GroupNorm's
1-group fallback for 3 < 4 channels runs), point-encoder hidden width 32, pointing dim 16.

Set-up (outside the repository; the released code needs ``torch_scatter``, ``torchtyping`` and a
``typeguard`` before 3.0)::

    git clone https://github.com/real-stanford/semantic-abstraction /tmp/upstream_semabs
    git -C /tmp/upstream_semabs checkout e76495e
    python3 -m venv /tmp/upstream_venv
    /tmp/upstream_venv/bin/pip install torch==2.13.0 numpy==1.26.4 torchtyping "typeguard<3"
    /tmp/upstream_venv/bin/pip install --no-build-isolation torch-scatter==2.1.2   # compiles (minutes)
    PYTHONPATH=/tmp/upstream_semabs /tmp/upstream_venv/bin/python scripts/make_semabs_golden.py \\
        --upstream /tmp/upstream_semabs \\
        --out test/data/semabs_golden

``net.py`` imports ``CLIP.clip`` (torchvision, ftfy, ...) only for ``ClipWrapper``, which the two
networks used here never call; this script registers an empty stand-in module under that name so the
CLIP dependencies are not needed. Everything else (``net.py``, ``unet3d.py``, ``arm/optim/lamb.py``,
``torch_scatter``) is the released code and its real dependencies. The script only needs torch and
numpy besides, not this package.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch

GRID = 16
LEVELS = 3
F_MAPS = 8
GROUPS = 4
CHANNELS = 3
HIDDEN = 32
POINTING_DIM = 16
B, L, N, M = 2, 3, 3000, 500
BOUNDS = [[-1.0, -1.0, -0.1], [1.0, 1.0, 1.9]]
#: relation names of each (scene, description), [scene][description]
RELATIONS = [["behind", "on the left of", "in"], ["in front of", "on", "on the right of"]]


def training_args(task: str) -> argparse.Namespace:
    """The training arguments the released scripts pickle to ``args.pkl`` (values for the reduced nets).

    The field names are those of the released ``utils.config_parser`` plus ``--log`` / ``--approach``.
    """
    return argparse.Namespace(
        file_path="/data/dataset", voxel_shape=[GRID, GRID, GRID], load=None, batch_size=B,
        num_warmup_steps=1024, save_freq=1, eval_freq=5, gpus=["0", "1"], seed=0, epochs=200, num_descs=4,
        saliency_vmin=None, lr=1e-3, weight_decay=1e-5, grad_max_norm=2.0, xyz_pts_noise=0.0,
        num_input_pts=N, num_output_pts=400000, pointing_dim=POINTING_DIM, unet_f_maps=F_MAPS,
        unet_num_channels=CHANNELS, unet_num_groups=GROUPS, unet_num_levels=LEVELS, num_patches=4,
        patch_mask_cutoff=0.004, domain_randomization=True, use_pts_feat_extractor=True,
        pts_feat_extractor_hidden_dim=HIDDEN, subtract_mean_relevancy=True, offset_patch_mask=False,
        balance_positive_negative=False, balance_spatial_relations=True, always_replace_subsample_pts=False,
        balance_spatial_sampling=True, decoder_concat_xyz_pts=True, use_amp=False, num_workers=8,
        dr_pos=0.1, dr_orn=0.3, dr_scale=0.1, scene_bounds=BOUNDS, device="cuda",
        pointing_method="cosine_sim", saliency_config="ours", network_inputs=["saliency"],
        lr_scheduler_type="cosine_with_restarts", reduce_method="max", log=f"logs/{task}_golden",
        approach="semantic_abstraction")


def make_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded points, relevancy and queries (see the module docstring)."""
    lo, up = np.asarray(BOUNDS[0]), np.asarray(BOUNDS[1])
    xyz = rng.uniform(lo, up, size=(B, N, 3))
    xyz[:, :300] = xyz[:, 300:600]                               # duplicates
    for k in range(3):                                          # points on the faces of the box
        xyz[:, 600 + 40 * k:620 + 40 * k, k] = lo[k]
        xyz[:, 620 + 40 * k:640 + 40 * k, k] = up[k]
    xyz[:, 720:728] = np.where(rng.random((B, 8, 3)) < 0.5, lo, up)   # corners
    xyz[:, 728:740] = rng.uniform(lo - 0.3, up + 0.3, size=(B, 12, 3))  # a few outside (clamped)
    q_in = rng.uniform(lo, up, size=(B, L, M // 2, 3))
    q_out = rng.uniform(lo - 0.6, up + 0.6, size=(B, L, M - M // 2, 3))
    queries = np.concatenate([q_in, q_out], axis=2)
    queries[:, :, :4] = [lo, up, (lo + up) / 2, [lo[0], up[1], lo[2]]]
    f = np.float32
    return {"xyz": xyz.astype(f), "ovssc_relevancy": rng.normal(0, 1, (B, L, N)).astype(f),
            "queries": queries.astype(f),
            "vool_target_relevancy": rng.normal(0, 1, (B, L, N)).astype(f),
            "vool_reference_relevancy": rng.normal(0, 1, (B, L, N)).astype(f),
            "vool_relations": np.asarray(RELATIONS, dtype="<U16")}


def perturb_(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Add seeded noise to every parameter so GroupNorm affines and biases are not at their init."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def save_released(net: torch.nn.Module, lamb_cls, args: argparse.Namespace, folder: Path, name: str) -> None:
    """``folder/name.pth`` in the released layout and ``folder/args.pkl``."""
    folder.mkdir(parents=True, exist_ok=True)
    opt = lamb_cls(net.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay, adam=False)
    ckpt = {"net": {f"module.{k}": v.detach().clone() for k, v in net.state_dict().items()},
            "optimizer": opt.state_dict(), "epochs": 200}
    torch.save(ckpt, folder / f"{name}.pth")
    with open(folder / "args.pkl", "wb") as fh:
        pickle.dump(args, fh, protocol=4)


def main(argv=None) -> int:
    """CLI: ``--upstream DIR --out DIR [--seed S]``; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, type=Path, help="checkout of real-stanford/semantic-abstraction")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    upstream = a.upstream.resolve()
    if not (upstream / "net.py").is_file():
        ap.error(f"{upstream} has no net.py")
    # net.py imports its siblings by top-level name, so the checkout must be on PYTHONPATH.
    import importlib.util

    spec = importlib.util.find_spec("net")
    if spec is None or spec.origin is None or Path(spec.origin).resolve() != upstream / "net.py":
        ap.error(f"run with PYTHONPATH={upstream} so that upstream's net.py and its siblings import")
    clip_pkg = types.ModuleType("CLIP")
    clip_mod = types.ModuleType("CLIP.clip")
    clip_mod.ClipWrapper = None  # only SemanticAwareVOOL uses it
    clip_pkg.clip = clip_mod
    sys.modules.setdefault("CLIP", clip_pkg)
    sys.modules.setdefault("CLIP.clip", clip_mod)
    import net as upstream_net  # noqa: E402
    from arm.optim.lamb import Lamb  # noqa: E402

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    inputs = make_inputs(np.random.default_rng(a.seed))
    out = {k: v for k, v in inputs.items()}
    t = {k: torch.from_numpy(v) for k, v in inputs.items() if v.dtype == np.float32}

    args = training_args("ovssc")
    common = dict(voxel_shape=tuple(args.voxel_shape), scene_bounds=BOUNDS, unet_num_channels=CHANNELS,
                  unet_f_maps=F_MAPS, unet_num_groups=GROUPS, unet_num_levels=LEVELS,
                  network_inputs=["saliency"], use_pts_feat_extractor=True, pts_feat_extractor_hidden_dim=HIDDEN,
                  reduce_method="max", device="cpu", decoder_concat_xyz_pts=True, batch_size=B)
    ovssc = upstream_net.SemAbs3D(**common).eval()
    perturb_(ovssc, gen)
    with torch.no_grad():
        out["ovssc_logits"] = ovssc(input_xyz_pts=t["xyz"], input_feature_pts=t["ovssc_relevancy"][..., None],
                                    tsdf_vol=None, output_xyz_pts=t["queries"]).numpy().astype(np.float32)
    save_released(ovssc, Lamb, args, a.out / "ovssc", "ovssc")

    vargs = training_args("vool")
    vool = upstream_net.SemAbsVOOL(pointing_method="cosine_sim", pointing_dim=POINTING_DIM, **common).eval()
    perturb_(vool, gen)
    with torch.no_grad():
        rel_by_desc = [[RELATIONS[b][q] for b in range(B)] for q in range(L)]
        out["vool_logits"] = vool(
            output_xyz_pts=t["queries"], spatial_relation_name=rel_by_desc, input_xyz_pts=t["xyz"],
            input_target_saliency_pts=t["vool_target_relevancy"][..., None],
            input_reference_saliency_pts=t["vool_reference_relevancy"][..., None],
            tsdf_vol=None).numpy().astype(np.float32)
    save_released(vool, Lamb, vargs, a.out / "vool", "vool")
    tmp = a.out / "golden.npz.tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, a.out / "golden.npz")
    print(f"wrote {a.out}: ovssc logits {out['ovssc_logits'].shape} in [{out['ovssc_logits'].min():.3f}, "
          f"{out['ovssc_logits'].max():.3f}], vool logits {out['vool_logits'].shape} in "
          f"[{out['vool_logits'].min():.3f}, {out['vool_logits'].max():.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
