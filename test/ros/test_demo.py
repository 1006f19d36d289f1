"""The main job end to end (tiny random CLIP so that it runs in seconds)."""

from PIL import Image

from occ_audit_ros import conventions
from occ_audit_ros.tools import demo


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = demo.main(["--clip-model", "random-tiny", "--output", str(out), "--rate", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "RANDOM-WEIGHT OUTPUT" in text and "semantic voxels:" in text and "latency per stage" in text
    assert (out / "input_bag" / "metadata.yaml").is_file() and (out / "output_bag" / "metadata.yaml").is_file()
    grids = demo.read_voxel_grids(out / "output_bag")
    assert len(grids) == 1 and grids[0].frame_id == "base_link" and grids[0].random_weights
    assert len(grids[0].indices) > 1000
    bev = Image.open(out / "bev_semantic_occupancy.png")
    assert bev.size[0] > 500 and bev.size[1] > 500
    for cam in conventions.CAMERA_CHANNELS:
        assert (out / f"relevancy_{cam}.png").is_file()
    # A second run replaces its own previous outputs.
    assert demo.main(["--clip-model", "random-tiny", "--output", str(out), "--rate", "0"]) == 0


def test_demo_missing_data_is_a_clear_error(tmp_path, capsys):
    code = demo.main(["--clip-model", "random-tiny", "--output", str(tmp_path), "--dataroot", str(tmp_path / "nope")])
    assert code == 1
    assert "nope" in capsys.readouterr().err
