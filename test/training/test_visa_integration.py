"""VISA end to end on the real keyframe (audits -> grounding -> targets -> loss on a logit grid),
and the inference-unchanged guarantee."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch

from occ_audit_ros import paths
from training.visa.generate import main as generate_main
from training.visa.grounding import keyframe_semantics_from_lidar
from training.visa.integration import VisaTerm, concat_targets, flatten_logits, keyframe_targets
from training.visa.losses import pooled_probabilities
from training.visa.store import read_store
from training.visa.taxonomy import K_OBJ
from occ_audit_ros.voxel_grid import VoxelGridSpec

OCC3D = VoxelGridSpec(lower=(-40.0, -40.0, -1.0), upper=(40.0, 40.0, 5.4), voxel_size=0.4)


def test_flatten_logits_matches_flat_voxel_order():
    x = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2, 2)
    flat = flatten_logits(x)
    # Row b·XYZ + (ix·Y + iy)·Z + iz holds the C logits of that voxel.
    assert torch.equal(flat[8 + (1 * 2 + 0) * 2 + 1], x[1, :, 1, 0, 1])
    assert torch.equal(flatten_logits(x.permute(0, 2, 3, 4, 1), channels_last=True), flat)
    with pytest.raises(ValueError, match="5-D"):
        flatten_logits(x[0])


def test_real_keyframe_audits_train_a_logit_grid_towards_the_gt_classes(keyframe, tmp_path):
    assert generate_main(["--out", str(tmp_path), "--no-progress"]) == 0
    audits = read_store(tmp_path / "audits.jsonl")
    sem, _, _ = keyframe_semantics_from_lidar(keyframe, OCC3D)
    both, stats = keyframe_targets(keyframe, sem, OCC3D, audits, batch_index=0)
    assert stats["rows"] >= 20 and stats["rows"] <= stats["grounded"]
    second, _ = keyframe_targets(keyframe, sem, OCC3D, audits, batch_index=1)
    batch = concat_targets([both, second])
    assert batch.voxel_index.shape[0] == 2 * stats["rows"]
    shifted = torch.where(both.voxel_index >= 0, both.voxel_index + OCC3D.num_voxels, -1)
    assert torch.equal(batch.voxel_index[stats["rows"]:, : shifted.shape[1]], shifted)  # batch offset
    # A free logit grid [B=1, C=18, 200, 200, 16] trained with VISA alone (L_occ left out).
    logits = torch.zeros(1, 18, *OCC3D.dims, requires_grad=True)
    term = VisaTerm({"lambda_tax": 1.0, "lambda_attr": 0.2, "lambda_graph": 0.1})
    out = term(logits, both, epoch=None)
    out["total"].backward()
    assert logits.grad.is_contiguous()  # the gradient keeps the grid's layout
    g = flatten_logits(logits.grad).abs().sum(1)
    touched = torch.nonzero(g).flatten()
    used = torch.unique(both.voxel_index[(both.voxel_index >= 0) & (both.weight[:, None] > 0)])
    assert set(touched.tolist()) == set(used.tolist())  # VISA only touches matched voxels
    # Training: the same targets on a compact (U, C) table of the used voxels (the rest of the
    # grid receives no VISA gradient, shown above).
    uniq, inverse = torch.unique(both.voxel_index.clamp(min=0), return_inverse=True)
    compact = dataclasses.replace(both, voxel_index=torch.where(both.voxel_index >= 0, inverse, -1))
    table = torch.zeros(len(uniq), 18, requires_grad=True)
    opt = torch.optim.SGD([table], lr=50.0)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = term(table, compact, epoch=None)["total"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        pbar = pooled_probabilities(table, compact.voxel_index)
    w = both.weight > 0
    hits = (pbar.argmax(1) == both.gt)[w].float().mean().item()
    assert hits == 1.0  # with α = 0.3 the GT one-hot dominates every target
    assert len(K_OBJ) == pbar.shape[1]


SCRIPT = textwrap.dedent('''
    import hashlib, sys, torch
    import numpy as np

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.BatchNorm3d(8),
                                   torch.nn.ReLU(), torch.nn.Conv3d(8, 18, 1))

    def digest(model):
        h = hashlib.sha256()
        for k, v in model.state_dict().items():
            h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def train(model, visa=None, targets=None, steps=3):
        torch.manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            x = torch.randn(2, 4, 6, 6, 4)
            y = torch.randint(0, 18, (2, 6, 6, 4))
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)  # the backbone's L_occ
            if visa is not None:
                loss = loss + visa(logits, targets, epoch=5.0)["total"]
            opt.zero_grad(); loss.backward(); opt.step()
        return model

    x_eval = torch.randn(1, 4, 6, 6, 4, generator=torch.Generator().manual_seed(7))
    plain = train(make_model())
    plain.eval()
    with torch.no_grad():
        out_plain = plain(x_eval)
    assert not any(m.startswith("training.visa") for m in sys.modules)

    from training.visa.integration import VisaTerm
    from training.visa.losses import AuditTargets, vlm_distribution
    a = {"class_hypothesis": "car", "confidence": 0.9, "confusions": [{"class": "truck", "score": 0.05}]}
    targets = AuditTargets(
        voxel_index=torch.tensor([[0, 1, 2, 3], [200, 201, 202, -1]]),
        gt=torch.tensor([3, 9]), hypothesis=torch.tensor([3, 9]),
        pi=torch.tensor(np.array([vlm_distribution(a)] * 2), dtype=torch.float32),
        confusion_set=torch.zeros(2, 10, dtype=torch.bool),
        attributes=torch.zeros(2, 10), attribute_mask=torch.ones(2, 10),
        weight=torch.tensor([0.8, 0.6]), frame=torch.tensor([0, 0]))
    off = VisaTerm({"lambda_tax": 0.0, "lambda_attr": 0.0, "lambda_graph": 0.0})
    on = VisaTerm()
    with_off = train(make_model(), off, targets)
    with_on = train(make_model(), on, targets)
    for m in (with_off, with_on):
        m.eval()
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    with torch.no_grad():
        out_off, out_on = with_off(x_eval), with_on(x_eval)
        out_plain_again = plain(x_eval)
    print("plain", digest(plain), "off", digest(with_off))
    assert torch.equal(out_plain, out_plain_again), "import"  # importing VISA changes nothing
    assert digest(plain) == digest(with_off), "weights"        # VISA present but off: same weights
    assert torch.equal(out_plain, out_off), "outputs"          # ... and bit-identical outputs
    assert list(with_on.state_dict()) == list(plain.state_dict())  # same architecture / checkpoint keys
    assert all(a.shape == b.shape for a, b in zip(with_on.state_dict().values(), plain.state_dict().values()))
    assert type(with_on).forward is type(plain).forward and out_on.shape == out_plain.shape
    assert not torch.equal(out_on, out_plain)                 # VISA on: it did train the weights
    print("OK")
''')


def test_inference_is_unchanged_by_visa(tmp_path):
    """A fresh interpreter trains the same model without VISA, with VISA imported but off, and
    with VISA on: outputs before/after the import and with VISA off are bit-identical, the
    checkpoint keys and the forward are the same with VISA on, and no hooks are registered."""
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(paths.REPO_ROOT), "OMP_NUM_THREADS": "1",
                                           "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
