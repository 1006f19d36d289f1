"""``occ_audit_demo --scene`` on the simulated multi-sample scene (test/sim_scene.py): whole-scene
conversion, replay through the node at rate 1, frame counts and per-stage means in the summary, and the
BEV animation over the scene (tiny random CLIP, two cameras, keyframes only so that it stays short)."""

import re

from PIL import Image

from occ_audit_ros.tools import demo


def test_demo_replays_a_simulated_scene(tmp_path, capsys):
    from sim_scene import simulated_scene

    root, _ = simulated_scene(3, True)
    out = tmp_path / "demo"
    code = demo.main(["--clip-model", "random-tiny", "--output", str(out), "--dataroot", str(root),
                      "--scene", "sim-3-00000", "--cameras", "CAM_FRONT,CAM_BACK", "--rate", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    frames = re.search(r"frames: (\d+) camera images received in (\d+) synchronised sets \((\d+) without some "
                       r"camera\); (\d+) processed, (\d+) dropped \(worker busy\), (\d+) skipped; (\d+) grids", text)
    assert frames, text
    images, sets, partial, processed, dropped, skipped, grids_out = map(int, frames.groups())
    assert images == 6  # 3 keyframes x 2 cameras
    assert sets >= 1 and partial <= sets and processed >= 2 and processed + dropped + skipped == sets
    assert grids_out == processed
    assert re.search(rf"latency per stage \(s, mean over {processed} frames, \d cameras\): queue [\d.]+, "
                     r"convert [\d.]+, relevancy [\d.]+", text), text

    grids = demo.read_voxel_grids(out / "output_bag")
    assert len(grids) == processed
    stamps = [g.stamp_ns for g in grids]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]  # the scene advances
    gif = Image.open(out / "bev_semantic_occupancy.gif")
    assert gif.n_frames == len(grids) and gif.size[0] > 300
    assert (out / "bev_semantic_occupancy.png").is_file()
    assert (out / "input_bag" / "metadata.yaml").is_file()

    # The converted bag is taken as it is with --bag (no conversion), one camera.
    bag = tmp_path / "scene_bag"
    (out / "input_bag").rename(bag)
    code = demo.main(["--clip-model", "random-tiny", "--output", str(out), "--bag", str(bag),
                      "--cameras", "CAM_BACK", "--rate", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"taking the converted bag {bag}" in text and "processed" in text


def test_demo_scene_errors_are_clear(tmp_path, capsys):
    from sim_scene import simulated_scene

    root, _ = simulated_scene(3, True)
    code = demo.main(["--clip-model", "random-tiny", "--output", str(tmp_path / "o"), "--dataroot", str(root),
                      "--scene", "scene-nope"])
    assert code == 1 and "scene-nope" in capsys.readouterr().err
    code = demo.main(["--clip-model", "random-tiny", "--output", str(tmp_path / "o"), "--bag", str(tmp_path / "nobag")])
    assert code == 1 and "nobag" in capsys.readouterr().err
