"""PNG figures of occ_audit_ros.viz: written atomically, right size, things where they belong."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from occ_audit_ros import palette, viz
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec

SPEC = VoxelGridSpec(lower=(-20.0, -20.0, -2.0), upper=(20.0, 20.0, 4.0), voxel_size=0.5)
LABELS = ["car", "tree", "road", "building"]
CAR, TREE, ROAD, BUILDING = range(4)


@dataclass
class Box:
    center: np.ndarray
    size: np.ndarray
    yaw: float
    category: str


def voxels_at(points_labels: list[tuple[tuple[float, float, float], int]], random_weights=False) -> SemanticVoxels:
    points = np.array([p for p, _ in points_labels], dtype=np.float64)
    labels = np.array([label for _, label in points_labels])
    ijk, inside = SPEC.point_to_voxel(points)
    assert inside.all()
    flat = SPEC.flat_index(ijk)
    order = np.argsort(flat)
    return SemanticVoxels(
        spec=SPEC, frame_id="base_link", labels=list(LABELS), indices=flat[order].astype(np.uint32),
        label_ids=labels[order].astype(np.uint16), scores=np.ones(len(flat), np.float32),
        random_weights=random_weights, model="test-model",
    )


def scene(random_weights=False) -> SemanticVoxels:
    """A 2 x 2 column block of road at (x=10, y=0), tree at (x=0, y=+10) (left of the ego), and at
    (x=-10, y=-10) a column with car at the bottom and building on top."""
    cells = []
    for dx in (-0.25, 0.25):
        for dy in (-0.25, 0.25):
            cells.append(((10 + dx, dy, 0.25), ROAD))
            cells.append(((dx, 10 + dy, 1.25), TREE))
            cells.append(((-10 + dx, -10 + dy, -1.75), CAR))
            cells.append(((-10 + dx, -10 + dy, 3.75), BUILDING))
    return voxels_at(cells, random_weights)


def pixels_of(png: np.ndarray, rgb, tol: int = 3) -> np.ndarray:
    """(N, 2) row, col of the pixels within ``tol`` of an RGB colour (0..255)."""
    diff = np.abs(png[:, :, :3].astype(int) - np.asarray(rgb, dtype=int))
    return np.argwhere(np.all(diff <= tol, axis=2))


def label_rgb(label: int) -> np.ndarray:
    return np.round(viz.label_palette(len(LABELS))[label] * 255)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_palette_table_is_matplotlibs_tab20_family():
    """The fixed table (no matplotlib at run time) equals matplotlib's own tab20 (saturated half
    first), tab20b and tab20c colours, exactly."""
    import matplotlib

    tab20 = np.asarray(matplotlib.colormaps["tab20"].colors)[:, :3]
    expected = np.concatenate([tab20[0::2], tab20[1::2]] + [
        np.asarray(matplotlib.colormaps[name].colors)[:, :3] for name in ("tab20b", "tab20c")])
    np.testing.assert_array_equal(palette.label_palette(60), expected)
    assert viz.label_palette is palette.label_palette and viz.RANDOM_WEIGHTS_BANNER == palette.RANDOM_WEIGHTS_BANNER


def test_palette_beyond_the_table_is_distinct_and_prefix_stable():
    p200 = palette.label_palette(200)
    assert p200.shape == (200, 3) and p200.dtype == np.float64 and np.all((p200 >= 0) & (p200 <= 1))
    assert len({tuple(np.round(c, 6)) for c in p200}) == 200
    np.testing.assert_array_equal(palette.label_palette(61), p200[:61])
    with pytest.raises(ValueError):
        palette.label_palette(-1)


def test_bev_label_image_takes_highest_voxel():
    image = viz.bev_label_image(scene())
    assert image.shape == (80, 80) and image.dtype == np.int64
    assert (image >= 0).sum() == 12  # three 2 x 2 blocks
    assert np.all(image[59:61, 39:41] == ROAD)  # x = 10 +- 0.25 -> ix 59, 60; y = 0 +- 0.25 -> iy 39, 40
    assert np.all(image[19:21, 19:21] == BUILDING)  # car below it is hidden
    assert np.all(image[39:41, 59:61] == TREE)


def test_bev_png_size_and_orientation(tmp_path):
    path = viz.save_bev_png(scene(), tmp_path / "sub" / "bev.png", title="orientation")
    assert path == tmp_path / "sub" / "bev.png"
    assert sorted(p.name for p in path.parent.iterdir()) == ["bev.png"]  # no temp file left behind
    assert (path.stat().st_mode & 0o777) == 0o644
    png = read_png(path)
    assert png.shape == (800, 1000, 3)  # figsize (10, 8) at 100 dpi

    ego = pixels_of(png, (255, 0, 255), tol=10)
    assert len(ego) > 20
    ego_row, ego_col = ego.mean(axis=0)

    # Road at x = +10 (forward): straight above the ego on the page.
    road = pixels_of(png, label_rgb(ROAD))
    above = road[np.abs(road[:, 1] - ego_col) < 15]
    assert len(above) >= 25  # the 1 m x 1 m block, not just an anti-aliasing fringe
    assert np.all(above[:, 0] < ego_row - 50)

    # Tree at y = +10 (left of the vehicle): left of the ego on the same height of the page.
    tree = pixels_of(png, label_rgb(TREE))
    beside = tree[np.abs(tree[:, 0] - ego_row) < 15]
    assert len(beside) >= 25 and np.all(beside[:, 1] < ego_col - 50)

    # At (x = -10, y = -10): behind and right, the building on top hides the car below it.
    building = pixels_of(png, label_rgb(BUILDING))
    below_right = building[(building[:, 0] > ego_row + 50) & (building[:, 1] > ego_col + 50)]
    assert len(below_right) >= 25
    car = pixels_of(png, label_rgb(CAR))
    assert len(car) > 0  # the legend swatch ...
    assert not np.any(car[:, 0] > ego_row)  # ... but nothing in the lower half of the map

    # No banner without random weights.
    assert len(pixels_of(png[:60], (255, 0, 0), tol=10)) == 0


def test_bev_png_random_banner_boxes_and_custom_size(tmp_path):
    boxes = [Box(np.array([10.0, 5.0, 0.8]), np.array([4.5, 1.9, 1.6]), 0.5, "car"),
             Box(np.array([-8.0, -6.0, 0.9]), np.array([0.8, 0.8, 1.8]), 0.0, "pedestrian")]
    plain = viz.save_bev_png(scene(random_weights=True), tmp_path / "plain.png")
    boxed = viz.save_bev_png(scene(random_weights=True), tmp_path / "boxed.png", boxes=boxes,
                             title="GT", figsize=(6.0, 5.0), dpi=80)
    png = read_png(boxed)
    assert png.shape == (400, 480, 3)
    banner = pixels_of(read_png(plain)[:60], (255, 0, 0), tol=10)
    assert len(banner) > 3000  # big red banner
    # Overwrite in place works (os.replace) and the box outlines change the picture.
    viz.save_bev_png(scene(random_weights=True), tmp_path / "plain.png", boxes=boxes)
    assert not np.array_equal(read_png(plain), read_png(tmp_path / "boxed.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxed.png", "plain.png"]


def test_box_footprint_corners():
    corners = viz._box_corners_xy(Box(np.array([1.0, 2.0, 0.0]), np.array([4.0, 2.0, 1.5]), math.pi / 2, "car"))
    # Heading +y: length along y, width along x.
    np.testing.assert_allclose(np.sort(corners[:, 0]), [0, 0, 2, 2], atol=1e-12)
    np.testing.assert_allclose(np.sort(corners[:, 1]), [0, 0, 4, 4], atol=1e-12)


def test_relevancy_overlay(tmp_path):
    h, w = 90, 160
    image = np.full((h, w, 3), 128, np.uint8)
    relevancy = np.zeros((4, 9, 16), np.float32)
    relevancy[:, :, :8] = 1.0  # hot on the left half of every map
    labels = ["car", "tree", "road", "building"]
    path = viz.save_relevancy_overlay_png(image, relevancy, labels, tmp_path / "rel.png")
    png = read_png(path)
    fig_w, fig_h = viz.relevancy_figure_size((h, w), 4)
    assert (fig_w, fig_h) == pytest.approx((12.0, 1.0 + 2 * (3.7 * h / w + 0.9) + 0.1))
    assert abs(png.shape[1] - fig_w * 100) <= 1 and abs(png.shape[0] - fig_h * 100) <= 1
    # First panel: 0.15 inch from the left, 1.3 inch from the top (banner band + title), 3.7 inch
    # wide; turbo's hot end is dark red, its cold end dark blue (over grey 128 at alpha 0.5).
    row = int(100 * (1.3 + 3.7 * h / w / 2))
    left, right = png[row, int(15 + 0.2 * 370)].astype(int), png[row, int(15 + 0.8 * 370)].astype(int)
    assert left[0] > left[2] + 30 and left[0] > right[0] + 30 and right[2] > left[2] + 20
    assert len(pixels_of(png[:60], (255, 0, 0), tol=10)) == 0

    one = viz.save_relevancy_overlay_png(image, relevancy[:1], ["car"], tmp_path / "one.png",
                                         random_weights=True, title="one label", dpi=50)
    png = read_png(one)
    fig_w, fig_h = viz.relevancy_figure_size((h, w), 1)
    assert abs(png.shape[1] - fig_w * 50) <= 1 and abs(png.shape[0] - fig_h * 50) <= 1
    assert len(pixels_of(png[:30], (255, 0, 0), tol=10)) > 300  # banner


@pytest.mark.parametrize(
    "image, relevancy, labels",
    [
        (np.zeros((4, 4, 3), np.float32), np.zeros((1, 2, 2)), ["a"]),
        (np.zeros((4, 4), np.uint8), np.zeros((1, 2, 2)), ["a"]),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), ["a"]),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 2)), ["a"]),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((0, 2, 2)), []),
        (np.zeros((4, 4, 3), np.uint8), np.full((1, 2, 2), np.nan), ["a"]),
    ],
)
def test_relevancy_overlay_rejects(tmp_path, image, relevancy, labels):
    with pytest.raises(ValueError):
        viz.save_relevancy_overlay_png(image, relevancy, labels, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_hidden_object_png_places_probability_in_its_column(tmp_path):
    from occ_audit_ros.backends import HiddenObjectAnswer

    spec = VoxelGridSpec((5.0, -1.0, 0.0), (7.0, 1.0, 2.0), 0.5)  # 4 x 4 x 4
    vox = SemanticVoxels(spec, "base_link", ["car", "road"], np.array([0, 63], np.uint32),
                         np.array([0, 1], np.uint16), np.array([0.9, 0.8], np.float32))
    flat = spec.flat_index(np.array([[3, 0, 1], [3, 0, 2]]))  # forward-most row, rightmost column (y = -1)
    answer = HiddenObjectAnswer("mug", "behind", "car", spec, "base_link", flat.astype(np.uint32),
                                np.array([0.2, 0.7], np.float32))
    bev = viz.hidden_object_bev(answer)
    assert bev.shape == (4, 4) and bev[3, 0] == pytest.approx(0.7) and np.count_nonzero(bev) == 1
    image = np.zeros((90, 160, 3), np.uint8)
    path = viz.save_hidden_object_png(vox, answer, tmp_path / "h.png", image=image, dpi=50)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape == (280, 750, 3)
    other = VoxelGridSpec((5.0, -1.0, 0.0), (7.0, 1.0, 2.0), 0.25)
    with pytest.raises(ValueError, match="differs"):
        viz.save_hidden_object_png(vox, HiddenObjectAnswer("a", "in", "b", other, "base_link", np.zeros(0, np.uint32),
                                                           np.zeros(0, np.float32)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
