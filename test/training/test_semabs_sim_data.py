"""SemAbs samples from a real simulator scene: frames, label/occupancy bookkeeping, VOOL descriptions."""

import json

import numpy as np
import pytest

from occ_audit_ros import paths
from occ_audit_ros.semabs.pointcloud import Workspace
from training.semabs.sim_data import samples_from_scene


@pytest.fixture(scope="module")
def sim_scene():
    from training.sim.indoor import generate_indoor_scene
    from training.sim.shards import load_config, scene_rng
    from training.sim.vocabulary import Vocabulary

    cfg = load_config(paths.resource("training/config/sim_indoor.yaml"))
    scene = generate_indoor_scene(cfg, Vocabulary.from_config(cfg), scene_rng(0, 0))
    scene["meta"] = json.loads(scene["meta"])
    return scene


def test_samples_from_sim_scene(sim_scene):
    (s,) = samples_from_scene(sim_scene, np.random.default_rng(0), max_cloud_points=5000)
    meta = sim_scene["meta"]
    L = len(s["labels"])
    assert s["xyz"].shape == (5000, 3) and s["relevancy"].shape == (L, 5000)
    assert Workspace().contains(s["xyz"]).all()
    M = meta["num_query_points"] + meta["grid"] ** 3
    assert s["queries"].shape == (M, 3) and s["occupancy"].shape == (L, M) and s["valid"].shape == (M,)
    # occupancy of a label = union of its objects' occupancy (checked against the objects' boxes)
    for o in meta["objects"]:
        if o["label"] in s["labels"] and o["attrs"].get("role") != "structure":
            k = s["labels"].index(o["label"])
            lo, up = np.array(o["aabb"][0]), np.array(o["aabb"][1])
            own = np.all((s["queries"] >= lo - 1e-4) & (s["queries"] <= up + 1e-4), axis=1)
            # every occupied query of the object's label lies in one of that label's boxes
            boxes = [(np.array(p["aabb"][0]), np.array(p["aabb"][1])) for p in meta["objects"] if p["label"] == o["label"]]
            q = s["queries"][s["occupancy"][k]]
            assert all(any(np.all((x >= b[0] - 1e-4) & (x <= b[1] + 1e-4)) for b in boxes) for x in q[:200])
            assert s["occupancy"][k][own].any() or not own.any()
    # distractor labels (absent classes) are empty everywhere
    present = {o["label"] for o in meta["objects"]}
    for k, lab in enumerate(s["labels"]):
        if lab not in present:
            assert not s["occupancy"][k].any()
    # descriptions point at the right labels and carry the simulator's positives
    for (ti, rel, ri), d in zip(s["descriptions"], meta["views"][0]["descriptions"]):
        assert (s["labels"][ti], rel, s["labels"][ri]) == (d["target"], d["relation"], d["reference"])
    assert s["vool_occupancy"].shape == (len(s["descriptions"]), M)
