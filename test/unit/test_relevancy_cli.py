"""The relevancy overlay CLI on a real image (16-bit grayscale PNG made from the nuScenes keyframe)."""

import numpy as np
from PIL import Image

from occ_audit_ros import paths
from occ_audit_ros.tools.relevancy_cli import main


def test_cli_writes_overlays_and_rejects_bad_input(tmp_path, capsys):
    src = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
    gray16 = (np.asarray(Image.open(src).convert("L").resize((160, 90)), np.uint16) * 257)
    image = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(image)
    out = tmp_path / "out"
    rc = main([str(image), "--labels", "car", "road", "traffic cone", "--clip-model", "random-tiny",
               "--out", str(out), "--npy", "--output-stride", "2"])
    assert rc == 0
    maps = np.load(out / "relevancy.npy")
    assert maps.shape == (3, 45, 80) and np.isfinite(maps).all() and np.abs(maps).max() > 0
    for name in ("relevancy.png", "00_car.png", "01_road.png", "02_traffic_cone.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert main([str(tmp_path / "missing.png"), "--labels", "car"]) == 2
    assert main([str(image), "--labels", "car", "--preset", "nope"]) == 2
    assert main([str(image), "--labels", " "]) == 2
    assert "error:" in capsys.readouterr().err
