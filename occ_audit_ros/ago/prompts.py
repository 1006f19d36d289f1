"""Class prompts expanded into sub-category phrases, noise prompts, and the frozen text bank.

AGO §3.1-3.2 (Eq. 3-4): every label is expanded into finer sub-category phrases (ours:
``config/ago_classes.yaml`` ``phrases``; design choice: the paper's lists are not public); each phrase is encoded once by the frozen
text encoder; a category's logit is the mean of its phrases' logits. Noise prompts — words drawn at
random from a general dictionary every iteration — are extra negative categories (AGO Table 5: random
dictionary noise beats a fixed set). Our dictionary is the whole-word part of the BERT WordPiece
vocabulary shipped with all-MiniLM-L6-v2 (``vocab.txt``); words whose embedding has cosine > 0.8 to
a label phrase are rejected (design choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from occ_audit_ros.ago.text import TextEncoder, minilm_model_dir

__all__ = ["TextBank", "encode_vocabulary", "dictionary_words", "write_dictionary", "NoiseSampler"]


@dataclass
class TextBank:
    """Frozen phrase embeddings of a vocabulary.

    Attributes:
        names: K category names (index = category id; for Occ3D the 17 class names).
        emb: (T, C) float32 unit-norm phrase embeddings.
        token_cat: (T,) int64 category id of each phrase, in [0, K).
    """

    names: list
    emb: torch.Tensor
    token_cat: torch.Tensor

    @property
    def num_categories(self) -> int:
        """K."""
        return len(self.names)


def encode_vocabulary(encoder: TextEncoder, vocabulary) -> TextBank:
    """Encode a vocabulary given as text.

    Args:
        encoder: frozen text encoder.
        vocabulary: ordered mapping ``name -> list of phrases``, or a list of names (each name is
            then its own single phrase, with ``_`` read as a space). Any texts work: unknown classes
            can be queried at run time this way.

    Returns:
        :class:`TextBank`.

    Raises:
        ValueError: an empty vocabulary or a category without phrases.
    """
    if not isinstance(vocabulary, dict):
        vocabulary = {n: [n.replace("_", " ")] for n in vocabulary}
    if not vocabulary:
        raise ValueError("vocabulary is empty")
    names, phrases, cats = [], [], []
    for k, (name, ph) in enumerate(vocabulary.items()):
        ph = list(ph)
        if not ph:
            raise ValueError(f"category {name!r} has no phrases")
        names.append(name)
        phrases += ph
        cats += [k] * len(ph)
    return TextBank(names, encoder.encode(phrases), torch.tensor(cats, dtype=torch.int64))


def dictionary_words(min_len: int = 4, path=None) -> list[str]:
    """General-dictionary words for noise prompts: whole, lower-case alphabetic WordPiece tokens of
    the all-MiniLM-L6-v2 vocabulary (no ``##`` pieces, no ``[unused]``), at least ``min_len`` letters.

    Args:
        min_len: shortest word kept.
        path: optional text file, one word per line (a copy written by :func:`write_dictionary`, for
            machines without the MiniLM wheel); default: the wheel's ``vocab.txt``.

    Returns:
        sorted list of ~20 k English words.

    Raises:
        FileNotFoundError: MiniLM wheel not installed (and no ``path``), or ``path`` missing.
    """
    src = Path(path) if path else minilm_model_dir() / "vocab.txt"
    if not src.is_file():
        raise FileNotFoundError(f"dictionary file {src} not found")
    words = src.read_text(encoding="utf-8").split("\n")
    return sorted({w for w in words if len(w) >= min_len and w.isascii() and w.isalpha() and w.islower()})


def write_dictionary(path, min_len: int = 4) -> Path:
    """Write :func:`dictionary_words` (from the MiniLM wheel) to ``path``, one word per line.

    Raises:
        FileNotFoundError: MiniLM wheel not installed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(dictionary_words(min_len)) + "\n", encoding="utf-8")
    return path


class NoiseSampler:
    """Draws noise prompts (AGO §3.1): random dictionary words, embedded, rejecting near-labels.

    Args:
        encoder: the frozen text encoder (a :class:`CachedTextEncoder` keeps repeated words cheap).
        words: dictionary.
        label_emb: (T, C) label phrase embeddings; words with cosine > ``threshold`` to any are rejected.
        threshold: rejection cosine (0.8, design choice).
        seed: RNG seed (per process; vary it per rank).
        pool_size: when set, a random pool of this many dictionary words is embedded and filtered
            once, and every :meth:`sample` draws from it (an encoder call per step costs seconds on a
            CPU; a 2048-word pool keeps the draw random and varied).
    """

    def __init__(self, encoder: TextEncoder, words, label_emb: torch.Tensor, threshold: float = 0.8,
                 seed: int = 0, pool_size: int | None = None):
        if len(words) == 0:
            raise ValueError("noise dictionary is empty")
        self.encoder, self.words = encoder, list(words)
        self.label_emb = label_emb.float()
        self.threshold = float(threshold)
        self.rng = np.random.default_rng(seed)
        self.pool = None
        if pool_size:
            cand = [self.words[i] for i in self.rng.choice(len(self.words), min(pool_size, len(self.words)), replace=False)]
            emb = self.encoder.encode(cand)
            ok = ((emb @ self.label_emb.T).max(dim=1).values <= self.threshold).numpy()
            self.pool = ([w for w, k in zip(cand, ok) if k], emb[torch.from_numpy(ok)])

    def sample(self, n: int) -> tuple[list[str], torch.Tensor]:
        """``n`` noise words and their (n, C) float32 embeddings (n = 0 gives an empty (0, C))."""
        if n <= 0:
            return [], torch.zeros(0, self.label_emb.shape[1])
        if self.pool is not None:
            if len(self.pool[0]) < n:
                raise RuntimeError(f"noise pool has {len(self.pool[0])} words below cosine {self.threshold}, need {n}")
            idx = self.rng.choice(len(self.pool[0]), n, replace=False)
            return [self.pool[0][i] for i in idx], self.pool[1][torch.from_numpy(idx)]
        picked, embs = [], []
        for _ in range(20):
            cand = [self.words[i] for i in self.rng.choice(len(self.words), size=2 * n, replace=False)]
            cand = [w for w in cand if w not in picked]
            e = self.encoder.encode(cand)
            ok = (e @ self.label_emb.T).max(dim=1).values <= self.threshold
            for w, row, good in zip(cand, e, ok.tolist()):
                if good and len(picked) < n:
                    picked.append(w)
                    embs.append(row)
            if len(picked) == n:
                return picked, torch.stack(embs)
        raise RuntimeError(f"could not draw {n} noise words below cosine {self.threshold} to the labels")
