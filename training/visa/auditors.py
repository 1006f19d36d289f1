"""Auditor interface, the SIMULATED auditor and the CLIP zero-shot auditor (docs/visa.md §1, §4).

All auditors answer one :class:`AuditRequest` (one crop of one instance) with a normalised
``visa-audit/1`` answer (:func:`training.visa.schema.normalise_answer`) or ``None`` when the
answer was rejected; they count requests, accepted and rejected answers in ``stats``.

- :class:`SimulatedAuditor` — **SIMULATED audits for controlled experiments only**: it never
  looks at the image; it draws the answer from the GT class with a configured accuracy,
  confusion structure and reliability–correctness correlation.
- :class:`ClipZeroShotAuditor` — CLIP zero-shot classification of the crop over K_obj.
- :class:`training.visa.vlm_auditor.VlmAuditor` — a transformers VLM (Qwen2-VL family).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from training.visa.schema import AuditValidationError, normalise_answer
from training.visa.taxonomy import ATTRIBUTES, CLASS_ATTRIBUTES, K_OBJ, PARENTS, parent_of


@dataclass
class AuditRequest:
    """One crop to audit.

    Attributes:
        instance_token: nuScenes ``instance`` token.
        image: (H, W, 3) uint8 RGB crop (already padded), or ``None`` (SIMULATED only).
        quality: crop quality ``"clear" | "partial" | "poor"`` (:mod:`.crops`).
        gt_class: K_obj class of the annotation. Only the SIMULATED auditor reads it (it needs the
            truth to corrupt it); real auditors must not and do not.
    """

    instance_token: str
    image: np.ndarray | None = None
    quality: str = "clear"
    gt_class: str | None = None


@dataclass
class AuditorStats:
    """Counters of one auditor: requests, answers accepted first time / after the retry, rejected."""

    requests: int = 0
    accepted_first: int = 0
    accepted_retry: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one rejected answer under a short reason."""
        self.rejected += 1
        key = reason.split(":")[0][:60]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def as_dict(self) -> dict:
        """JSON-friendly copy."""
        return {"requests": self.requests, "accepted_first": self.accepted_first,
                "accepted_retry": self.accepted_retry, "rejected": self.rejected,
                "reasons": dict(self.reasons)}


class Auditor(ABC):
    """Interface of all auditors.

    Subclasses set ``kind`` (one of ``schema.AUDITOR_KINDS``) and ``model`` and implement
    :meth:`audit`.
    """

    kind: str = ""
    model: str = ""
    prompt: str | None = None
    temperature: float | None = None

    def __init__(self) -> None:
        self.stats = AuditorStats()

    @abstractmethod
    def audit(self, request: AuditRequest) -> dict | None:
        """Audit one crop.

        Returns:
            A normalised ``visa-audit/1`` answer, or ``None`` when rejected (counted in ``stats``).
        """

    def describe(self) -> dict:
        """The ``vlm`` field of the store records this auditor writes."""
        return {"kind": self.kind, "model": self.model, "prompt": self.prompt,
                "temperature": self.temperature}


def _token_rng(token: str, seed: int) -> np.random.Generator:
    """A generator determined by (instance token, seed): audits do not depend on order or shard."""
    digest = hashlib.sha256(f"{seed}:{token}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


class SimulatedAuditor(Auditor):
    """SIMULATED auditor with a controlled error model — for controlled experiments only.

    It never looks at the image. Per instance (deterministic in (instance token, seed)):

    1. correct with probability ``accuracy[quality]`` (a float = the same for all qualities);
    2. if wrong, the hypothesis c is drawn from row ``gt`` of the confusion structure:
       ``"parent"`` — a sibling in the GT's parent group with probability ``p_sibling`` (when the
       group has one), else uniform over the other classes; ``"uniform"`` — uniform over the other
       9 classes; or an explicit (10, 10) row-stochastic matrix (diagonal ignored);
    3. reliability r = Φ(ρ·s + sqrt(1 − ρ²)·ε), confidence q = 0.5 + 0.5·Φ(ρ·s + sqrt(1 − ρ²)·ε')
       with s = +1 / −1 for a correct / wrong hypothesis and ε, ε' ~ N(0, 1), so ρ ∈ [−1, 1] is
       the reliability–correctness correlation knob (ρ = 0: uninformative reliability);
    4. confusions: if wrong, the GT class with probability ``p_gt_in_confusions`` and score
       0.6·(1 − q), plus one other class with 0.3·(1 − q);
    5. attributes: the row of M for the hypothesised class, each flipped with probability
       ``attribute_flip`` and set to null with probability ``attribute_null``.

    Args:
        accuracy: float or {"clear", "partial", "poor"} -> float in [0, 1].
        confusion: ``"parent"``, ``"uniform"`` or a (10, 10) array-like (rows K_obj order).
        reliability_correlation: ρ in [−1, 1].
        p_sibling, p_gt_in_confusions, attribute_flip, attribute_null: probabilities in [0, 1].
        seed: int.

    Raises:
        ValueError: out-of-range parameters or a malformed confusion matrix.
    """

    kind = "SIMULATED"

    def __init__(self, accuracy=0.877, confusion="parent", reliability_correlation: float = 0.5,
                 p_sibling: float = 0.8, p_gt_in_confusions: float = 0.7,
                 attribute_flip: float = 0.05, attribute_null: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        acc = accuracy if isinstance(accuracy, dict) else {q: accuracy for q in ("clear", "partial", "poor")}
        if set(acc) != {"clear", "partial", "poor"}:
            raise ValueError(f"accuracy per quality needs keys clear/partial/poor, got {sorted(acc)}")
        for name, v in [*((f"accuracy[{k}]", v) for k, v in acc.items()), ("p_sibling", p_sibling), ("p_gt_in_confusions", p_gt_in_confusions),
                        ("attribute_flip", attribute_flip), ("attribute_null", attribute_null)]:
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not -1.0 <= reliability_correlation <= 1.0:
            raise ValueError(f"reliability_correlation must be in [-1, 1], got {reliability_correlation}")
        self.accuracy = {k: float(v) for k, v in acc.items()}
        if isinstance(confusion, str):
            if confusion not in ("parent", "uniform"):
                raise ValueError(f"confusion must be 'parent', 'uniform' or a matrix, got {confusion!r}")
            self.confusion = self._structured_confusion(confusion, p_sibling)
            conf_name = confusion
        else:
            C = np.asarray(confusion, dtype=np.float64)
            if C.shape != (len(K_OBJ), len(K_OBJ)) or np.any(C < 0):
                raise ValueError(f"confusion matrix must be non-negative (10, 10), got shape {C.shape}")
            C = C.copy()
            np.fill_diagonal(C, 0.0)
            if np.any(C.sum(1) <= 0):
                raise ValueError("every confusion-matrix row needs off-diagonal mass")
            self.confusion = C / C.sum(1, keepdims=True)
            conf_name = "matrix"
        self.rho = float(reliability_correlation)
        self.p_gt_in_confusions = float(p_gt_in_confusions)
        self.attribute_flip = float(attribute_flip)
        self.attribute_null = float(attribute_null)
        self.seed = int(seed)
        self.model = (f"SIMULATED-auditor(acc={self.accuracy}, confusion={conf_name}, "
                      f"rho={self.rho}, seed={self.seed})")

    @staticmethod
    def _structured_confusion(kind: str, p_sibling: float) -> np.ndarray:
        n = len(K_OBJ)
        C = np.zeros((n, n))
        for i, cls in enumerate(K_OBJ):
            others = [j for j in range(n) if j != i]
            sib = [K_OBJ.index(c) for c in PARENTS[parent_of(cls)] if c != cls]
            if kind == "parent" and sib:
                C[i, sib] += p_sibling / len(sib)
                C[i, others] += (1.0 - p_sibling) / len(others)
            else:
                C[i, others] = 1.0 / len(others)
        return C

    def audit(self, request: AuditRequest) -> dict | None:
        """SIMULATED answer for ``request`` (needs ``gt_class``; ignores the image).

        Raises:
            ValueError: without a K_obj ``gt_class`` or with an unknown quality.
        """
        if request.gt_class not in K_OBJ:
            raise ValueError(f"the SIMULATED auditor needs a K_obj gt_class, got {request.gt_class!r}")
        if request.quality not in self.accuracy:
            raise ValueError(f"unknown crop quality {request.quality!r}")
        self.stats.requests += 1
        rng = _token_rng(request.instance_token, self.seed)
        g = K_OBJ.index(request.gt_class)
        correct = rng.random() < self.accuracy[request.quality]
        hyp = g if correct else int(rng.choice(len(K_OBJ), p=self.confusion[g]))
        s = 1.0 if correct else -1.0
        noise = math.sqrt(max(0.0, 1.0 - self.rho ** 2))
        r = _phi(self.rho * s + noise * rng.standard_normal())
        q = 0.5 + 0.5 * _phi(self.rho * s + noise * rng.standard_normal())
        confusions = []
        rest = [j for j in range(len(K_OBJ)) if j != hyp]
        first = g if (not correct and rng.random() < self.p_gt_in_confusions) else None
        if first is None:
            p = self.confusion[hyp][rest]
            first = int(rng.choice(rest, p=p / p.sum()))
        confusions.append({"class": K_OBJ[first], "score": 0.6 * (1.0 - q)})
        rest2 = [j for j in rest if j != first]
        p2 = self.confusion[hyp][rest2]
        second = int(rng.choice(rest2, p=p2 / p2.sum()))
        confusions.append({"class": K_OBJ[second], "score": 0.3 * (1.0 - q)})
        attrs = {}
        for a in ATTRIBUTES:
            v = int(a in CLASS_ATTRIBUTES[K_OBJ[hyp]])
            if rng.random() < self.attribute_flip:
                v = 1 - v
            attrs[a] = None if rng.random() < self.attribute_null else v
        answer = {"class_hypothesis": K_OBJ[hyp], "confidence": q, "confusions": confusions,
                  "attributes": attrs, "reliability": r,
                  "evidence": "SIMULATED audit (no image was seen)"}
        self.stats.accepted_first += 1
        return normalise_answer(answer)


#: Text prompts of the CLIP zero-shot auditor (one per K_obj class).
CLIP_PROMPTS: dict[str, str] = {
    "barrier": "a photo of a road barrier", "bicycle": "a photo of a bicycle",
    "bus": "a photo of a bus", "car": "a photo of a car",
    "construction_vehicle": "a photo of a construction vehicle",
    "motorcycle": "a photo of a motorcycle", "pedestrian": "a photo of a pedestrian",
    "traffic_cone": "a photo of a traffic cone", "trailer": "a photo of a trailer",
    "truck": "a photo of a truck",
}

#: Crop-quality prior of the CLIP auditor's reliability (DC; scaled by the top-2 margin).
_QUALITY_RELIABILITY = {"clear": 0.9, "partial": 0.7, "poor": 0.3}


class ClipZeroShotAuditor(Auditor):
    """CLIP zero-shot auditor: softmax over K_obj of 100·cos(image, text) (Radford et al. 2021).

    Answer: hypothesis = argmax, q = its probability, confusions = the next two classes with
    their probabilities, attributes = row of M for the hypothesis, reliability = quality prior ·
    (0.5 + 0.5 · top-2 margin) (DC), evidence = the top-3 probabilities.

    Args:
        clip: a :class:`occ_audit_ros.clip_model.ClipBundle` (real weights, or ``random-tiny`` in
            tests — then the audits are meaningless and ``model`` says RANDOM).
    """

    kind = "clip-zero-shot"
    temperature = 0.0

    def __init__(self, clip) -> None:
        super().__init__()
        from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD

        self.clip = clip
        self.model = f"clip:{clip.name}" + (" (RANDOM WEIGHTS)" if clip.random_weights else "")
        self.prompt = "clip-prompts/1"
        self._mean = torch.tensor(CLIP_MEAN, device=clip.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=clip.device).view(1, 3, 1, 1)
        with torch.no_grad():
            tok = clip.tokenizer([CLIP_PROMPTS[c] for c in K_OBJ], padding=True, return_tensors="pt")
            text = clip.model.get_text_features(**{k: v.to(clip.device) for k, v in tok.items()})
        text = getattr(text, "pooler_output", text)
        self.text = torch.nn.functional.normalize(text.float(), dim=-1)  # (10, P)

    def class_probabilities(self, image: np.ndarray) -> np.ndarray:
        """(10,) float64 softmax over K_obj for one (H, W, 3) uint8 RGB crop.

        Raises:
            ValueError: for an image that is not (H, W, 3) uint8 with H, W >= 1.
        """
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                and image.dtype == np.uint8 and min(image.shape[:2]) >= 1):
            raise ValueError(f"crop must be (H, W, 3) uint8, got {getattr(image, 'shape', None)}")
        x = torch.from_numpy(image).to(self.clip.device).permute(2, 0, 1)[None].float() / 255.0
        s = self.clip.image_size
        x = torch.nn.functional.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - self._mean) / self._std
        with torch.no_grad():
            img = self.clip.model.get_image_features(pixel_values=x)
        img = getattr(img, "pooler_output", img)
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        return torch.softmax(100.0 * img @ self.text.T, dim=-1)[0].double().cpu().numpy()

    def audit(self, request: AuditRequest) -> dict | None:
        """Zero-shot answer for the crop (``request.gt_class`` is not read)."""
        self.stats.requests += 1
        if request.image is None:
            self.stats.reject("no image")
            return None
        p = self.class_probabilities(request.image)
        order = np.argsort(-p)
        hyp = K_OBJ[order[0]]
        margin = float(p[order[0]] - p[order[1]])
        answer = {
            "class_hypothesis": hyp, "confidence": float(p[order[0]]),
            "confusions": [{"class": K_OBJ[j], "score": float(p[j])} for j in order[1:3]],
            "attributes": {a: int(a in CLASS_ATTRIBUTES[hyp]) for a in ATTRIBUTES},
            "reliability": _QUALITY_RELIABILITY.get(request.quality, 0.3) * (0.5 + 0.5 * margin),
            "evidence": "CLIP zero-shot top-3: " + ", ".join(f"{K_OBJ[j]}={p[j]:.2f}" for j in order[:3]),
        }
        try:
            out = normalise_answer(answer)
        except AuditValidationError as err:  # cannot happen with finite probabilities; counted
            self.stats.reject(str(err))
            return None
        self.stats.accepted_first += 1
        return out
