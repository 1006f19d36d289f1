"""Loading CLIP (Hugging Face transformers) for relevancy extraction, ROS-free.

``load_clip(name)`` accepts a local directory or a hub id (``CLIPModel.from_pretrained``), or one of
two randomly initialised configurations for tests and offline demos:

* ``"random"``: the real ViT-B/32 layout (12 blocks, width 768, patch 32, 224 px; text width 512),
  random weights from a fixed seed. Runs the exact code path and cost of the real model.
* ``"random-tiny"``: the same structure shrunk (2 blocks, width 64) for fast unit tests.

Random models tokenise with CLIP's real BPE vocabulary (``data/clip-bpe``), so token ids are the
ones the real model would see. Their outputs carry ``random_weights=True`` everywhere downstream.
No pretrained CLIP weights are available on the build machines; nothing here fakes them.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from occ_audit_ros import paths
from occ_audit_ros.devices import resolve_device

LOG = logging.getLogger(__name__)

RANDOM_MODELS = ("random", "random-tiny")

#: OpenAI CLIP's image normalisation (the same for every released CLIP).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HOW_TO_PROVIDE = (
    "Provide CLIP weights as a local directory in Hugging Face format: on a machine with internet run\n"
    "    huggingface-cli download openai/clip-vit-base-patch32 --local-dir models/clip-vit-base-patch32\n"
    "copy models/ here and set the `clip_model` parameter to that directory (or to the hub id\n"
    "`openai/clip-vit-base-patch32` where the hub is reachable and HF_HUB_OFFLINE is unset).\n"
    "For tests and offline demos only, `clip_model: random` runs the real ViT-B/32 layout with random\n"
    "weights; its outputs are meaningless and are marked as such."
)


class ClipWeightsUnavailable(RuntimeError):
    """CLIP weights could not be loaded from the given directory or hub id."""


@dataclass
class ClipBundle:
    """A loaded CLIP model with what relevancy extraction needs.

    Attributes:
        model: ``transformers.CLIPModel`` in eval mode, eager attention, on ``device``.
        tokenizer: a ``CLIPTokenizer`` (real BPE vocabulary).
        name: what was asked for (path, hub id or ``random``/``random-tiny``).
        random_weights: True for randomly initialised models.
        image_size: input resolution of the vision tower [px] (224 for ViT-B/32).
        patch_size: ViT patch size [px] (32 for ViT-B/32).
        device: torch device of the model.
    """

    model: "torch.nn.Module"
    tokenizer: object
    name: str
    random_weights: bool
    image_size: int
    patch_size: int
    device: torch.device

    @property
    def grid_size(self) -> int:
        """Patch tokens per side (7 for ViT-B/32 at 224 px)."""
        return self.image_size // self.patch_size


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable-unicode table (CLIP's ``simple_tokenizer``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_tokenizer_from_bpe(bpe_path: str | None = None):
    """A ``CLIPTokenizer`` built from CLIP's BPE merge list, giving the real CLIP token ids.

    The vocabulary is, in order: the 256 byte symbols, the same with ``</w>``, one token per merge
    (the first 49,152 - 256 - 2 merges, as OpenAI's tokenizer uses), ``<|startoftext|>`` (49406) and
    ``<|endoftext|>`` (49407).

    Raises:
        FileNotFoundError: when the BPE file is missing.
    """
    from transformers import CLIPTokenizer

    path = Path(bpe_path) if bpe_path else paths.clip_bpe_vocab()
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def random_clip_config(name: str):
    """``CLIPConfig`` of a random model: ``"random"`` = ViT-B/32 layout, ``"random-tiny"`` = 2 blocks of width 64.

    Raises:
        ValueError: for any other name.
    """
    from transformers import CLIPConfig

    if name == "random":
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32)
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        projection_dim = 512
    elif name == "random-tiny":
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=224, patch_size=32)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        projection_dim = 32
    else:
        raise ValueError(f"unknown random CLIP configuration {name!r}; expected one of {RANDOM_MODELS}")
    text.update(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, hidden_act="quick_gelu")
    vision.update(hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def load_clip(name: str, device: str | torch.device = "cpu", seed: int = 0) -> ClipBundle:
    """Load CLIP for relevancy extraction.

    Args:
        name: local directory or hub id of a transformers CLIP checkpoint (e.g. ViT-B/32,
            ``openai/clip-vit-base-patch32``), or ``"random"`` / ``"random-tiny"``.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when available) or a torch device.
        seed: seed of the random initialisation (random models only).

    Returns:
        A :class:`ClipBundle` in eval mode with eager attention (needed for attention gradients).

    Raises:
        ClipWeightsUnavailable: when ``name`` is neither a loadable directory nor a reachable hub
            id, or a directory fails ``occ_audit_ros.model_files.check_clip_dir`` (missing or
            inconsistent config.json, weights that do not fit it, pickled weights, no tokenizer);
            the message names the file and says how to provide weights.
    """
    from transformers import CLIPModel, CLIPTokenizer

    device = resolve_device(device)
    if name in RANDOM_MODELS:
        LOG.warning(
            "clip_model=%s: RANDOMLY INITIALISED CLIP weights. Relevancy and semantic voxels are "
            "meaningless and are marked random_weights=true. Use real weights for perception.", name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(random_clip_config(name))
        tokenizer = clip_tokenizer_from_bpe()
        random_weights = True
    else:
        source = Path(name).expanduser()
        is_dir = source.is_dir()
        if not is_dir and (os.sep in name and not name.count("/") == 1 or name.startswith((".", "~"))):
            raise ClipWeightsUnavailable(f"CLIP model directory {source} does not exist.\n{HOW_TO_PROVIDE}")
        if is_dir:
            from occ_audit_ros.model_files import ModelFileError, check_clip_dir

            try:
                check_clip_dir(source)  # config.json, weights consistent with it, tokenizer: before building
            except ModelFileError as err:
                raise ClipWeightsUnavailable(f"CLIP model directory unusable: {err}\n{HOW_TO_PROVIDE}") from err
        try:
            model = CLIPModel.from_pretrained(str(source) if is_dir else name, attn_implementation="eager")
            tokenizer = CLIPTokenizer.from_pretrained(str(source) if is_dir else name)
        except (OSError, ValueError) as err:
            raise ClipWeightsUnavailable(
                f"could not load CLIP weights from {name!r}: {err.__class__.__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}\n{HOW_TO_PROVIDE}") from err
        random_weights = False
    model.config.vision_config._attn_implementation = "eager"
    model.eval().requires_grad_(False).to(device)
    vcfg = model.config.vision_config
    return ClipBundle(model=model, tokenizer=tokenizer, name=name, random_weights=random_weights,
                      image_size=vcfg.image_size, patch_size=vcfg.patch_size, device=device)
