"""The released-model path end to end, on the imported test fixture: ``occ_audit_semabs_import`` on the
upstream-format fixture (``test/data/semabs_golden``, reduced width, random weights), then the perception
node with ``model: semabs`` on the imported checkpoints over real rclpy and the real keyframe bag. The
weights are random, so this checks the data path (import -> node -> published grid and hidden-object
answer), not accuracy; every output says ``random_weights``."""

import numpy as np
from rclpy.parameter import Parameter

from node_fixtures import whole_set_params
from occ_audit_ros import paths
from occ_audit_ros.nodes.perception_node import PerceptionNode
from occ_audit_ros.semabs.checkpoint import load_checkpoint
from occ_audit_ros.semabs.importer import main as import_main
from test_node_models import CENTER, LABELS, Sink, _play, keyframe_bag, ros  # noqa: F401 (fixtures)

FIXTURE = paths.REPO_ROOT / "test" / "data" / "semabs_golden"


def test_node_runs_the_imported_released_layout(ros, keyframe_bag, tmp_path):  # noqa: F811
    out = tmp_path / "imported"
    assert import_main([str(FIXTURE), "--out", str(out)]) == 0
    ovssc, vool = out / "ovssc.safetensors", out / "vool.safetensors"
    _, task, config, _, _ = load_checkpoint(ovssc)
    assert task == "ovssc" and config.decoder_convention == "reference"

    params = {"clip_model": "random-tiny", "model": "semabs", "cameras": ["CAM_FRONT"], "labels": LABELS,
              "relevancy.output_stride": 8, "grid.lower": list(CENTER - 1.0), "grid.upper": list(CENTER + 1.0),
              "grid.voxel_size": 0.125, "semabs.workspace_center": list(CENTER), "semabs.num_points": 3000,
              "semabs.ovssc_checkpoint": str(ovssc), "semabs.vool_checkpoint": str(vool),
              "semabs.min_probability": 0.0, "warn_period_s": 0.0, "diagnostics.period_s": 0.0,
              **whole_set_params(["CAM_FRONT"])}
    node = ros(PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    sink = ros(Sink())
    _play(ros, keyframe_bag, node, ["CAM_FRONT"])
    assert sink.wait("grid", 1)
    grid = sink.got["grid"][0]
    assert grid.random_weights and grid.model == str(ovssc)
    assert list(grid.dimensions) == [16, 16, 16] and list(grid.labels) == LABELS

    sink.query_pub.publish(sink.Query(target="car", relation="behind", reference="building"))
    assert sink.wait("result", 1), node.counters
    result = sink.got["result"][0]
    probabilities = np.asarray(result.probabilities)
    assert len(result.indices) == 16 ** 3 and np.all((probabilities >= 0) & (probabilities <= 1))
    assert (result.query.target, result.query.relation, result.query.reference) == ("car", "behind", "building")
    assert result.random_weights
