"""SemAbs networks: shapes, trilinear sampling against a naive implementation, learning, checkpoints."""

import numpy as np
import pytest
import torch

from occ_audit_ros.semabs.checkpoint import load_checkpoint, save_checkpoint
from training.semabs.baselines import relevancy_cloud_scores
from occ_audit_ros.semabs.model import (RELATIONS, SemAbsConfig, SemAbsOVSSC, SemAbsVOOL, cell_relevancy, ovssc_argmax,
                                        relation_ids, sample_grid)
from occ_audit_ros.semabs.pointcloud import Workspace
from occ_audit_ros.semabs.unet3d import ResidualUNet3D

SMALL = dict(grid=16, unet_levels=3, unet_f_maps=8, point_hidden=32)


def _naive_trilinear(vol, p, ws):
    """Trilinear interpolation on the node lattice (node i at lower + i * extent / (G - 1)), clamped."""
    C, G = vol.shape[0], vol.shape[1]
    lo, up = np.array(ws.lower), np.array(ws.upper)
    f = np.clip((p - lo) / (up - lo) * (G - 1), 0, G - 1)
    i0 = np.minimum(np.floor(f).astype(int), G - 2)
    t = f - i0
    out = np.zeros(C)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) * (t[2] if dz else 1 - t[2])
                out += w * vol[:, i0[0] + dx, i0[1] + dy, i0[2] + dz]
    return out


def test_trilinear_sampling_against_naive():
    torch.manual_seed(1)
    ws = Workspace((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))
    vol = torch.randn(2, 3, 6, 6, 6, dtype=torch.float64)
    q = torch.rand(2, 50, 3, dtype=torch.float64) * 2.6 - 1.3 + torch.tensor([0, 0, 0.9], dtype=torch.float64)
    out = sample_grid(vol, q, ws, concat_xyz=True)
    assert out.shape == (2, 50, 6)
    for b in range(2):
        for m in range(50):
            np.testing.assert_allclose(out[b, m, :3].numpy(), _naive_trilinear(vol[b].numpy(), q[b, m].numpy(), ws),
                                       atol=1e-9)
    lo, up = np.array(ws.lower), np.array(ws.upper)
    np.testing.assert_allclose(out[..., 3:].numpy(), 2 * (q.numpy() - lo) / (up - lo) - 1, atol=1e-12)


def test_unet_shapes_and_paper_channels():
    net = ResidualUNet3D(16, 16, f_maps=8, num_levels=3)
    assert net(torch.randn(1, 16, 8, 8, 8)).shape == (1, 16, 8, 8, 8)
    with pytest.raises(ValueError):
        net(torch.randn(1, 16, 6, 6, 6))
    paper = ResidualUNet3D(16, 16, f_maps=16, num_levels=6)
    assert [e.conv1[1].out_channels for e in paper.encoders] == [16, 32, 64, 128, 256, 512]
    assert [u.out_channels for u in paper.upsamplers] == [256, 128, 64, 32, 16]
    assert all(isinstance(e.conv1[0], torch.nn.GroupNorm) and e.conv1[0].num_groups == 8 for e in paper.encoders)
    with pytest.raises(ValueError):
        SemAbsConfig(grid=48, unet_levels=6)  # 48 not divisible by 32


def test_ovssc_and_vool_shapes_and_ranges():
    torch.manual_seed(0)
    cfg = SemAbsConfig(**SMALL)
    xyz = torch.rand(2, 500, 3) * 1.8 - 0.9 + torch.tensor([0, 0, 0.9])
    rel = torch.randn(2, 3, 500)
    q = torch.rand(2, 3, 40, 3)
    ov = SemAbsOVSSC(cfg)
    assert ov(xyz, rel, q).shape == (2, 3, 40)
    assert ov(xyz, rel, q[:, 0]).shape == (2, 3, 40)  # shared queries
    assert [m.in_features for m in ov.encoder.point_encoder if isinstance(m, torch.nn.Linear)] == [4, 32, 32]
    assert ov.decoder[0].in_features == 16 + 3
    vo = SemAbsVOOL(cfg)
    rels = relation_ids(["behind", "on", "in"]).repeat(2, 1)
    out = vo(xyz, rel, rel.flip(1), rels, q)
    assert out.shape == (2, 3, 40)
    assert out.abs().max() <= 1 / 0.07 + 1e-4
    assert vo.spatial_decoder[0].in_features == 32 + 3 and vo.relation_embeddings.shape == (len(RELATIONS), 64)
    with pytest.raises(ValueError):
        relation_ids(["under"])


def test_argmax_with_empty_threshold():
    logits = torch.tensor([[2.0, -3.0, 0.5], [1.0, -2.5, 0.7]])
    np.testing.assert_array_equal(ovssc_argmax(logits, -1.0).numpy(), [0, -1, 1])


@pytest.mark.parametrize("task", ["ovssc", "vool"])
def test_gradient_step_lowers_loss_on_fixed_batch(task):
    pass

    from training.train_semabs import forward_loss, make_batch
    from training.semabs.toy import toy_scene

    torch.manual_seed(0)
    cfg = SemAbsConfig(**SMALL)
    model = SemAbsOVSSC(cfg) if task == "ovssc" else SemAbsVOOL(cfg)
    rng = np.random.default_rng(0)
    scenes = [toy_scene(np.random.default_rng(i), num_queries=1000) for i in range(2)]
    batch = make_batch(task, {"num_input_points": 800, "labels_per_scene": 3, "descs_per_scene": 3,
                              "num_queries": 300}, scenes, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    before = forward_loss(model, task, batch)
    for _ in range(3):
        opt.zero_grad()
        loss = forward_loss(model, task, batch)
        loss.backward()
        opt.step()
    after = forward_loss(model, task, batch)
    assert after.item() < before.item() - 1e-3


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = SemAbsConfig(**SMALL)
    model = SemAbsVOOL(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xyz, rel, q = torch.rand(1, 200, 3), torch.randn(1, 2, 200), torch.rand(1, 2, 30, 3)
    rels = relation_ids(["on", "in"])[None]
    model(xyz, rel, rel, rels, q).sum().backward()
    opt.step()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "vool", cfg, optimizer=opt, train_state={"step": 7}, card={"cutoff": -1.2})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind
    loaded, task, cfg2, state, card = load_checkpoint(path)
    assert task == "vool" and cfg2 == cfg and state["step"] == 7 and card == {"cutoff": -1.2}
    model.eval()
    torch.testing.assert_close(loaded(xyz, rel, rel, rels, q), model(xyz, rel, rel, rels, q))
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    load_checkpoint(path, optimizer=opt2, model=loaded)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_cell_relevancy_against_brute_force_and_the_baseline():
    """The decoder's skip input: per query the max relevancy of its label's points in the query's cell, 0 and
    flag 0 for cells without points or queries outside the box; equals the OVSSC baseline's score."""
    rng = np.random.default_rng(3)
    ws = Workspace((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))
    G, B, L, N, M = 4, 2, 3, 60, 80
    lo, up = np.array(ws.lower), np.array(ws.upper)
    xyz = rng.uniform(lo - 0.2, up + 0.2, (B, N, 3))            # some points outside the box
    rel = rng.normal(size=(B, L, N))
    q = rng.uniform(lo - 0.2, up + 0.2, (B, L, M, 3))
    out = cell_relevancy(torch.from_numpy(xyz), torch.from_numpy(rel), torch.from_numpy(q), ws, G).numpy()
    assert out.shape == (B, L, M, 2)

    def cell(p):
        return tuple(np.clip(np.floor((p - lo) / (up - lo) * G), 0, G - 1).astype(int))

    def inside(p):
        return bool(np.all((p >= lo) & (p <= up)))

    for b in range(B):
        for k in range(L):
            for m in range(M):
                vals = [rel[b, k, n] for n in range(N) if inside(xyz[b, n]) and cell(xyz[b, n]) == cell(q[b, k, m])]
                if vals and inside(q[b, k, m]):
                    assert out[b, k, m, 1] == 1.0 and out[b, k, m, 0] == pytest.approx(max(vals))
                else:
                    assert out[b, k, m, 1] == 0.0 and out[b, k, m, 0] == 0.0
            keep = ws.contains(xyz[b])
            base = relevancy_cloud_scores(xyz[b][keep], rel[b, k][keep], q[b, k], ws, G)
            has = np.isfinite(base)
            np.testing.assert_array_equal(out[b, k, :, 1] == 1.0, has)
            np.testing.assert_allclose(out[b, k, has, 0], base[has])


def test_relevancy_skip_is_an_ovssc_decoder_input():
    """With ``relevancy_skip`` the decoder takes 2 more inputs (the cell relevancy times
    ``relevancy_skip_scale``) and the logit at a query depends on the relevancy of the points in its cell;
    VOOL refuses the option; decode checks the skip features."""
    torch.manual_seed(0)
    cfg = SemAbsConfig(**SMALL, relevancy_skip=True, relevancy_skip_scale=3.0)
    net = SemAbsOVSSC(cfg).eval()
    assert net.decoder[0].in_features == cfg.feat_dim + 3 + 2
    xyz = torch.tensor([[[0.3, 0.3, 0.5]] * 4 + [[-0.7, -0.7, 1.5]] * 4])          # (1, 8, 3)
    rel = torch.zeros(1, 1, 8)
    q = torch.tensor([[[0.31, 0.31, 0.51], [-0.5, 0.6, 0.2]]])                       # first in the points' cell
    vol = net.encode(xyz, rel)
    skip = cell_relevancy(xyz, rel, q[:, None], cfg.workspace, cfg.grid).reshape(1, 2, 2)
    assert skip.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]
    torch.testing.assert_close(net(xyz, rel, q)[0], net.decode(vol, q, 3.0 * skip))
    moved = skip.clone()
    moved[0, 0, 0] = 1.0          # the first query's cell relevancy, U-Net features unchanged
    delta = net.decode(vol, q, moved) - net.decode(vol, q, skip)
    assert delta[0, 0].abs() > 1e-4 and delta[0, 1] == 0
    with pytest.raises(ValueError, match="relevancy_skip"):
        SemAbsVOOL(cfg)
    with pytest.raises(ValueError, match="skip features missing"):
        net.decode(vol, q)
    with pytest.raises(ValueError, match="skip features given"):
        SemAbsOVSSC(SemAbsConfig(**SMALL)).decode(vol, q, torch.zeros(1, 2, 2))


def test_reference_convention_samples_unflipped_coordinates():
    """With ``decoder_convention="reference"`` a query's x indexes the volume's last axis (as the released
    code), and the concatenated coordinate is the clamped one."""
    ws = Workspace((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    G = 4
    vol = torch.zeros(1, 1, G, G, G)
    vol[0, 0, 0, 0, 3] = 1.0   # volume index (x=0, y=0, z=3)
    q = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, 0, 0) and (0, 0, 1) [m]
    ref = sample_grid(vol, q, ws, concat_xyz=True, convention="reference")
    ours = sample_grid(vol, q, ws, concat_xyz=True)
    # ours: (0, 0, 1) m hits node (0, 0, 3); reference: (1, 0, 0) m -> index 3 on x -> reads vol[..., 3]
    # at 3 / G of the way, i.e. between nodes 2 and 3 of the last axis
    assert ours[0, 1, 0] == 1.0 and ours[0, 0, 0] == 0.0
    assert ref[0, 1, 0] == 0.0 and 0.0 < ref[0, 0, 0] < 1.0
    torch.testing.assert_close(ref[0, 0, 1:], torch.tensor([2 * 3 / 4 - 1, -1.0, -1.0]))


def test_decoder_convention_config():
    from occ_audit_ros.semabs.model import SemAbsConfig

    cfg = SemAbsConfig(grid=8, unet_levels=2, decoder_convention="reference")
    assert cfg.reference_query_scaling is True
    assert SemAbsConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {k: v for k, v in SemAbsConfig(grid=8, unet_levels=2).to_dict().items() if k != "decoder_convention"}
    assert SemAbsConfig.from_dict(legacy).decoder_convention == "ours"   # checkpoints written before the option
    with pytest.raises(ValueError, match="decoder convention"):
        SemAbsConfig(decoder_convention="released")
