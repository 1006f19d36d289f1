"""Model files are checked before anything is built from them: the shipped SemAbs and AGO
checkpoints and a saved CLIP directory pass; pickled, truncated, wrong-shape, integer, non-finite,
missing and wrong-task files, and CLIP directories with a missing or inconsistent config.json, are
refused with one error naming the file and the problem, never unpickled and never loaded silently."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from occ_audit_ros import paths
from occ_audit_ros.backends import AgoBackendConfig, SemAbsBackendConfig, create_backend
from occ_audit_ros.clip_model import ClipWeightsUnavailable, load_clip
from occ_audit_ros.model_files import (ModelFileError, check_ago_checkpoint, check_clip_dir,
                                       check_semabs_checkpoint)
from occ_audit_ros.pipeline import PipelineConfig
from occ_audit_ros.relevancy import RelevancyConfig
from occ_audit_ros.voxel_grid import VoxelGridSpec

OVSSC = paths.resource("models/semabs/ovssc_sim.safetensors")
AGO = paths.resource("models/ago/closed_ground_sim")


class _Touch:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _rewrite(src, dst, change):
    tensors, meta = _read(src)
    change(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _first_weight(tensors, prefix=""):
    return next(k for k in sorted(tensors) if k.startswith(prefix) and k.endswith("weight"))


@pytest.fixture(scope="module")
def clip():
    return load_clip("random-tiny")


def _semabs(clip, ovssc, vool=""):
    config = PipelineConfig(labels=["car", "road"], relevancy=RelevancyConfig(output_stride=8),
                            grid=VoxelGridSpec((5.0, -1.0, -0.1), (7.0, 1.0, 1.9), 0.2))
    return create_backend("semabs", config, SemAbsBackendConfig(ovssc_checkpoint=str(ovssc), vool_checkpoint=str(vool)),
                          clip=clip)


def test_shipped_models_pass():
    assert check_semabs_checkpoint(OVSSC, task="ovssc")["task"] == "ovssc"
    info = check_ago_checkpoint(AGO)
    assert info["vocabulary"] and Path(info["checkpoint_dir"]).is_dir()


def test_pickle_renamed_safetensors_is_refused_not_unpickled(tmp_path, clip):
    marker = tmp_path / "unpickled"
    bad = tmp_path / "ovssc.safetensors"
    torch.save({"w": torch.zeros(2), "x": _Touch(marker)}, bad)  # torch.save zip
    with pytest.raises(ModelFileError, match="not safetensors; refusing to unpickle") as err:
        _semabs(clip, bad)
    assert str(bad) in str(err.value)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps(_Touch(marker)))  # a bare pickle
    with pytest.raises(ModelFileError, match="pickle"):
        check_semabs_checkpoint(raw)
    assert not marker.exists()


@pytest.mark.parametrize("change, problem", [
    (lambda t, k: t.__setitem__(k, t[k].to(torch.int32)), "dtype I32"),
    (lambda t, k: t[k].view(-1).__setitem__(0, float("nan")), "non-finite"),
    (lambda t, k: t[k].view(-1).__setitem__(-1, float("inf")), "non-finite"),
    (lambda t, k: t.__setitem__(k, torch.zeros(3, 3)), "shape"),
    (lambda t, k: t.pop(k), "missing"),
    (lambda t, k: t.__setitem__("model.extra.weight", torch.zeros(1)), "unexpected"),
])
def test_semabs_checkpoint_with_bad_tensors_is_refused(tmp_path, clip, change, problem):
    """Before: integer weights were cast and non-finite ones loaded without a word."""
    bad = _rewrite(OVSSC, tmp_path / "ovssc.safetensors",
                   lambda t: change(t, _first_weight(t, "model.")))
    with pytest.raises(ModelFileError, match=problem) as err:
        _semabs(clip, bad)
    assert str(err.value).startswith(str(bad))


def test_semabs_truncated_missing_and_wrong_task(tmp_path, clip):
    cut = tmp_path / "cut.safetensors"
    data = OVSSC.read_bytes()
    cut.write_bytes(data[: len(data) * 999 // 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        _semabs(clip, cut)
    with pytest.raises(ModelFileError, match="does not exist") as err:
        _semabs(clip, tmp_path / "nowhere.safetensors")
    assert "nowhere.safetensors" in str(err.value)
    with pytest.raises(ModelFileError, match="holds a 'ovssc' network, expected 'vool'"):
        _semabs(clip, OVSSC, vool=OVSSC)
    meta_less = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(meta_less))
    with pytest.raises(ModelFileError, match="not a SemAbs checkpoint"):
        _semabs(clip, meta_less)


def _ago_copy(tmp_path, change=None):
    ck = tmp_path / "ago"
    shutil.copytree(AGO, ck)
    if change is not None:
        _rewrite(AGO / "model.safetensors", ck / "model.safetensors", change)
    return ck


@pytest.mark.parametrize("change, problem", [
    (lambda t: t.__setitem__(_first_weight(t), t[_first_weight(t)].to(torch.int64)), "dtype I64"),
    (lambda t: t[_first_weight(t)].view(-1).__setitem__(0, float("nan")), "non-finite"),
    (lambda t: t.__setitem__(_first_weight(t), torch.zeros(1)), "shape"),
])
def test_ago_checkpoint_with_bad_tensors_is_refused(tmp_path, change, problem):
    ck = _ago_copy(tmp_path, change)
    config = PipelineConfig(labels=["car"], relevancy=RelevancyConfig(), grid=VoxelGridSpec((0, 0, 0), (1, 1, 1), 0.5))
    with pytest.raises(ModelFileError, match=problem) as err:
        create_backend("ago", config, AgoBackendConfig(checkpoint=str(ck)))
    assert str(ck / "model.safetensors") in str(err.value)


def test_ago_directory_problems(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        check_ago_checkpoint(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="neither model.safetensors nor a 'latest'"):
        check_ago_checkpoint(tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest").write_text("ckpt-000100\n")
    with pytest.raises(ModelFileError, match="names 'ckpt-000100'"):
        check_ago_checkpoint(run)
    ck = _ago_copy(tmp_path)
    (ck / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="pickle"):
        check_ago_checkpoint(ck)


@pytest.fixture
def clip_dir(tmp_path, clip):
    d = tmp_path / "clip"
    clip.model.save_pretrained(d)
    clip.tokenizer.save_pretrained(d)
    return d


def test_clip_directory_checks(clip_dir):
    check_clip_dir(clip_dir)
    assert load_clip(str(clip_dir)).random_weights is False  # loads: the checks accept a real layout


@pytest.mark.parametrize("damage, problem", [
    (lambda d: (d / "config.json").unlink(), "config.json: does not exist"),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json: is not readable JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert"})), "not a CLIP config"),
    (lambda d: _edit_config(d, lambda c: c["vision_config"].__setitem__("hidden_size", 96)), "shape"),
    (lambda d: _edit_config(d, lambda c: c["text_config"].__setitem__("num_hidden_layers", 3)), "lack"),
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
])
def test_clip_directory_with_missing_or_inconsistent_config_is_refused(clip_dir, damage, problem):
    """Before: transformers ended in a size-mismatch RuntimeError (a traceback) or a half-random model."""
    damage(clip_dir)
    with pytest.raises(ClipWeightsUnavailable, match=problem) as err:
        load_clip(str(clip_dir))
    assert str(clip_dir) in str(err.value)


def _edit_config(d, change):
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
