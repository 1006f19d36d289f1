"""Camera-to-voxel lifting frames and shapes, the model's outputs, and one training step on the
real keyframe (coarse grid, small images)."""

import numpy as np
import pytest
import torch

from occ_audit_ros.ago.classes import load_class_config
from training.ago.data import collate, sample_from_keyframe, training_vocabulary
from occ_audit_ros.ago.model import ago_losses, build_model
from occ_audit_ros.ago.network import ClipPatchEncoder, lift_features, lift_geometry
from training.ago.occ_gt import OCC3D_SPEC
from occ_audit_ros.ago.prompts import encode_vocabulary
from occ_audit_ros.ago.text import ClipTextEncoder
from occ_audit_ros.geometry import invert_transform, project_points, transform_points
from occ_audit_ros.voxel_grid import VoxelGridSpec

SPEC = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, 1.6)  # 50 x 50 x 4


@pytest.fixture(scope="module")
def sample(keyframe):
    return sample_from_keyframe(keyframe, SPEC, image_scale=0.08, pixel_stride=48)


def test_lift_geometry_matches_projection(keyframe):
    cams = [(c.K, invert_transform(keyframe.lidar.T_map_base) @ c.T_map_cam, c.width, c.height)
            for c in keyframe.cameras.values()]
    geom = lift_geometry(SPEC, cams)
    names = list(keyframe.cameras)
    ahead = SPEC.flat_index(SPEC.point_to_voxel(np.array([[20.0, 0.0, 1.0]]))[0])[0]
    behind = SPEC.flat_index(SPEC.point_to_voxel(np.array([[-20.0, 0.0, 1.0]]))[0])[0]
    assert geom.valid[names.index("CAM_FRONT"), ahead] and not geom.valid[names.index("CAM_BACK"), ahead]
    assert geom.valid[names.index("CAM_BACK"), behind] and not geom.valid[names.index("CAM_FRONT"), behind]
    # normalised coordinates agree with geometry.project_points
    K, T, w, h = cams[names.index("CAM_FRONT")]
    c = SPEC.voxel_centers(np.array([ahead]))
    uv, _ = project_points(K, transform_points(invert_transform(T), c))
    g = geom.grid[names.index("CAM_FRONT"), ahead].numpy()
    assert np.allclose((g + 1) / 2 * [w, h] - 0.5, uv[0], atol=1e-3)
    # a feature map holding the camera index: the voxel ahead gets CAM_FRONT's value only
    feats = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 9, 16).contiguous()
    lifted = lift_features(feats, geom)
    assert lifted.shape == (1 + 5, 50, 50, 4)
    assert lifted[0].reshape(-1)[ahead] == names.index("CAM_FRONT")
    assert lifted[0].reshape(-1)[behind] == names.index("CAM_BACK")


def test_sample_and_depth_evidence(sample):
    assert sample.images.shape == (6, 3, 72, 128) and sample.depth.shape == (6, 72, 128)
    assert torch.isfinite(sample.depth).sum() > 1000
    lifted = lift_features(torch.zeros(6, 2, 9, 16), sample.geom, sample.depth, SPEC.voxel_size)
    free_ev, surf_ev = lifted[3].reshape(-1), lifted[4].reshape(-1)
    occ = (sample.semantics.reshape(-1) < 17)
    free = sample.semantics.reshape(-1) == 17
    # surface evidence is higher on GT-occupied voxels, free evidence on GT-free ones
    assert surf_ev[occ].mean() > surf_ev[free].mean()
    assert free_ev[free].mean() > free_ev[occ].mean()


def test_training_step_lowers_loss_and_text_queries(sample, tiny_clip):
    torch.manual_seed(0)
    cfg = load_class_config()
    text = ClipTextEncoder(tiny_clip)
    vocab, lm = training_vocabulary(cfg, "closed")
    bank = encode_vocabulary(text, vocab)
    model = build_model({"image_encoder": "cnn", "cnn_channels": 8, "cnn_width": 8, "hidden": 16,
                         "voxel_size": SPEC.voxel_size}, text.dim)
    batch = collate([sample], lm)
    noise = text.encode(["banana", "violin", "cloud"])
    align = ClipPatchEncoder(tiny_clip, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss():
        out = model(batch["images"], batch["geoms"], bank, noise, batch["depth"])
        return out, ago_losses(batch, out, bank, align)

    out, l0 = loss()
    assert out["logits"].shape == (50 * 50 * 4, 17 + 1 + 3)
    assert out["class_logits"].shape == (1, 50, 50, 4, 18) and out["feats"].shape == (1, 50, 50, 4, 32)
    assert set(l0) == {"grounding", "occ", "align", "total"} and l0["align"] > 0
    l0["total"].backward()
    opt.step()
    opt.zero_grad()
    _, l1 = loss()
    assert l1["total"].item() < l0["total"].item()
    # unknown classes queried by text at run time: any vocabulary, K + 1 outputs
    query = encode_vocabulary(text, ["fire hydrant", "shopping cart"])
    pred = model.predict(batch["images"], batch["geoms"], query, batch["depth"])
    assert pred["probs"].shape == (1, 50, 50, 4, 3) and pred["labels"].max() <= 2
    assert torch.allclose(pred["probs"].sum(-1), torch.ones(1, 50, 50, 4), atol=1e-5)


def test_open_world_vocabulary_map():
    cfg = load_class_config()
    vocab, lm = training_vocabulary(cfg, "open_world_pretrain")
    assert list(vocab) == ["pedestrian", "driveable_surface", "sidewalk", "vehicle", "two_wheeler"]
    assert lm[cfg.classes.index("truck")] == 3 and lm[cfg.classes.index("motorcycle")] == 4
    assert lm[17] == 5 and lm[cfg.classes.index("vegetation")] == 255 and lm[255] == 255
