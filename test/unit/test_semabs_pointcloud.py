"""SemAbs relevancy point clouds: frames, units, sampling, scatter-max against brute force."""

import numpy as np
import pytest
import torch

from occ_audit_ros.geometry import make_transform
from occ_audit_ros.semabs.pointcloud import (Workspace, frustum_mask, grid_indices, lattice_points, normalise_queries,
                                             relevancy_point_cloud, sample_points, scatter_max_grid)


def _camera_looking_along_x(height=1.0):
    # optical z (forward) = world +x, optical x (right) = world -y, optical y (down) = world -z
    R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return make_transform([-1.5, 0.0, height], R)


def test_cloud_frame_units_and_pixel_mapping():
    H, W = 12, 16
    K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
    depth = np.full((H, W), 2.0, np.float32)
    depth[0, 0] = np.nan  # no data
    depth[1, 1] = 0.0
    T = _camera_looking_along_x()
    rel = np.stack([np.arange(H * W, dtype=np.float32).reshape(H, W), -np.ones((H, W), np.float32)])
    xyz, r = relevancy_point_cloud(rel, depth, K, T)
    assert xyz.shape == (H * W - 2, 3) and r.shape == (2, H * W - 2) and xyz.dtype == np.float32
    # every point is 2 m in front of the camera along world +x: x = -1.5 + 2
    np.testing.assert_allclose(xyz[:, 0], 0.5, atol=1e-6)
    # pixel (u, v) -> world: y = -(u - cx) / fx * d, z = height - (v - cy) / fy * d  (independent formula)
    v, u = np.divmod(r[0].astype(int), W)
    np.testing.assert_allclose(xyz[:, 1], -(u - 7.5) / 20.0 * 2.0, atol=1e-5)
    np.testing.assert_allclose(xyz[:, 2], 1.0 - (v - 5.5) / 20.0 * 2.0, atol=1e-5)
    assert np.all(r[1] == -1)


def test_cloud_resizes_maps_and_crops_to_workspace():
    H, W = 20, 20
    K = np.array([[40.0, 0, 9.5], [0, 40.0, 9.5], [0, 0, 1]])  # +-0.475 m at 2 m: inside the workspace
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, 10:] = 5.0  # 3.5 m beyond the camera at x = -1.5 -> outside the workspace
    ws = Workspace()
    rel = np.full((3, 5, 5), 0.25, np.float32)  # low-resolution maps, resized bilinearly
    xyz, r = relevancy_point_cloud(rel, depth, K, _camera_looking_along_x(), ws)
    assert len(xyz) == H * 10 and ws.contains(xyz).all()
    np.testing.assert_allclose(r, 0.25, atol=1e-6)


def test_cloud_bad_shapes():
    with pytest.raises(ValueError):
        relevancy_point_cloud(np.zeros((2, 4, 4)), np.zeros((4, 4, 1)), np.eye(3), np.eye(4))
    with pytest.raises(ValueError):
        relevancy_point_cloud(np.zeros((2, 4, 4)), np.zeros((4, 4)), np.eye(4), np.eye(4))


def test_sample_points():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    r = np.stack([xyz[:, 0], xyz[:, 1]])
    p, s = sample_points(xyz, r, 60, rng)
    assert p.shape == (60, 3) and s.shape == (2, 60)
    assert len(np.unique(p[:, 0])) == 60  # without replacement when enough points
    np.testing.assert_array_equal(s[0], p[:, 0])  # relevancy stays attached to its point
    p2, _ = sample_points(xyz, r, 250, rng)
    assert p2.shape == (250, 3)
    with pytest.raises(ValueError):
        sample_points(np.zeros((0, 3)), np.zeros((1, 0)), 5, rng)


def test_scatter_max_against_brute_force():
    torch.manual_seed(0)
    ws = Workspace((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))
    G, B, N, C = 5, 2, 300, 3
    xyz = torch.rand(B, N, 3) * 2.4 - 1.2 + torch.tensor([0, 0, 0.9])  # some points outside -> clamped
    feats = torch.randn(B, N, C)
    out = scatter_max_grid(xyz, feats, ws, G)
    assert out.shape == (B, C, G, G, G)
    lo, up = np.array(ws.lower), np.array(ws.upper)
    ref = np.zeros((B, C, G, G, G))
    hit = np.zeros((B, G, G, G), bool)
    for b in range(B):
        for n in range(N):
            p = xyz[b, n].double().numpy()
            ijk = [min(max(int(np.floor((p[a] - lo[a]) / (up[a] - lo[a]) * (G - 1))), 0), G - 1) for a in range(3)]
            f = feats[b, n].double().numpy()
            if not hit[b, ijk[0], ijk[1], ijk[2]]:
                ref[b, :, ijk[0], ijk[1], ijk[2]] = f
                hit[b, ijk[0], ijk[1], ijk[2]] = True
            else:
                ref[b, :, ijk[0], ijk[1], ijk[2]] = np.maximum(ref[b, :, ijk[0], ijk[1], ijk[2]], f)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    assert (~hit).any()  # empty nodes exist and hold 0
    # the gradient reaches exactly the maximal point of each occupied node and channel
    feats.requires_grad_(True)
    scatter_max_grid(xyz, feats, ws, G).sum().backward()
    assert int(feats.grad.sum()) == int(hit.sum()) * C


def test_grid_conventions():
    ws = Workspace((0.0, 0.0, 0.0), (1.0, 2.0, 3.0))
    G = 11
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.5, 1.0, 1.5]])
    np.testing.assert_array_equal(grid_indices(corners, ws, G).numpy(), [[0, 0, 0], [10, 10, 10], [5, 5, 5]])
    np.testing.assert_allclose(normalise_queries(corners, ws).numpy(), [[-1, -1, -1], [1, 1, 1], [0, 0, 0]], atol=1e-6)
    ref = normalise_queries(corners, ws, reference_scaling=True, grid=G).numpy()
    np.testing.assert_allclose(ref[1], 2 * 10 / 11 - 1, atol=1e-6)
    lat = lattice_points(ws, 4)
    assert lat.shape == (64, 3)
    np.testing.assert_allclose(lat[0], [0.125, 0.25, 0.375])
    np.testing.assert_allclose(lat[1], [0.125, 0.25, 1.125])  # C order: z fastest


def test_frustum_mask():
    K = np.array([[10.0, 0, 9.5], [0, 10.0, 9.5], [0, 0, 1]])
    T = _camera_looking_along_x()
    pts = np.array([[0.0, 0.0, 1.0], [-2.0, 0.0, 1.0], [0.0, 5.0, 1.0]])  # ahead, behind, far to the side
    np.testing.assert_array_equal(frustum_mask(pts, K, T, (20, 20)), [True, False, False])


def test_mean_scatter_and_reference_normalisation():
    """The released code's conventions: mean over a node's points; node index clamped, divided by G."""
    from occ_audit_ros.semabs.pointcloud import DECODER_CONVENTIONS, scatter_grid

    ws = Workspace((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    G = 5
    xyz = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.6, 0.3, 0.9]]])
    feats = torch.tensor([[[1.0], [3.0], [-2.0], [5.0]]])
    mean = scatter_grid(xyz, feats, ws, G, "mean")
    mx = scatter_grid(xyz, feats, ws, G, "max")
    assert mean[0, 0, 0, 0, 0] == 2.0 and mx[0, 0, 0, 0, 0] == 3.0
    assert mean[0, 0, 4, 4, 4] == -2.0 and mean[0, 0, 2, 1, 3] == 5.0
    assert int((mean != 0).sum()) == 3
    torch.testing.assert_close(mx, scatter_max_grid(xyz, feats, ws, G))
    with pytest.raises(ValueError, match="reduce"):
        scatter_grid(xyz, feats, ws, G, "sum")
    q = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, -1.0, 0.5]])
    ref = normalise_queries(q, ws, grid=G, convention="reference").numpy()
    np.testing.assert_allclose(ref[0], -1.0)
    np.testing.assert_allclose(ref[1], 2 * 4 / 5 - 1, atol=1e-6)
    np.testing.assert_allclose(ref[2], [2 * 4 / 5 - 1, -1.0, 2 * 2 / 5 - 1], atol=1e-6)  # clamped
    ours = normalise_queries(q, ws).numpy()
    np.testing.assert_allclose(ours[2], [3.0, -3.0, 0.0], atol=1e-6)  # not clamped
    assert DECODER_CONVENTIONS == ("ours", "reference")
    with pytest.raises(ValueError, match="decoder convention"):
        normalise_queries(q, ws, grid=G, convention="upstream")
    with pytest.raises(ValueError, match="grid size"):
        normalise_queries(q, ws, convention="reference")
