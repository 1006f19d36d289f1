"""Lovasz-softmax against a brute-force Choquet integral, other losses, head and identifier."""


import numpy as np
import pytest
import torch

from occ_audit_ros.ago.head import GroundingHead, ModalityAdapter, open_world_identify
from occ_audit_ros.ago.losses import alignment_loss, grounding_loss, lovasz_softmax, occupancy_loss
from occ_audit_ros.ago.prompts import TextBank


def _jaccard_loss_set(fg: np.ndarray, S: np.ndarray) -> float:
    """Delta_J(S) = 1 - |fg minus S| / |fg union S| for boolean masks (the set function itself)."""
    union = np.logical_or(fg, S).sum()
    return 0.0 if union == 0 else 1.0 - np.logical_and(fg, ~S).sum() / union


def _lovasz_brute(probs: np.ndarray, labels: np.ndarray, present_only=True) -> float:
    """Lovasz extension as a Choquet integral: sum over error levels v_k of
    (v_k - v_{k+1}) * Delta_J({i : e_i >= v_k}) (Lovasz 1983), averaged over classes."""
    out = []
    for c in range(probs.shape[1]):
        fg = labels == c
        if present_only and not fg.any():
            continue
        e = np.abs(fg.astype(float) - probs[:, c])
        levels = np.unique(e)[::-1]
        total = 0.0
        for k, v in enumerate(levels):
            nxt = levels[k + 1] if k + 1 < len(levels) else 0.0
            total += (v - nxt) * _jaccard_loss_set(fg, e >= v)
        out.append(total)
    return float(np.mean(out))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(40, 5, generator=g).mul(2).softmax(-1).double()
    labels = torch.randint(0, 4, (40,), generator=g)  # class 4 absent
    ours = lovasz_softmax(probs, labels).item()
    assert ours == pytest.approx(_lovasz_brute(probs.numpy(), labels.numpy()), abs=1e-10)
    all_cls = lovasz_softmax(probs, labels, classes="all").item()
    assert all_cls == pytest.approx(_lovasz_brute(probs.numpy(), labels.numpy(), False), abs=1e-10)
    # perfect one-hot prediction -> 0; ignored voxels do not count
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    assert lovasz_softmax(onehot, labels).item() == pytest.approx(0.0)
    lab2 = labels.clone()
    lab2[:5] = 255
    assert lovasz_softmax(probs, lab2, ignore_index=255).item() == pytest.approx(
        _lovasz_brute(probs[5:].numpy(), labels[5:].numpy()), abs=1e-10)


def test_occupancy_and_alignment_losses():
    # K = 2 categories, free at 2, one noise column (index 3)
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    target = torch.tensor([0, 2, 2])
    l = occupancy_loss(logits, target, free_index=2)
    # voxel 3 is free but a noise column is high -> "occupied" wins -> large loss on it only
    sm = torch.log_softmax(torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0]]), -1)
    assert l.item() == pytest.approx(-(sm[0, 1] + sm[1, 0] + sm[2, 0]).item() / 3, rel=1e-6)
    a = torch.randn(6, 8)
    m = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    assert alignment_loss(a, a, m).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(a, -a, m).item() == pytest.approx(2.0, abs=1e-6)
    assert alignment_loss(a, -a, torch.zeros(6, dtype=torch.bool)).item() == 0.0
    gl = grounding_loss(logits, torch.tensor([0, 255, 1]))
    assert torch.isfinite(gl) and gl > 0


def test_head_logits_and_identifier():
    torch.manual_seed(0)
    C = 8
    emb = torch.nn.functional.normalize(torch.randn(5, C), dim=-1)
    bank = TextBank(["a", "b"], emb[:3], torch.tensor([0, 0, 1]))
    head = GroundingHead(C)
    feats = torch.randn(4, C)
    noise = emb[3:]
    out = head(feats, bank, noise)
    assert out["logits"].shape == (4, 2 + 1 + 2) and out["adapted"].shape == (4, C)
    f = torch.nn.functional.normalize(feats, dim=-1)
    s = head.log_scale.exp()
    # category "a" = mean of its two phrase cosines (Eq. 4); free column; noise columns
    assert torch.allclose(out["logits"][:, 0], s * (f @ emb[:2].T).mean(1), atol=1e-5)
    assert torch.allclose(out["logits"][:, 2], s * f @ torch.nn.functional.normalize(head.free_embedding, dim=0), atol=1e-5)
    assert torch.allclose(out["logits"][:, 3:], s * f @ noise.T, atol=1e-5)
    assert isinstance(head.adapter.net[1], torch.nn.Softplus) and len(ModalityAdapter(C).net) == 3
    # identifier: sharp grounding vs flat adapter on voxel 0, the reverse on voxel 1
    lg = torch.tensor([[9.0, 0, 0], [0.0, 0, 0]])
    la = torch.tensor([[0.0, 0, 0], [0.0, 9, 0]])
    probs, use_g = open_world_identify(lg, la)
    assert use_g.tolist() == [True, False]
    assert probs.argmax(-1).tolist() == [0, 1]
    _, use_c = open_world_identify(lg, la, "confidence")
    assert use_c.tolist() == [True, False]
