"""SemAbs training script: resume equals an uninterrupted run, torchrun DDP on 2 gloo processes, CLI errors."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]

from training.train_semabs import forward_loss, load_config, train  # noqa: E402

TINY = ["model.grid=16", "model.unet_levels=2", "model.unet_f_maps=8", "model.point_hidden=16",
        "data.train_scenes=4", "data.toy={num_queries: 600, points_per_face: 60}", "train.batch_size=1",
        "train.num_input_points=300", "train.num_queries=100", "train.ckpt_every=2", "train.restart_steps=3"]


def _weights(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


@pytest.mark.parametrize("task", ["ovssc", "vool"])
def test_resume_matches_uninterrupted_run(tmp_path, task):
    base = TINY + [f"task={task}"]
    full = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), base + [f"out_dir={tmp_path / 'a'}", "train.max_steps=4"])
    s_full = train(full, progress=False)
    part = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), base + [f"out_dir={tmp_path / 'b'}", "train.max_steps=2"])
    train(part, progress=False)
    part["train"]["max_steps"] = 4  # "killed" after step 2's checkpoint, then rerun with the same command
    s_res = train(part, progress=False)
    assert s_res["step"] == 4 and len(s_res["losses"]) == 2
    assert s_res["losses"] == pytest.approx(s_full["losses"][2:], rel=1e-5)
    wa, wb = _weights(tmp_path / "a/last.safetensors"), _weights(tmp_path / "b/last.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_torchrun_two_gloo_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "training/train_semabs.py"), "--config", str(ROOT / "training/config/semabs_cpu.yaml"),
           "--set", *TINY, f"out_dir={tmp_path}", "train.max_steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT task=ovssc step=2 world_size=2" in proc.stdout
    with safe_open(str(tmp_path / "last.safetensors"), framework="pt") as f:
        assert '"world_size": 2' in f.metadata()["train_state"]


def test_cli_rejects_bad_config(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "training/train_semabs.py"), "--set", "task=segment"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "task must be" in proc.stderr
    with pytest.raises(ValueError):
        load_config(None, ["no_equals_sign"])


def test_init_weights_fine_tunes_from_a_checkpoint(tmp_path):
    """``train.init_weights``: step 1 of a fine-tune starts from the given weights (its first loss equals the
    loss the source network has on that batch, i.e. the loss of a run resumed at that point); a network of
    another configuration is refused."""
    base = TINY + ["task=ovssc"]
    src = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), base + [f"out_dir={tmp_path / 'src'}", "train.max_steps=2"])
    train(src, progress=False)
    ft = load_config(str(ROOT / "training/config/semabs_cpu.yaml"),
                     base + [f"out_dir={tmp_path / 'ft'}", "train.max_steps=1", "train.warmup_steps=0",
                             f"train.init_weights={tmp_path / 'src/last.safetensors'}"])
    fresh = load_config(str(ROOT / "training/config/semabs_cpu.yaml"),
                        base + [f"out_dir={tmp_path / 'fresh'}", "train.max_steps=1", "train.warmup_steps=0"])
    s_ft, s_fresh = train(ft, progress=False), train(fresh, progress=False)
    # same seed, same batch: only the starting weights differ
    import copy
    from occ_audit_ros.semabs.checkpoint import load_checkpoint
    from training.train_semabs import SceneSet, make_batch
    import numpy as np
    model, _, mcfg, _, _ = load_checkpoint(tmp_path / "src/last.safetensors")
    model.train()
    scenes = SceneSet(ft, "train")
    rng = np.random.default_rng([ft["seed"], 0, 0])
    idx = rng.choice(len(scenes), 1, replace=len(scenes) < 1)
    batch = make_batch("ovssc", ft["train"], [scenes[int(i)] for i in idx], rng, mcfg.workspace)
    expected = forward_loss(model, "ovssc", batch).item()
    assert s_ft["losses"][0] == pytest.approx(expected, rel=1e-5)
    assert s_fresh["losses"][0] != pytest.approx(expected, rel=1e-3)
    # the same network widened with the decoder's relevancy skip (zero columns) starts at the same loss
    skip = load_config(str(ROOT / "training/config/semabs_cpu.yaml"),
                       base + [f"out_dir={tmp_path / 'skip'}", "train.max_steps=1", "train.warmup_steps=0",
                               f"train.init_weights={tmp_path / 'src/last.safetensors'}", "model.relevancy_skip=true",
                               "model.relevancy_skip_scale=20"])
    assert train(skip, progress=False)["losses"][0] == pytest.approx(expected, rel=1e-5)
    bad = copy.deepcopy(ft)
    bad["out_dir"] = str(tmp_path / "bad")
    bad["model"]["unet_f_maps"] = 16
    with pytest.raises(ValueError, match="init_weights"):
        train(bad, progress=False)


def test_ovssc_positive_fraction_sampling():
    """``ovssc_positive_fraction`` f: each query is occupied with probability >= f (f of them drawn from the
    label's occupied ones, the rest uniformly); f = 0 is the paper's uniform sampling, unchanged."""
    import numpy as np
    from training.semabs.batching import ovssc_batch
    from training.semabs.toy import toy_scene

    scenes = [toy_scene(np.random.default_rng(i), num_queries=4000) for i in range(3)]
    uni = ovssc_batch(scenes, np.random.default_rng(0), 300, 2, 4000)
    again = ovssc_batch(scenes, np.random.default_rng(0), 300, 2, 4000, positive_fraction=0.0)
    assert all(torch.equal(uni[k], again[k]) for k in uni)
    prior = uni["target"].mean().item()
    mixed = ovssc_batch(scenes, np.random.default_rng(0), 300, 2, 4000, positive_fraction=0.3)
    frac = mixed["target"].mean().item()
    assert 0.3 + 0.7 * prior - 0.03 < frac < 0.3 + 0.7 * prior + 0.03
    bal = ovssc_batch(scenes, np.random.default_rng(0), 300, 2, 4000, balanced=True)
    assert bal["target"].mean().item() == pytest.approx(0.5, abs=0.03)


def test_ovssc_importance_weights_recover_the_uniform_expectation():
    """With ``importance_weighted`` the weighted means over oversampled queries estimate the uniform ones:
    mean(w) -> 1 and mean(w * occupied) -> the label's occupied fraction of the valid queries (counted
    directly from the scene), for the mixture and the balanced sampling; uniform draws weigh 1."""
    import numpy as np
    from training.semabs.batching import ovssc_batch
    from training.semabs.toy import toy_scene

    scene = toy_scene(np.random.default_rng(5), num_queries=4000)
    scene = dict(scene, num_relevancy_labels=1)  # one label, so the drawn label is known
    valid = scene["valid"]
    truth = scene["occupancy"][0][valid].mean()
    assert 0.0 < truth < 0.2
    for kw in ({"positive_fraction": 0.3}, {"balanced": True}):
        b = ovssc_batch([scene], np.random.default_rng(1), 300, 1, 200_000, importance_weighted=True, **kw)
        w, t = b["weight"][0, 0].double(), b["target"][0, 0].double()
        assert t.mean().item() > 2 * truth  # oversampled ...
        assert w.mean().item() == pytest.approx(1.0, rel=0.02)  # ... and weighted back
        assert (w * t).mean().item() == pytest.approx(truth, rel=0.03)
    uni = ovssc_batch([scene], np.random.default_rng(1), 300, 1, 1000, importance_weighted=True)
    assert torch.equal(uni["weight"], torch.ones_like(uni["weight"]))
    plain = ovssc_batch([scene], np.random.default_rng(1), 300, 1, 1000, positive_fraction=0.3)
    assert "weight" not in plain


def test_forward_loss_applies_query_weights():
    """Unit weights leave the loss unchanged; weights of 2 on one label's queries add that label's terms once more."""
    import numpy as np
    from training.semabs.batching import ovssc_batch
    from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC
    from training.semabs.toy import toy_scene

    torch.manual_seed(0)
    model = SemAbsOVSSC(SemAbsConfig(grid=8, unet_levels=2, unet_f_maps=8, unet_groups=4, point_hidden=16))
    scenes = [toy_scene(np.random.default_rng(i), num_queries=500) for i in range(2)]
    batch = ovssc_batch(scenes, np.random.default_rng(0), 200, 2, 300)
    base = forward_loss(model, "ovssc", batch).item()
    ones = forward_loss(model, "ovssc", dict(batch, weight=torch.ones_like(batch["target"]))).item()
    assert ones == pytest.approx(base, rel=1e-6)
    w = torch.ones_like(batch["target"])
    w[0, 0] = 2.0
    with torch.no_grad():
        logits = model(batch["xyz"], batch["relevancy"], batch["queries"])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["target"], reduction="none")
    expected = (bce.sum() + bce[0, 0].sum()).item() / batch["mask"].sum().item()
    assert forward_loss(model, "ovssc", dict(batch, weight=w)).item() == pytest.approx(expected, rel=1e-5)


def test_soft_iou_loss_matches_a_loop_and_enters_forward_loss():
    """soft_iou_loss equals a per-item loop of 1 - sum(w p y) / sum(w (p + y - p y)) over unmasked queries
    (padding items skipped); forward_loss adds it times ``soft_iou_weight``; on a fixed batch, gradient steps
    on it raise the items' hard IoU at logit 0."""
    import numpy as np
    from training.semabs.batching import ovssc_batch
    from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC
    from training.semabs.toy import toy_scene
    from training.train_semabs import soft_iou_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 50, generator=g) * 2
    target = (torch.rand(2, 3, 50, generator=g) < 0.3).float()
    mask = torch.rand(2, 3, 50, generator=g) < 0.8
    mask[1, 2] = False  # a padding label
    weight = torch.rand(2, 3, 50, generator=g) * 3
    terms = []
    for b in range(2):
        for k in range(3):
            inter = union = 0.0
            for m in range(50):
                if mask[b, k, m]:
                    p = 1.0 / (1.0 + math.exp(-logits[b, k, m].item()))
                    y = target[b, k, m].item()
                    inter += weight[b, k, m].item() * p * y
                    union += weight[b, k, m].item() * (p + y - p * y)
            if mask[b, k].any():
                terms.append(1.0 - inter / union)
    assert len(terms) == 5
    assert soft_iou_loss(logits, target, mask, weight).item() == pytest.approx(sum(terms) / 5, rel=1e-5)
    assert soft_iou_loss(logits, target, torch.zeros_like(mask)).item() == 0.0

    torch.manual_seed(0)
    model = SemAbsOVSSC(SemAbsConfig(grid=8, unet_levels=2, unet_f_maps=8, unet_groups=4, point_hidden=16))
    scenes = [toy_scene(np.random.default_rng(i), num_queries=500) for i in range(2)]
    batch = ovssc_batch(scenes, np.random.default_rng(0), 200, 2, 300, positive_fraction=0.3, importance_weighted=True)
    with torch.no_grad():
        logits = model(batch["xyz"], batch["relevancy"], batch["queries"])
    soft = soft_iou_loss(logits, batch["target"], batch["mask"], batch["weight"]).item()
    assert forward_loss(model, "ovssc", batch, soft_iou_weight=0.5).item() == pytest.approx(
        forward_loss(model, "ovssc", batch).item() + 0.5 * soft, rel=1e-5)

    def hard_iou():
        with torch.no_grad():
            pred = model(batch["xyz"], batch["relevancy"], batch["queries"]) > 0
        t = batch["target"].bool() & batch["mask"]
        p = pred & batch["mask"]
        return ((p & t).sum((-1)).float() / (p | t).sum(-1).clamp(min=1).float()).mean().item()

    before = hard_iou()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = soft_iou_loss(model(batch["xyz"], batch["relevancy"], batch["queries"]), batch["target"],
                             batch["mask"], batch["weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < soft
    assert hard_iou() > before + 0.1


def test_vool_relation_balancing():
    """With ``balance_relations`` a scene's relations are drawn about equally often (reference
    ``balance_spatial_relations``); without it in proportion to their counts."""
    import numpy as np
    from training.semabs.batching import vool_batch
    from occ_audit_ros.semabs.model import RELATIONS
    from training.semabs.toy import toy_scene

    scene = toy_scene(np.random.default_rng(0), num_queries=400)
    occ = scene["occupancy"][0]
    scene["descriptions"] = [(0, "on", 1)] * 6 + [(0, "in", 1)] * 2
    scene["vool_occupancy"] = np.stack([occ] * 8)
    counts = {}
    for balance in (False, True):
        rng = np.random.default_rng(1)
        ids = [vool_batch([scene], rng, 50, 1, 20, balance_relations=balance)["relations"].item() for _ in range(2000)]
        counts[balance] = ids.count(RELATIONS.index("in")) / len(ids)
    assert counts[False] == pytest.approx(2 / 8, abs=0.03)
    assert counts[True] == pytest.approx(1 / 2, abs=0.03)
    rng = np.random.default_rng(2)
    four = vool_batch([scene], rng, 50, 4, 20, balance_relations=True)["relations"][0].tolist()
    assert sorted(four).count(RELATIONS.index("in")) <= 2  # without replacement


def test_soft_iou_weight_is_refused_for_vool(tmp_path):
    """The soft-IoU term is an OVSSC loss: a VOOL run with it stops before training."""
    cfg = load_config(str(ROOT / "training" / "config" / "semabs_cpu.yaml"),
                      TINY + [f"out_dir={tmp_path}", "task=vool", "train.ovssc_soft_iou_weight=1.0", "train.max_steps=1"])
    with pytest.raises(ValueError, match="ovssc only"):
        train(cfg, progress=False)


def test_train_device_names_are_checked(tmp_path):
    """``train.device`` is cpu, cuda or auto (the rank picks the GPU); anything else is refused before training."""
    cfg = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), TINY + [f"out_dir={tmp_path}", "train.max_steps=1",
                                                                    "train.device=cuda:1"])
    with pytest.raises(ValueError, match="train.device must be"):
        train(cfg, progress=False)


def test_scene_set_ends_at_its_size():
    """Indexing past a split raises IndexError, so iterating a split yields exactly its scenes (before, it ran
    on into generated toy scenes without end)."""
    from training.train_semabs import SceneSet

    cfg = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), TINY + ["task=vool"])
    scenes = SceneSet(cfg, "val")
    assert len(scenes) > 0
    assert [s["descriptions"] for s in scenes] == [scenes[i]["descriptions"] for i in range(len(scenes))]
    with pytest.raises(IndexError, match="out of range"):
        scenes[len(scenes)]
    with pytest.raises(IndexError):
        scenes[-1]
