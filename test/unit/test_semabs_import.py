"""occ_audit_semabs_import on the released-layout fixture, and every refusal (which must write nothing)."""

import argparse
import collections
import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from occ_audit_ros.semabs.checkpoint import load_checkpoint
from occ_audit_ros.semabs.importer import CheckpointImportError, import_released, load_args, main
from occ_audit_ros.semabs.model import RELATIONS

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "semabs_golden"


@pytest.fixture()
def released(tmp_path):
    """A writable copy of the fixture's models/ours-like folder (ovssc/, vool/)."""
    dst = tmp_path / "ours"
    for task in ("ovssc", "vool"):
        (dst / task).mkdir(parents=True)
        for name in (f"{task}.pth", "args.pkl"):
            shutil.copy(GOLDEN / task / name, dst / task / name)
    return dst


def _edit_args(folder: Path, **changes) -> None:
    args = load_args(folder / "args.pkl")
    for k, v in changes.items():
        setattr(args, k, v)
    (folder / "args.pkl").write_bytes(pickle.dumps(args, protocol=4))


def _edit_state(pth: Path, fn) -> None:
    ckpt = torch.load(pth, map_location="cpu", weights_only=True)
    fn(ckpt["net"])
    torch.save(ckpt, pth)


def test_import_writes_both_networks_with_cards(released, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(released), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ovssc.safetensors", "vool.safetensors"]
    assert '"task": "ovssc"' in capsys.readouterr().out
    model, task, cfg, _, card = load_checkpoint(out / "ovssc.safetensors")
    assert task == "ovssc" and cfg.decoder_convention == "reference"
    assert (cfg.grid, cfg.unet_levels, cfg.unet_f_maps, cfg.unet_groups, cfg.feat_dim, cfg.point_hidden) == (16, 3, 8, 4, 3, 32)
    assert card["source_sha256"] == hashlib.sha256((released / "ovssc" / "ovssc.pth").read_bytes()).hexdigest()
    assert card["num_input_points"] == 3000 and card["cutoff"] == -3.0
    assert card["upstream_cutoffs"] == {"ovssc_empty_below": -3.0, "vool_keep_within_max_minus": 0.15}
    assert card["dropped_keys"] == ["steps"] and card["args"]["approach"] == "semantic_abstraction"
    vmodel, vtask, vcfg, _, vcard = load_checkpoint(out / "vool.safetensors")
    assert vtask == "vool" and vcfg.pointing_dim == 16 and "cutoff" not in vcard
    assert vcard["dropped_keys"] == ["completion_net.steps", "completion_net.visual_sampler.mlp.0.bias",
                                     "completion_net.visual_sampler.mlp.0.weight",
                                     "completion_net.visual_sampler.mlp.2.bias",
                                     "completion_net.visual_sampler.mlp.2.weight", "steps"]
    src = torch.load(released / "vool" / "vool.pth", map_location="cpu", weights_only=True)["net"]
    for i, name in enumerate(RELATIONS):
        torch.testing.assert_close(vmodel.relation_embeddings[i], src[f"module.relation_embeddings.{name}"])
    torch.testing.assert_close(model.decoder[2].weight, torch.load(released / "ovssc" / "ovssc.pth",
                               weights_only=True)["net"]["module.visual_sampler.mlp.2.weight"])


def test_import_accepts_a_single_pth_and_unprefixed_keys(released, tmp_path):
    _edit_state(released / "ovssc" / "ovssc.pth",
                lambda sd: [sd.__setitem__(k[len("module."):], sd.pop(k)) for k in list(sd)])
    written = import_released(released / "ovssc" / "ovssc.pth", tmp_path / "one")
    assert list(written) == ["ovssc"] and written["ovssc"].is_file()


def _refused(released: Path, tmp_path: Path, capsys, match: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(CheckpointImportError, match=match):
        import_released(released, out)
    assert not out.exists()
    assert main([str(released), "--out", str(out)]) == 2
    assert "occ_audit_semabs_import: error:" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_a_pickle_naming_another_global(released, tmp_path, capsys):
    args = load_args(released / "vool" / "args.pkl")
    args.extra = collections.OrderedDict(a=1)
    (released / "vool" / "args.pkl").write_bytes(pickle.dumps(args, protocol=4))
    _refused(released, tmp_path, capsys, "collections.OrderedDict; only argparse.Namespace")


def test_refuses_a_pickle_that_is_not_a_namespace(released, tmp_path, capsys):
    (released / "ovssc" / "args.pkl").write_bytes(pickle.dumps({"unet_f_maps": 8}))
    _refused(released, tmp_path, capsys, "not an argparse.Namespace")


def test_refuses_another_approach(released, tmp_path, capsys):
    _edit_args(released / "vool", approach="clip_spatial")
    _refused(released, tmp_path, capsys, "approach 'clip_spatial' is not importable")


def test_refuses_other_network_inputs(released, tmp_path, capsys):
    _edit_args(released / "ovssc", network_inputs=["saliency", "tsdf"])
    _refused(released, tmp_path, capsys, "network_inputs")


def test_refuses_another_pointing_method(released, tmp_path, capsys):
    _edit_args(released / "vool", pointing_method="dot_product")
    _refused(released, tmp_path, capsys, "pointing_method 'dot_product'")


def test_refuses_a_missing_key(released, tmp_path, capsys):
    key = "module.vol_feature_extractor.decoders.1.basic_module.conv3.conv.weight"
    _edit_state(released / "ovssc" / "ovssc.pth", lambda sd: sd.pop(key))
    _refused(released, tmp_path, capsys, "missing key 'vol_feature_extractor.decoders.1.basic_module.conv3.conv.weight'")


def test_refuses_a_missing_relation_embedding(released, tmp_path, capsys):
    _edit_state(released / "vool" / "vool.pth", lambda sd: sd.pop("module.relation_embeddings.behind"))
    _refused(released, tmp_path, capsys, "missing key 'relation_embeddings.behind'")


def test_refuses_a_shape_mismatch(released, tmp_path, capsys):
    key = "module.vol_feature_extractor.encoders.1.basic_module.conv2.groupnorm.weight"
    _edit_state(released / "ovssc" / "ovssc.pth", lambda sd: sd.__setitem__(key, torch.ones(15)))
    _refused(released, tmp_path, capsys, "shape mismatch for 'vol_feature_extractor.encoders.1.basic_module.conv2.groupnorm.weight'")


def test_refuses_args_that_disagree_with_the_weights(released, tmp_path, capsys):
    _edit_args(released / "ovssc", unet_f_maps=16)
    _refused(released, tmp_path, capsys, "unet_f_maps = 16 but the weights imply 8")


def test_refuses_an_unexpected_key(released, tmp_path, capsys):
    _edit_state(released / "ovssc" / "ovssc.pth", lambda sd: sd.__setitem__("module.semantic_class_pointer.x", torch.ones(1)))
    _refused(released, tmp_path, capsys, "semantic_aware")


def test_refuses_a_non_weights_only_checkpoint(released, tmp_path, capsys):
    torch.save({"net": {}, "optimizer": argparse.Namespace(a=1)}, released / "ovssc" / "ovssc.pth")
    _refused(released, tmp_path, capsys, "not a weights-only torch checkpoint")


def test_missing_files(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no ovssc.pth or vool.pth"):
        import_released(tmp_path / "empty", tmp_path / "o")
    assert not (tmp_path / "o").exists()
