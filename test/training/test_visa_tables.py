"""VISA on nuScenes-format tables: views and crops from the real Lyft tables via nuscenes-devkit."""

import json

import numpy as np
import pytest

from occ_audit_ros import paths
from training.visa.crops import select_crop
from training.visa.generate import main
from training.visa.tables import annotation_views, open_tables, table_instances

LYFT = paths.shared_dir() / "data" / "lyft-mmdet3d-tables" / "v1.01-train"


@pytest.fixture(scope="module")
def lyft():
    return open_tables(LYFT, "v1.01-train")


def test_views_match_the_devkit_camera_boxes_and_crops_pick_a_camera_that_sees_the_box(lyft):
    from nuscenes.utils.geometry_utils import BoxVisibility

    insts = table_instances(lyft)
    assert [c for _, _, c in insts] == ["car"] * 4  # the slice's 4 instances are cars
    for ann in lyft.sample_annotation:
        views = annotation_views(lyft, ann)
        assert len(views) == 7 and all(v.visibility_bin is None for v in views)  # no bins in Lyft
        seen = set()
        for v in views:
            # Independent path: the devkit moves the box into the camera frame itself.
            _, boxes, K = lyft.get_sample_data(v.sample_data_token, box_vis_level=BoxVisibility.ANY,
                                               selected_anntokens=[ann["token"]])
            _, all_boxes, _ = lyft.get_sample_data(v.sample_data_token, box_vis_level=BoxVisibility.NONE,
                                                   selected_anntokens=[ann["token"]])
            np.testing.assert_allclose(v.corners_cam, all_boxes[0].corners().T, atol=1e-6)
            np.testing.assert_allclose(v.K, K)
            if boxes:
                seen.add(v.camera)
        crop = select_crop(ann["instance_token"], views)
        assert crop is not None and crop.best.view.camera in seen


def test_cli_audits_table_instances_with_real_instance_tokens(lyft, tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--tables", str(LYFT), "--version", "v1.01-train",
                 "--no-progress"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "audits.jsonl").read_text().splitlines()]
    assert sorted(r["instance_token"] for r in recs) == sorted(i["token"] for i in lyft.instance)
    scene = lyft.scene[0]["token"]
    assert all(r["scene_token"] == scene and r["gt"] == {"category": "car", "class": "car"} for r in recs)
    # Real auditors need the images, which this table slice does not ship: one clear error.
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "clip"), "--tables", str(LYFT), "--version", "v1.01-train",
                 "--auditor", "clip", "--model", "random-tiny", "--no-progress"]) == 2
    assert "camera image" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--tables", str(tmp_path), "--no-progress"]) == 2
    assert "no nuScenes tables" in capsys.readouterr().err
