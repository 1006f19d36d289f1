"""Import the released Semantic Abstraction checkpoints into our safetensors format.

Source: real-stanford/semantic-abstraction (commit e76495e, MIT licence), whose README downloads the
paper's trained models (``models/ours/ovssc/ovssc.pth`` and ``models/ours/vool/vool.pth``, each with the
training arguments ``args.pkl`` beside it). The weights are not shipped here; this converts a local copy.

Released layout: ``{"net": state dict, "optimizer": Lamb state, "epochs": int}``, keys with the
``module.`` prefix of DistributedDataParallel; the network's constructor arguments are in ``args.pkl``
(an ``argparse.Namespace``). Key map (after ``module.``; VOOL keys start with ``completion_net.``):

=====================================================  =================================================
released                                               ours
=====================================================  =================================================
``[completion_net.]pts_feat_extractor.{0,2,4}``        ``encoder.point_encoder.{0,2,4}``
``...vol_feature_extractor.encoders.i.basic_module.``  ``encoder.unet.encoders.i.convj.{0,1}``
``convj.{groupnorm,conv}``
``...decoders.i.upsampling.upsample``                  ``encoder.unet.upsamplers.i``
``...decoders.i.basic_module.convj.{groupnorm,conv}``  ``encoder.unet.decoders.i.convj.{0,1}``
``...vol_feature_extractor.final_conv``                ``encoder.unet.final_conv``
OVSSC ``visual_sampler.mlp.{0,2}``                     ``decoder.{0,2}``
VOOL ``spatial_sampler.mlp.{0,2}``                     ``spatial_decoder.{0,2}``
VOOL ``relation_embeddings.<name>`` (7 x (P,))         ``relation_embeddings`` (7, P) in
                                                       :data:`.model.RELATIONS` order
dropped: ``steps`` buffers; VOOL ``completion_net.visual_sampler.mlp`` (unused by the released VOOL)
=====================================================  =================================================

The imported networks use ``decoder_convention="reference"`` (:mod:`.pointcloud`): the released
networks were trained with a mean scatter, unflipped ``grid_sample`` coordinates, a clamped node index
and a division by G, whatever ``args.reduce_method`` says (``net.py`` never passes it on).

Safety: ``*.pth`` is read with ``torch.load(weights_only=True)`` and ``args.pkl`` with an unpickler that
allows ``argparse.Namespace`` and nothing else. Every check runs before anything is written; outputs are
written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from occ_audit_ros.semabs.checkpoint import build_model, save_checkpoint
from occ_audit_ros.semabs.model import RELATIONS, SemAbsConfig

__all__ = ["CheckpointImportError", "ImportedModel", "load_args", "convert", "import_released", "main"]

#: Upstream repository and commit whose checkpoint layout this reads.
UPSTREAM = "real-stanford/semantic-abstraction@e76495e"
#: Cutoffs of the released inference script (visualize.py): OVSSC empty below -3.0 for every label;
#: VOOL keeps the queries within 0.15 of the largest logit.
UPSTREAM_OVSSC_CUTOFF = -3.0
UPSTREAM_VOOL_MARGIN = 0.15


class CheckpointImportError(ValueError):
    """A released checkpoint that cannot be imported (the message says which check failed)."""


class _NamespaceOnly(pickle.Unpickler):
    """Unpickler that resolves ``argparse.Namespace`` and refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        raise CheckpointImportError(f"args.pkl names the global {module}.{name}; only argparse.Namespace is allowed")


def load_args(path) -> argparse.Namespace:
    """Read a released ``args.pkl`` with :class:`_NamespaceOnly`.

    Raises:
        FileNotFoundError: missing file; CheckpointImportError: another global, or not a Namespace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (the released models keep args.pkl beside the .pth)")
    try:
        obj = _NamespaceOnly(io.BytesIO(path.read_bytes())).load()
    except CheckpointImportError:
        raise
    except Exception as e:  # corrupt pickle
        raise CheckpointImportError(f"{path} is not a readable pickle: {e}") from e
    if not isinstance(obj, argparse.Namespace):
        raise CheckpointImportError(f"{path} holds a {type(obj).__name__}, not an argparse.Namespace")
    return obj


@dataclass
class ImportedModel:
    """One converted network: ``task``, ``config``, ``model`` (ours, eval mode), ``card`` (JSON-able)."""

    task: str
    config: SemAbsConfig
    model: torch.nn.Module
    card: dict


def _json_safe(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    return repr(v)


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _unet_key_map(prefix: str, levels: int) -> dict[str, str]:
    """Released U-Net + point-encoder key -> our key (``prefix`` is "" or "completion_net.")."""
    m: dict[str, str] = {}
    for j in (0, 2, 4):
        for p in ("weight", "bias"):
            m[f"{prefix}pts_feat_extractor.{j}.{p}"] = f"encoder.point_encoder.{j}.{p}"
    vfe = f"{prefix}vol_feature_extractor"

    def block(src: str, dst: str) -> None:
        for c in ("conv1", "conv2", "conv3"):
            m[f"{src}.{c}.groupnorm.weight"] = f"{dst}.{c}.0.weight"
            m[f"{src}.{c}.groupnorm.bias"] = f"{dst}.{c}.0.bias"
            m[f"{src}.{c}.conv.weight"] = f"{dst}.{c}.1.weight"

    for i in range(levels):
        block(f"{vfe}.encoders.{i}.basic_module", f"encoder.unet.encoders.{i}")
    for i in range(levels - 1):
        block(f"{vfe}.decoders.{i}.basic_module", f"encoder.unet.decoders.{i}")
        for p in ("weight", "bias"):
            m[f"{vfe}.decoders.{i}.upsampling.upsample.{p}"] = f"encoder.unet.upsamplers.{i}.{p}"
    for p in ("weight", "bias"):
        m[f"{vfe}.final_conv.{p}"] = f"encoder.unet.final_conv.{p}"
    return m


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointImportError(f"missing key {key!r} in the released state dict")
    return tuple(sd[key].shape)


def _check(name: str, from_args: Any, from_weights: Any) -> None:
    if from_args is not None and from_args != from_weights:
        raise CheckpointImportError(f"args.pkl says {name} = {from_args!r} but the weights imply {from_weights!r}")


def convert(task: str, state: Mapping[str, torch.Tensor], args: argparse.Namespace,
            source: Mapping[str, Any] | None = None) -> ImportedModel:
    """Released state dict + args -> our network (strict key load), config and card.

    Args:
        task: "ovssc" or "vool".
        state: the released ``ckpt["net"]`` (with or without the ``module.`` prefix).
        args: the released training arguments (:func:`load_args`).
        source: extra card fields (file names, sha256).

    Returns:
        :class:`ImportedModel`.

    Raises:
        CheckpointImportError: another approach, network input or pointing method; a missing or unexpected
            key; a shape that disagrees with the arguments or with our network.
    """
    if task not in ("ovssc", "vool"):
        raise CheckpointImportError(f"unknown task {task!r}; expected 'ovssc' or 'vool'")
    approach = _get(args, "approach", "semantic_abstraction")
    if approach != "semantic_abstraction":
        raise CheckpointImportError(f"approach {approach!r} is not importable: only the Semantic Abstraction networks "
                                "('semantic_abstraction') map onto ours")
    inputs = list(_get(args, "network_inputs", ["saliency"]))
    if inputs != ["saliency"]:
        raise CheckpointImportError(f"network_inputs {inputs} are not importable: ours take relevancy ('saliency') only")
    if not _get(args, "use_pts_feat_extractor", True):
        raise CheckpointImportError("use_pts_feat_extractor=False is not importable: ours always have the point encoder")
    if task == "vool" and _get(args, "pointing_method", "cosine_sim") != "cosine_sim":
        raise CheckpointImportError(f"pointing_method {_get(args, 'pointing_method')!r} is not importable: ours use "
                                "cosine similarity / temperature")
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    elif any(k.startswith("module.") for k in keys):
        raise CheckpointImportError("the state dict mixes keys with and without the 'module.' prefix")
    pre = "completion_net." if task == "vool" else ""
    if task == "ovssc" and any(k.startswith("completion_net.") for k in state):
        raise CheckpointImportError("this state dict holds a VOOL network (completion_net.*), not OVSSC")
    if task == "vool" and not any(k.startswith("completion_net.") for k in state):
        raise CheckpointImportError("this state dict holds no completion_net.*: not a released SemAbs VOOL network")
    if task == "ovssc" and any(k.startswith("semantic_class_pointer") for k in state):
        raise CheckpointImportError("this is the 'semantic_aware' OVSSC baseline, not importable")

    vfe = f"{pre}vol_feature_extractor"
    levels = len({k.split(".")[2 if pre == "" else 3] for k in state if k.startswith(f"{vfe}.encoders.")})
    f_maps = _shape(state, f"{vfe}.encoders.0.basic_module.conv1.conv.weight")[0]
    feat = _shape(state, f"{vfe}.final_conv.weight")[0]
    hidden, pt_in = _shape(state, f"{pre}pts_feat_extractor.0.weight")
    if pt_in != 4:
        raise CheckpointImportError(f"the point encoder takes {pt_in} inputs; ours take [x, y, z, relevancy] (4)")
    _check("unet_num_levels", _get(args, "unet_num_levels"), levels)
    _check("unet_f_maps", _get(args, "unet_f_maps"), f_maps)
    _check("unet_num_channels", _get(args, "unet_num_channels"), feat)
    _check("pts_feat_extractor_hidden_dim", _get(args, "pts_feat_extractor_hidden_dim"), hidden)
    _check("point encoder output (unet_num_channels)", feat, _shape(state, f"{pre}pts_feat_extractor.4.weight")[0])
    dec = "visual_sampler" if task == "ovssc" else "spatial_sampler"
    width = feat if task == "ovssc" else 2 * feat
    dec_in = _shape(state, f"{dec}.mlp.0.weight")[1]
    if dec_in not in (width, width + 3):
        raise CheckpointImportError(f"{dec}.mlp.0 takes {dec_in} inputs; expected {width} or {width + 3}")
    concat = dec_in == width + 3
    _check("decoder_concat_xyz_pts", _get(args, "decoder_concat_xyz_pts"), concat)
    out_dim = _shape(state, f"{dec}.mlp.2.weight")[0]
    pointing = int(_get(args, "pointing_dim", 64))
    if task == "ovssc" and out_dim != 1:
        raise CheckpointImportError(f"visual_sampler outputs {out_dim} channels; the SemAbs OVSSC network outputs 1")
    if task == "vool":
        _check("pointing_dim", pointing, out_dim)
        pointing = out_dim
    shape = list(_get(args, "voxel_shape", [128, 128, 128]))
    if len(shape) != 3 or len(set(shape)) != 1:
        raise CheckpointImportError(f"voxel_shape {shape} is not a cube; ours use G^3 grids")
    bounds = _get(args, "scene_bounds", [[-1.0, -1.0, -0.1], [1.0, 1.0, 1.9]])
    bounds = [[float(v) for v in row] for row in (bounds.tolist() if hasattr(bounds, "tolist") else bounds)]
    try:
        config = SemAbsConfig(lower=tuple(bounds[0]), upper=tuple(bounds[1]), grid=int(shape[0]),
                              unet_levels=levels, unet_f_maps=f_maps, unet_groups=int(_get(args, "unet_num_groups", 8)),
                              feat_dim=feat, point_hidden=hidden, concat_xyz=concat, decoder_convention="reference",
                              pointing_dim=pointing)
        model = build_model(task, config)
    except ValueError as e:
        raise CheckpointImportError(f"the released arguments do not make one of our networks: {e}") from e

    kmap = _unet_key_map(pre, levels)
    for j in (0, 2):
        for p in ("weight", "bias"):
            kmap[f"{dec}.mlp.{j}.{p}"] = f"{'decoder' if task == 'ovssc' else 'spatial_decoder'}.{j}.{p}"
    dropped_patterns = [r"(.*\.)?steps$"] + ([r"completion_net\.visual_sampler\.mlp\.[02]\.(weight|bias)$"]
                                             if task == "vool" else [])
    rel_keys = {f"relation_embeddings.{name}": name for name in RELATIONS} if task == "vool" else {}
    ours: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    for k, v in state.items():
        if k in kmap:
            ours[kmap[k]] = v
        elif k in rel_keys:
            pass
        elif any(re.fullmatch(p, k) for p in dropped_patterns):
            dropped.append(k)
        else:
            unexpected.append(k)
    if unexpected:
        raise CheckpointImportError(f"unexpected keys in the released state dict: {sorted(unexpected)[:8]}"
                                f"{' ...' if len(unexpected) > 8 else ''}")
    if task == "vool":
        missing_rel = [k for k in rel_keys if k not in state]
        if missing_rel:
            raise CheckpointImportError(f"missing key {missing_rel[0]!r} in the released state dict")
        ours["relation_embeddings"] = torch.stack([state[f"relation_embeddings.{n}"].reshape(-1) for n in RELATIONS])
    target = model.state_dict()
    missing = [k for k in target if k not in ours]
    if missing:
        src = {v: k for k, v in kmap.items()}
        raise CheckpointImportError(f"missing key {src.get(missing[0], missing[0])!r} in the released state dict "
                                f"({len(missing)} of our tensors have no source)")
    for k, v in ours.items():
        if tuple(v.shape) != tuple(target[k].shape):
            src = {v2: k2 for k2, v2 in kmap.items()}.get(k, k)
            raise CheckpointImportError(f"shape mismatch for {src!r}: released {tuple(v.shape)}, ours {tuple(target[k].shape)}")
    model.load_state_dict({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in ours.items()}, strict=True)
    model.eval()
    card = {
        "task": task, "source": UPSTREAM, "licence": "MIT (upstream weights; not shipped with this package)",
        "decoder_convention": "reference",
        "num_input_points": int(_get(args, "num_input_pts", 80000)),
        "cutoff": UPSTREAM_OVSSC_CUTOFF if task == "ovssc" else None,
        "upstream_cutoffs": {"ovssc_empty_below": UPSTREAM_OVSSC_CUTOFF, "vool_keep_within_max_minus": UPSTREAM_VOOL_MARGIN},
        "relevancy": "CLIP ViT-B/32 multi-scale relevancy, preset semabs_reference, prompt 'a photograph of a {} in "
                     "a home.', x50, mean over the scene's label set subtracted (upstream visualize.py)",
        "dropped_keys": sorted(dropped), "args": _json_safe(vars(args)),
        "note": "imported from the released checkpoint; reduce_method in args is not what the released code used "
                "(it always scatters with a mean), hence decoder_convention 'reference'",
    }
    if task == "vool":
        card.pop("cutoff")
    card.update(dict(source or {}))
    return ImportedModel(task, config, model, card)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find(model_dir: Path) -> dict[str, Path]:
    """``{task: .pth}`` under a released model folder (``models/ours``, ``models/ours/ovssc`` or a .pth)."""
    if model_dir.is_file():
        task = model_dir.stem
        if task not in ("ovssc", "vool"):
            raise CheckpointImportError(f"{model_dir}: the file name must be ovssc.pth or vool.pth (it names the task)")
        return {task: model_dir}
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist")
    found = {}
    for task in ("ovssc", "vool"):
        for cand in (model_dir / f"{task}.pth", model_dir / task / f"{task}.pth"):
            if cand.is_file():
                found[task] = cand
                break
    if not found:
        raise FileNotFoundError(f"no ovssc.pth or vool.pth in {model_dir} or its ovssc/, vool/ folders")
    return found


def import_released(model_dir, out_dir, tasks: tuple[str, ...] = ("ovssc", "vool")) -> dict[str, Path]:
    """Convert every released checkpoint found under ``model_dir`` and write ``out_dir/<task>.safetensors``.

    All checkpoints are read and checked before any file is written.

    Returns:
        ``{task: written path}``.

    Raises:
        FileNotFoundError: nothing to import; CheckpointImportError: a failed check (nothing written).
    """
    found = {t: p for t, p in _find(Path(model_dir)).items() if t in tasks}
    if not found:
        raise FileNotFoundError(f"none of the tasks {tasks} under {model_dir}")
    done: list[ImportedModel] = []
    for task, pth in found.items():
        args_path = pth.parent / "args.pkl"
        args = load_args(args_path)
        try:
            ckpt = torch.load(pth, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointImportError(f"{pth} is not a weights-only torch checkpoint: {e}") from e
        if not isinstance(ckpt, dict) or "net" not in ckpt or not isinstance(ckpt["net"], dict):
            raise CheckpointImportError(f"{pth} is not a released SemAbs checkpoint (expected a dict with 'net')")
        bad = [k for k, v in ckpt["net"].items() if not torch.is_tensor(v)]
        if bad:
            raise CheckpointImportError(f"{pth}: state dict entry {bad[0]!r} is not a tensor")
        src = {"source_file": pth.name, "source_sha256": _sha256(pth), "args_sha256": _sha256(args_path),
               "epochs": ckpt.get("epochs") if isinstance(ckpt.get("epochs"), int) else None}
        done.append(convert(task, ckpt["net"], args, src))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for m in done:
        path = out_dir / f"{m.task}.safetensors"
        save_checkpoint(path, m.model, m.task, m.config, card=m.card)
        written[m.task] = path
    return written


def main(argv=None) -> int:
    """Console script ``occ_audit_semabs_import MODEL_DIR --out DIR [--tasks ovssc vool]``.

    Returns 0 on success, 2 on a refused or missing checkpoint (message on stderr, nothing written).
    """
    ap = argparse.ArgumentParser(prog="occ_audit_semabs_import",
                                 description="Convert the released Semantic Abstraction models (ovssc.pth / "
                                             "vool.pth + args.pkl) to SemAbs safetensors checkpoints.")
    ap.add_argument("model_dir", type=Path, help="models/ours (with ovssc/ and vool/), one of those folders, or a .pth")
    ap.add_argument("--out", type=Path, required=True, help="output folder (ovssc.safetensors, vool.safetensors)")
    ap.add_argument("--tasks", nargs="+", choices=["ovssc", "vool"], default=["ovssc", "vool"])
    a = ap.parse_args(argv)
    try:
        written = import_released(a.model_dir, a.out, tuple(a.tasks))
    except (CheckpointImportError, FileNotFoundError) as e:
        print(f"occ_audit_semabs_import: error: {e}", file=sys.stderr)
        return 2
    for task, path in written.items():
        print(json.dumps({"task": task, "out": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
