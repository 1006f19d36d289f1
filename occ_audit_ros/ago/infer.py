"""Run a trained AGO checkpoint on camera images: the call the perception node (and the evaluation
CLI) uses. ROS-free.

Interface for the node::

    pred = AgoPredictor.from_checkpoint("runs/ago", device="cpu")     # run dir or ckpt dir
    pred.set_vocabulary(["car", "pedestrian", "fire hydrant"])        # any text, any time
    result = pred.predict(images, Ks, T_base_cams, depths)            # one synchronised frame
    result.voxels  # SemanticVoxels in base_link: occupied voxels, label ids into the vocabulary

Images/depths are the six camera frames of one timestamp; poses ``T_base_cam`` map each camera
optical frame into the grid frame (``base_link``; the node gets them from TF).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec
from occ_audit_ros.ago.checkpoint import latest_checkpoint, load_checkpoint, read_metadata
from occ_audit_ros.ago.model import AgoModel, build_model
from occ_audit_ros.ago.network import lift_geometry, resize_image
from occ_audit_ros.ago.prompts import TextBank, encode_vocabulary
from occ_audit_ros.ago.text import TextEncoder, build_text_encoder

__all__ = ["AgoPredictor", "AgoResult"]


@dataclass
class AgoResult:
    """Prediction of one frame.

    Attributes:
        voxels: occupied voxels (label != free) with label ids into the vocabulary and the final
            probability of that label as score.
        labels: (X, Y, Z) int64 dense argmax, ``K`` = free (K = vocabulary size).
        probs: (X, Y, Z, K + 1) float32 final probabilities (open-world identifier applied).
        use_grounding: (X, Y, Z) bool, True where the grounding branch was chosen.
    """

    voxels: SemanticVoxels
    labels: np.ndarray
    probs: np.ndarray
    use_grounding: np.ndarray


class AgoPredictor:
    """A trained :class:`AgoModel` + text encoder + vocabulary, with per-calibration geometry cache.

    Args:
        model: trained model (eval mode is set here).
        text: the frozen text encoder the model was trained with.
        spec: voxel grid (``base_link``).
        image_scale: image resize factor used in training (used when ``image_hw`` is None).
        identifier: ``"entropy"`` (AGO Eq. 9), ``"confidence"`` or None (grounding branch only).
        random_weights: True when the checkpoint's image/text encoders have random weights.
        name: checkpoint path (for ``SemanticVoxels.model``).
        image_hw: (H, W) pixels the model was trained on; when set, every input image is resized to
            it whatever its size (a model trained on the simulator's 400 x 225 cameras at scale 0.25
            then sees nuScenes' 1600 x 900 images at the same 100 x 56), else by ``image_scale``.
    """

    def __init__(self, model: AgoModel, text: TextEncoder, spec: VoxelGridSpec, image_scale: float,
                 identifier: str | None = "entropy", random_weights: bool = False, name: str = "",
                 image_hw: tuple | None = None):
        self.model = model.eval()
        self.text, self.spec, self.image_scale = text, spec, image_scale
        self.image_hw = tuple(image_hw) if image_hw else None
        self.identifier, self.random_weights, self.name = identifier, random_weights, name
        self.bank: TextBank | None = None
        self._geom_cache: dict = {}

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", identifier: str | None = "entropy") -> "AgoPredictor":
        """Load from a run directory (its ``latest``) or a checkpoint directory.

        Raises:
            FileNotFoundError: no checkpoint there; ValueError: not an AGO checkpoint.
        """
        path = Path(path)
        ck = path if (path / "model.safetensors").is_file() else latest_checkpoint(path)
        if ck is None:
            raise FileNotFoundError(f"no AGO checkpoint in {path} (expected model.safetensors or a 'latest' file)")
        meta = read_metadata(ck)
        cfg = meta["config"]
        clip = None
        if cfg.get("clip_model"):
            from occ_audit_ros.clip_model import load_clip

            clip = load_clip(cfg["clip_model"], device=device)
        cache = cfg.get("text_cache")  # the training's precomputed cache, when it is on this machine
        cache = cache if cache and Path(cache).is_file() else None
        text = build_text_encoder(cfg.get("text_encoder", "minilm"), clip, cache, device=device)
        g = meta["grid"]
        spec = VoxelGridSpec(tuple(g["lower"]), tuple(g["upper"]), g["voxel_size"])
        model = build_model(dict(cfg["model"], voxel_size=spec.voxel_size, num_categories=len(meta["vocabulary"])),
                            meta["embed_dim"], clip)
        load_checkpoint(ck, model)
        model.to(device)
        pred = cls(model, text, spec, cfg["data"]["image_scale"], identifier,
                   random_weights=bool(clip is not None and clip.random_weights), name=str(ck),
                   image_hw=meta.get("image_hw"))
        pred.set_vocabulary(meta["vocabulary"])
        return pred

    def set_vocabulary(self, vocabulary) -> list[str]:
        """Set the queried label space (AGO: the label space is text and may change at inference).

        Args:
            vocabulary: list of names (each its own phrase) or dict ``name -> phrases``.

        Returns:
            the category names (label ids index into it).

        Raises:
            ValueError: empty vocabulary.
        """
        self.bank = encode_vocabulary(self.text, vocabulary)
        return list(self.bank.names)

    def _geometry(self, Ks, Ts, sizes):
        key = hashlib.sha1(b"".join(np.ascontiguousarray(a, np.float64).tobytes() for a in list(Ks) + list(Ts))
                           + str(sizes).encode()).hexdigest()
        if key not in self._geom_cache:
            if len(self._geom_cache) > 8:
                self._geom_cache.clear()
            self._geom_cache[key] = lift_geometry(self.spec, [(K, T, w, h) for K, T, (w, h) in zip(Ks, Ts, sizes)])
        return self._geom_cache[key]

    @torch.no_grad()
    def predict(self, images, Ks, T_base_cams, depths=None, stamp_ns: int = 0) -> AgoResult:
        """Predict semantic occupancy of one frame.

        Args:
            images: Ncam (H, W, 3) uint8 RGB images (the cameras the model was trained with, same order).
            Ks: Ncam (3, 3) intrinsics of those images.
            T_base_cams: Ncam (4, 4) camera optical frame -> ``base_link``.
            depths: optional Ncam (H', W') float depth images [m along the optical axis, NaN = none],
                any resolution (pooled to the feature grid).
            stamp_ns: stamp copied into the result.

        Returns:
            :class:`AgoResult` (frame ``base_link``).

        Raises:
            ValueError: mismatched list lengths or a bad image.
        """
        if not (len(images) == len(Ks) == len(T_base_cams)) or (depths is not None and len(depths) != len(images)):
            raise ValueError(f"{len(images)} images, {len(Ks)} intrinsics, {len(T_base_cams)} poses"
                             f"{'' if depths is None else f', {len(depths)} depths'}: must match")
        ims, sizes = [], []
        for im in images:
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"images must be (H, W, 3) uint8, got {im.shape} {im.dtype}")
            sizes.append((im.shape[1], im.shape[0]))
            if self.image_hw is not None:
                from PIL import Image

                small = np.asarray(Image.fromarray(im).resize((self.image_hw[1], self.image_hw[0]), Image.BILINEAR))
            else:
                small = resize_image(im, self.image_scale)
            ims.append(torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255)
        geom = self._geometry(Ks, T_base_cams, sizes)
        dev = next(self.model.parameters()).device
        dep = None
        if depths is not None:
            dep = torch.stack([torch.as_tensor(np.asarray(d, np.float32)) for d in depths])[None].to(dev)
        out = self.model.predict(torch.stack(ims)[None].to(dev), [geom.to(dev)], self.bank, dep, self.identifier)
        labels = out["labels"][0].cpu().numpy()
        probs = out["probs"][0].cpu().numpy().astype(np.float32)
        K = self.bank.num_categories
        flat = np.flatnonzero(labels.reshape(-1) != K)
        lab = labels.reshape(-1)[flat]
        score = probs.reshape(-1, K + 1)[flat, lab]
        vox = SemanticVoxels(spec=self.spec, frame_id="base_link", labels=list(self.bank.names),
                             indices=flat.astype(np.uint32), label_ids=lab.astype(np.uint16),
                             scores=score.astype(np.float32), random_weights=self.random_weights,
                             model=self.name, stamp_ns=stamp_ns)
        return AgoResult(vox, labels, probs, out["use_grounding"][0].cpu().numpy())

    def predict_keyframe(self, keyframe) -> AgoResult:
        """:meth:`predict` on a :class:`nuscenes_io.Keyframe` (cameras moved into ``base_link`` at the
        LiDAR timestamp, LiDAR depth per camera), as the evaluation uses it."""
        from occ_audit_ros.geometry import invert_transform
        from occ_audit_ros.nuscenes_io import lidar_depth_for_camera

        T_base_map = invert_transform(keyframe.lidar.T_map_base)
        cams = list(keyframe.cameras.values())
        return self.predict([c.image for c in cams], [c.K for c in cams], [T_base_map @ c.T_map_cam for c in cams],
                            [lidar_depth_for_camera(keyframe, c.channel) for c in cams], keyframe.timestamp_us * 1000)
