"""Indoor simulator: VOOL relations on hand-made scenes, simulated relevancy, render/occupancy
consistency, determinism and the dataset CLI."""

import json

import numpy as np
import pytest

from occ_audit_ros import paths
from occ_audit_ros.geometry import make_transform
from training.sim import generate
from training.sim.indoor import generate_indoor_scene, grid_points, unpack_bits
from training.sim.primitives import Primitive, SceneObject, look_at
from training.sim.relations import RELATIONS, pairwise_relations, vool_descriptions
from training.sim.relevancy_sim import simulate_relevancy
from training.sim.shards import load_config, merge, read_shard, scene_rng
from training.sim.vocabulary import Vocabulary

REL_CFG = {"min_alignment": 0.7071, "max_distance_factor": 2.0, "max_distance_offset": 0.3,
           "max_descriptions": 50}
SMALL = {"camera": {"width": 80, "height": 60}, "queries": {"grid": 16, "random": 3000},
         "scenes_per_shard": 2}


def _cube(i, label, x, y, z=0.1, s=0.2, **attrs):
    T = make_transform([x, y, z], [1.0, 0.0, 0.0, 0.0])
    return SceneObject(i, label, [Primitive("box", (s, s, s), T)], label=label, attrs=attrs)


@pytest.fixture(scope="module")
def cfg():
    return merge(load_config(paths.resource("training/config/sim_indoor.yaml")), SMALL)


def test_viewer_centric_relations_on_hand_made_scene():
    # Camera at -x looking along +x: "behind" = +x, "in front of" = -x, viewer's right = -y.
    T = look_at([-3.0, 0.0, 1.0], [0.0, 0.0, 0.1])
    ref = _cube(0, "box", 0.0, 0.0)
    expect = {(0.6, 0.0): {"behind"}, (-0.6, 0.0): {"in front of"},
              (0.0, 0.6): {"on the left of"}, (0.0, -0.6): {"on the right of"},
              (0.45, 0.45): set(),          # diagonal: alignment 0.707 < threshold + eps? see below
              (3.0, 0.0): set()}            # too far: > 2 * 0.2 + 0.3 m
    for (x, y), rels in expect.items():
        got = pairwise_relations(_cube(1, "cup", x, y), ref, T, REL_CFG)
        if (x, y) == (0.45, 0.45):
            assert got <= {"behind", "on the left of"}  # on the 45 deg boundary: either or none
        else:
            assert got == rels, (x, y, got)
    # Turning the viewer around swaps every directional relation.
    T_back = look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.1])
    assert pairwise_relations(_cube(1, "cup", 0.6, 0.0), ref, T_back, REL_CFG) == {"in front of"}
    assert pairwise_relations(_cube(1, "cup", 0.0, 0.6), ref, T_back, REL_CFG) == {"on the right of"}


def test_on_and_in_come_from_placement_and_suppress_directions():
    T = look_at([-3.0, 0.0, 1.0], [0.0, 0.0, 0.1])
    table = _cube(0, "table", 0.0, 0.0, s=0.6)
    on = _cube(1, "apple", 0.25, 0.0, z=0.65, s=0.05, on=0)
    inside = _cube(2, "orange", -0.2, 0.0, z=0.65, s=0.05, **{"in": 0})
    assert pairwise_relations(on, table, T, REL_CFG) == {"on"}
    assert pairwise_relations(inside, table, T, REL_CFG) == {"in"}
    assert pairwise_relations(table, on, T, REL_CFG) == set()


def test_ambiguous_descriptions_mark_all_consistent_targets():
    T = look_at([-3.0, 0.0, 1.0], [0.0, 0.0, 0.1])
    objs = [_cube(0, "box", 0.0, 0.0), _cube(1, "cup", 0.6, 0.0), _cube(2, "cup", 0.0, -0.6),
            _cube(3, "box", -0.6, -0.6), _cube(4, "floor", 0.0, 0.0, z=-0.05, s=0.1)]
    descs = vool_descriptions(objs, T, REL_CFG, np.random.default_rng(0))
    by_key = {(d.target, d.relation, d.reference): d.positives for d in descs}
    # cup 1 is behind box 0 and cup 2 is behind box 3 -> both cups positive.
    assert by_key[("cup", "behind", "box")] == (1, 2)
    # cup 2 is right of box 0; nothing is left of a box or in front of one.
    assert by_key[("cup", "on the right of", "box")] == (2,)
    assert ("cup", "on the left of", "box") not in by_key
    assert ("cup", "in front of", "box") not in by_key
    assert by_key[("box", "in front of", "cup")] == (0, 3)  # of cup 1 and of cup 2
    assert all(d.relation in RELATIONS for d in descs)
    assert not any("floor" in (d.target, d.reference) for d in descs)


def test_simulated_relevancy_stays_on_named_objects():
    inst = -np.ones((60, 80), dtype=np.int16)
    inst[10:30, 10:30] = 0
    inst[35:55, 45:75] = 1
    cats = {0: "apple", 1: "box"}
    params = {"miss_prob": 0.0, "false_positive_prob": 0.0, "background_noise": 0.0,
              "subtract_mean": False, "mask_leak": 0.0, "output_stride": 2}
    named = lambda t: {"apple"} if t in ("apple", "fruit") else {t}  # noqa: E731
    rel = simulate_relevancy(inst, cats, ["fruit", "box", "chair"], named,
                             np.random.default_rng(0), params)
    assert rel.shape == (3, 30, 40) and rel.dtype == np.float32
    small = inst[::2, ::2]
    assert rel[0][small != 0].max() == 0 and 0.4 <= rel[0].max() <= 1.0
    assert rel[1][small != 1].max() == 0 and rel[1].max() > 0.3
    assert rel[2].max() == 0
    # Only part of the object responds strongly (blobby, partial coverage).
    assert (rel[0][small == 0] > 0.5 * rel[0].max()).mean() < 0.95
    # Defaults: noisy, mean-subtracted over the label set, deterministic per generator state.
    a = simulate_relevancy(inst, cats, ["apple", "box"], named, np.random.default_rng(5))
    b = simulate_relevancy(inst, cats, ["apple", "box"], named, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.sum(0), 0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown relevancy_sim"):
        simulate_relevancy(inst, cats, ["apple"], named, np.random.default_rng(0), {"blur": 1})


def test_scene_ground_truth_is_consistent(cfg):
    vocab = Vocabulary.from_config(cfg)
    out = generate_indoor_scene(cfg, vocab, scene_rng(0, 7))
    meta = json.loads(str(out["meta"]))
    objs = meta["objects"]
    n_obj = len(objs)
    grid = grid_points(cfg["workspace"]["lower"], cfg["workspace"]["upper"], 16)
    occ = unpack_bits(out["occ_grid"], len(grid))
    assert occ.shape == (n_obj, 16 ** 3)
    assert occ[0].any()  # the floor fills the workspace's bottom slab
    lo, hi = np.array(cfg["workspace"]["lower"]), np.array(cfg["workspace"]["upper"])
    for o in objs:  # furniture and objects stay inside the workspace
        if o["category"] not in ("floor", "wall"):
            assert np.all(np.array(o["aabb"][0]) >= lo - 1e-6), o
            assert np.all(np.array(o["aabb"][1]) <= hi + 1e-6), o
    # Depth back-projected 1 cm beyond the surface lands inside the object the pixel shows.
    from training.sim.indoor import build_indoor_objects  # same layout from the same seed
    from training.sim.primitives import RayScene, camera_rays

    objects = build_indoor_objects(cfg, vocab, scene_rng(0, 7))
    assert [o.category for o in objects] == [o["category"] for o in objs]
    K, T = out["K"][0], out["T_world_cam"][0]
    depth, inst = out["depth"][0], out["instance"][0]
    o_, d_ = camera_rays(K, T, depth.shape[1], depth.shape[0])
    sel = np.flatnonzero(np.isfinite(depth).ravel())[::7]
    d_unit = d_.reshape(-1, 3)[sel] / np.linalg.norm(d_.reshape(-1, 3)[sel], axis=1, keepdims=True)
    inner = o_.reshape(-1, 3)[sel] + d_.reshape(-1, 3)[sel] * depth.ravel()[sel, None] + 0.004 * d_unit
    occ_in = RayScene(objects).occupancy(inner)
    ids = inst.ravel()[sel]
    assert occ_in[ids, np.arange(len(sel))].mean() > 0.97  # thin slabs / silhouettes aside
    # VOOL GT = union of the positives' occupancy; relevancy labels include the visible objects.
    view = meta["views"][0]
    vg = unpack_bits(out["vool_grid"][0], len(grid))
    for d, desc in enumerate(view["descriptions"]):
        np.testing.assert_array_equal(vg[d], occ[desc["positives"]].any(0))
    assert out["relevancy"].shape[1] >= len(view["relevancy_labels"])
    vis = {objs[i]["label"] for i, c in enumerate(view["visible_pixels"]) if c > 0}
    assert vis <= set(view["relevancy_labels"])
    assert {d[k] for d in view["descriptions"] for k in ("target", "reference")} <= set(
        view["relevancy_labels"])


@pytest.mark.parametrize("split", ["train", "novel_synonym", "novel_class", "novel_shape"])
def test_splits_change_labels_and_classes(cfg, split):
    c = merge(dict(cfg), {"split": split})
    vocab = Vocabulary.from_config(c)
    metas = [json.loads(str(generate_indoor_scene(c, vocab, scene_rng(1, i))["meta"]))
             for i in range(3)]
    objs = [o for m in metas for o in m["objects"] if o["category"] not in ("floor", "wall")]
    held_class = [vocab.classes[o["category"]].held_out for o in objs]
    held_shape = [o["shape"] in vocab.held_out_shapes for o in objs]
    if split == "novel_synonym":
        assert all(o["label"] in vocab.classes[o["category"]].synonyms for o in objs)
    if split == "novel_class":
        assert any(held_class) and not any(held_shape)
    elif split == "novel_shape":
        assert any(held_shape) and not any(held_class)
    else:
        assert not any(held_class) and not any(held_shape)
    if split != "novel_synonym":
        assert all(o["label"] == o["category"] for o in objs)


def test_cli_is_deterministic_resumable_and_shardable(tmp_path, cfg):
    cfg_path = tmp_path / "small.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(dict(cfg)))
    common = ["indoor", "--scenes", "3", "--config", str(cfg_path), "--no-progress"]
    assert generate.main(common + ["--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert generate.main(common + ["--out", str(tmp_path / "b"), "--seed", "5", "--shard", "1/2"]) == 0
    assert generate.main(common + ["--out", str(tmp_path / "b"), "--seed", "5", "--shard", "0/2"]) == 0
    assert generate.main(common + ["--out", str(tmp_path / "c"), "--seed", "6"]) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.npz"))
    assert names == ["indoor_00000.npz", "indoor_00001.npz"]
    for n in names:  # same seed -> same bytes, however it was sharded
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "c" / names[0]).read_bytes()
    scenes = read_shard(tmp_path / "a" / names[1])
    assert list(scenes) == ["000002"] and scenes["000002"]["rgb"].shape == (1, 60, 80, 3)
    # Resume: a complete shard is kept as is (mtime unchanged), a missing one is regenerated.
    first = tmp_path / "a" / names[0]
    stamp = first.stat().st_mtime_ns
    (tmp_path / "a" / names[1]).unlink()
    assert generate.main(common + ["--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert first.stat().st_mtime_ns == stamp
    assert (tmp_path / "a" / names[1]).read_bytes() == (tmp_path / "b" / names[1]).read_bytes()
    # Refuses to mix seeds in one folder; bad arguments are clear errors.
    assert generate.main(common + ["--out", str(tmp_path / "a"), "--seed", "7"]) == 1
    assert generate.main(common + ["--out", str(tmp_path / "d"), "--shard", "2/2"]) == 1
