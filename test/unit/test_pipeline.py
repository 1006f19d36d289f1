"""The ROS-free pipeline and the backends on the real nuScenes keyframe (tiny random CLIP, shipped
SemAbs and AGO checkpoints): the relevancy pipeline, the Backend interface of every model, the
parameter table's per-model groups."""

import numpy as np
import pytest

from occ_audit_ros import params, paths
from occ_audit_ros.backends import (BACKENDS, AgoBackendConfig, Backend, HiddenObjectQueries, Reconfigurable,
                                    SemAbsBackendConfig, UsesRelevancy, create_backend)
from occ_audit_ros.geometry import transform_points
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera
from occ_audit_ros.pipeline import CameraInput, PerceptionPipeline, PipelineConfig, PipelineResult
from occ_audit_ros.relevancy import RelevancyConfig
from occ_audit_ros.voxel_grid import VoxelGridSpec

#: The node's default grid (Occ3D-nuScenes extent, 0.4 m voxels) in base_link.
DRIVING_GRID = VoxelGridSpec((-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), 0.4)


def driving_config(**relevancy) -> PipelineConfig:
    return PipelineConfig(labels=list(params.DRIVING_LABELS), relevancy=RelevancyConfig(**relevancy), grid=DRIVING_GRID)


@pytest.fixture(scope="module")
def inputs(keyframe):
    return [CameraInput(ch, cam.image, cam.K, cam.T_base_cam, lidar_depth_for_camera(keyframe, ch),
                        cam.timestamp_us * 1000) for ch, cam in keyframe.cameras.items()]


def test_keyframe_to_voxels(tiny_clip, keyframe, inputs):
    cfg = driving_config(output_stride=4)
    result = PerceptionPipeline(tiny_clip, cfg).process(inputs)
    vox = result.voxels
    assert vox.frame_id == "base_link" and vox.random_weights and vox.spec.dims == (200, 200, 16)
    assert set(result.relevancy) == set(keyframe.cameras)
    assert result.relevancy["CAM_FRONT"].shape == (len(cfg.labels), 225, 400)
    assert all(n > 1000 for n in result.points_per_camera.values())
    # Every occupied voxel holds at least one LiDAR return seen by a camera, and vice versa.
    pts = np.concatenate([transform_points(c.T_target_cam, _cam_points(c)) for c in inputs])
    ijk, inside = vox.spec.point_to_voxel(pts)
    assert set(vox.spec.flat_index(ijk[inside]).tolist()) == set(vox.indices.tolist())
    assert vox.stamp_ns == max(c.stamp_ns for c in inputs)
    assert set(result.timings_s) == {"relevancy", "backproject", "fuse", "total"}


def _cam_points(cam):
    from occ_audit_ros.geometry import backproject_depth

    d = np.where((cam.depth >= 1.0) & (cam.depth <= 80.0), cam.depth, np.nan)
    return backproject_depth(d, cam.K)[0]


def test_bad_camera_input(tiny_clip, inputs):
    pipe = PerceptionPipeline(tiny_clip, driving_config(output_stride=2))
    cam = inputs[0]
    with pytest.raises(ValueError, match="differ in size"):
        pipe.process([CameraInput(cam.channel, cam.image, cam.K, cam.T_target_cam, cam.depth[:10], 0)])
    with pytest.raises(ValueError, match="intrinsics"):
        pipe.process([CameraInput(cam.channel, cam.image, np.zeros((3, 3)), cam.T_target_cam, cam.depth, 0)])
    with pytest.raises(ValueError):
        pipe.process([])
    all_nan = CameraInput(cam.channel, cam.image, cam.K, cam.T_target_cam, np.full_like(cam.depth, np.nan), 0)
    assert len(pipe.process([all_nan]).voxels.indices) == 0  # no depth: no voxels, no crash
    with pytest.raises(ValueError):
        pipe.set_labels([])


def test_params_validation():
    with pytest.raises(ValueError, match="unknown"):
        params.validate({"nope": 1})
    with pytest.raises(ValueError):
        params.validate({"labels": []})
    with pytest.raises(ValueError):
        params.validate({"grid.voxel_size": "big"})
    assert params.validate({"grid.voxel_size": 1})["grid.voxel_size"] == 1.0


def test_params_of_a_model_belong_to_its_group_only():
    assert set(params.MODEL_PARAMS) == set(BACKENDS) == set(params.PARAMS_BY_NAME["model"].choices)
    names = {m: {p.name for p in params.node_params(m)} for m in params.MODEL_PARAMS}
    assert not any(n.startswith(("semabs.", "ago.")) for n in names["relevancy"])
    assert {n for n in names["semabs"] if n.startswith("semabs.")} == {p.name for p in params.SEMABS_PARAMS}
    assert not any(n.startswith("ago.") for n in names["semabs"])
    assert {n for n in names["ago"] if n.startswith("ago.")} == {p.name for p in params.AGO_PARAMS}
    # each parameter is declared once: the common table and the groups do not overlap
    assert len(params.PERCEPTION_PARAMS) == len(params.PARAMS_BY_NAME)
    with pytest.raises(ValueError, match="belong to model 'semabs'"):
        params.validate({"semabs.num_points": 10})
    with pytest.raises(ValueError, match="belong to model 'ago'"):
        params.validate({"model": "semabs", "ago.identifier": "none"})
    with pytest.raises(ValueError, match="model must be one of"):
        params.validate({"model": "nerf"})
    assert params.validate({"model": "semabs"})["semabs.num_points"] == 6000
    with pytest.raises(ValueError, match="needs ago.checkpoint"):
        params.validate({"model": "ago"})
    table = params.markdown_table().splitlines()
    assert table[0].startswith("| parameter | model |")
    rows = {r.split("|")[1].strip(" `"): r.split("|")[2].strip() for r in table[2:]}
    assert rows["semabs.camera"] == "semabs" and rows["ago.checkpoint"] == "ago" and rows["labels"] == "any"


def _workspace_config(center, labels):
    """A 16^3 grid of 12.5 cm voxels on the SemAbs workspace cube centred at ``center`` (base_link)."""
    return PipelineConfig(labels=list(labels), relevancy=RelevancyConfig(output_stride=8),
                          grid=VoxelGridSpec(tuple(np.subtract(center, 1.0)), tuple(np.add(center, 1.0)), 0.125))


@pytest.mark.parametrize("model", list(BACKENDS))
def test_every_backend_implements_the_interface(model, tiny_clip, inputs):
    """Each model, built by the factory from typed configs, is a Backend: one keyframe in, semantic
    voxels on its grid out, timed stages, a label change on the next frame; optional capabilities
    show through isinstance only."""
    center = (6.0, 0.0, 0.9)
    labels = ["car", "road", "building"]
    if model == "relevancy":
        config, model_config, cams = driving_config(output_stride=8), None, inputs
        config.labels = labels
    elif model == "semabs":
        config = _workspace_config(center, labels)
        model_config = SemAbsBackendConfig(workspace_center=center, num_points=2000, min_probability=0.0)
        cams = [c for c in inputs if c.channel == "CAM_FRONT"]
    else:
        config, cams = driving_config(), inputs
        config.labels = labels
        model_config = AgoBackendConfig(str(paths.resource("models/ago/closed_ground_sim")))
    backend = create_backend(model, config, model_config, clip=tiny_clip if BACKENDS[model].uses_clip else None)
    assert isinstance(backend, Backend) and isinstance(backend, BACKENDS[model].backend_type)
    capabilities = {c.__name__ for c in (UsesRelevancy, HiddenObjectQueries, Reconfigurable) if isinstance(backend, c)}
    assert capabilities == {"relevancy": {"UsesRelevancy"}, "ago": set(),
                            "semabs": {"UsesRelevancy", "HiddenObjectQueries", "Reconfigurable"}}[model]
    result = backend.process(cams)
    assert isinstance(result, PipelineResult)
    vox = result.voxels
    assert vox.spec == backend.grid and vox.labels == labels and len(vox.indices) > 0
    assert vox.random_weights == backend.random_weights and vox.model == backend.model_name
    assert vox.stamp_ns == max(c.stamp_ns for c in cams)
    assert set(result.timings_s) == set(backend.stages) | {"total"}
    backend.set_labels(["tree", "car"])
    assert backend.process(cams).voxels.labels == ["tree", "car"]
    with pytest.raises(ValueError):
        backend.set_labels([])
    if isinstance(backend, HiddenObjectQueries):
        answer = backend.hidden_object("car", "behind", "tree")
        assert not answer.error and answer.spec == backend.grid and answer.min_probability == 0.0
        assert len(answer.indices) == len(backend.flat)  # min_probability 0: every workspace voxel
        backend.reconfigure(SemAbsBackendConfig(workspace_center=center, num_points=2000, min_probability=0.5))
        kept = backend.hidden_object("car", "behind", "tree")
        np.testing.assert_array_equal(kept.indices, answer.indices[answer.probabilities >= 0.5])
        with pytest.raises(ValueError, match="only at start"):
            backend.reconfigure(SemAbsBackendConfig(workspace_center=center, num_points=3000))
    if isinstance(backend, UsesRelevancy):
        before = backend.extractor
        backend.set_relevancy(RelevancyConfig(output_stride=16))
        assert backend.extractor is not before and backend.config.relevancy.output_stride == 16
        cam = result.relevancy[cams[0].channel]
        assert backend.process(cams).relevancy[cams[0].channel].shape[1] == -(-cam.shape[1] * 8 // 16)


def test_backend_factory_refuses_wrong_inputs(tiny_clip):
    config = driving_config()
    with pytest.raises(ValueError, match="unknown model"):
        create_backend("nerf", config, clip=tiny_clip)
    with pytest.raises(ValueError, match="needs a loaded CLIP"):
        create_backend("semabs", config)
    with pytest.raises(TypeError, match="needs a SemAbsBackendConfig"):
        create_backend("semabs", config, AgoBackendConfig("x"), clip=tiny_clip)
    with pytest.raises(TypeError, match="takes no model config"):
        create_backend("relevancy", config, SemAbsBackendConfig(), clip=tiny_clip)
    with pytest.raises(ValueError, match="needs a model config of type AgoBackendConfig"):
        create_backend("ago", config)
    with pytest.raises(ValueError, match="inside the SemAbs workspace"):  # default grid: 0 voxels in the cube
        create_backend("semabs", PipelineConfig(["car"], RelevancyConfig(), VoxelGridSpec((-40, -40, -1), (-38, -38, 1), 0.5)),
                       SemAbsBackendConfig(), clip=tiny_clip)
    with pytest.raises(ValueError, match="workspace_center"):
        SemAbsBackendConfig(workspace_center=(1.0, 2.0))
    with pytest.raises(ValueError, match="identifier"):
        AgoBackendConfig("x", identifier="max")
