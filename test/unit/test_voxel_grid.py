"""Voxelisation and scatter-max against brute force."""

import numpy as np
import pytest

from occ_audit_ros.voxel_grid import VoxelGridSpec, scatter_max, semantic_voxels_from_points

SPEC = VoxelGridSpec(lower=(-40.0, -40.0, -1.0), upper=(40.0, 40.0, 5.4), voxel_size=0.4)


def test_dims_and_index_convention():
    assert SPEC.dims == (200, 200, 16)
    ijk = np.array([[0, 0, 0], [1, 2, 3], [199, 199, 15]])
    flat = SPEC.flat_index(ijk)
    assert flat.tolist() == [0, (1 * 200 + 2) * 16 + 3, SPEC.num_voxels - 1]
    np.testing.assert_array_equal(SPEC.unravel(flat), ijk)
    centers = SPEC.voxel_centers(flat)
    np.testing.assert_allclose(centers[0], [-39.8, -39.8, -0.8], atol=1e-5)


def test_bad_specs():
    with pytest.raises(ValueError):
        VoxelGridSpec((0, 0, 0), (1, 1, 1), 0.0)
    with pytest.raises(ValueError):
        VoxelGridSpec((0, 0, 0), (1, 1, 1), 0.3)
    with pytest.raises(ValueError):
        VoxelGridSpec((0, 0, 0), (1, -1, 1), 0.5)


def test_scatter_max_equals_brute_force():
    rng = np.random.default_rng(0)
    points = rng.uniform(-45, 45, size=(5000, 3)) * np.array([1, 1, 0.1])
    points[:200] = np.round(points[:200] / 0.4) * 0.4  # exactly on voxel boundaries
    points[200:210] = np.nan
    scores = rng.normal(size=(5000, 3)).astype(np.float32)
    flat, maxs = scatter_max(SPEC, points, scores)
    lower, size, (nx, ny, nz) = np.array(SPEC.lower), SPEC.voxel_size, SPEC.dims
    expected = {}
    for p, s in zip(points, scores):
        if not np.all(np.isfinite(p)):
            continue
        i, j, k = (int(np.floor(v)) for v in (p - lower) / size)
        if 0 <= i < nx and 0 <= j < ny and 0 <= k < nz:
            key = (i * ny + j) * nz + k
            expected[key] = np.maximum(expected.get(key, np.full(3, -np.inf, np.float32)), s)
    assert flat.tolist() == sorted(expected)
    np.testing.assert_array_equal(maxs, np.array([expected[f] for f in flat.tolist()]))


def test_semantic_voxels_argmax():
    points = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [10.1, 0.1, 0.1], [100.0, 0, 0]])
    scores = np.array([[1, 0], [0, 2], [3, -1], [9, 9]], np.float32)
    vox = semantic_voxels_from_points(SPEC, points, scores, ["car", "tree"], "base_link", random_weights=True)
    assert len(vox.indices) == 2
    assert vox.label_ids.tolist() == [1, 0]  # voxel at origin: max car 1, max tree 2 -> tree
    assert vox.scores.tolist() == [2.0, 3.0]
    assert vox.counts_per_label() == {"car": 1, "tree": 1}
    np.testing.assert_allclose(vox.centers()[1], [10.2, 0.2, 0.0], atol=1e-5)  # z: -1 + 2.5 * 0.4
    with pytest.raises(ValueError):
        semantic_voxels_from_points(SPEC, points, scores, ["car"], "base_link")
