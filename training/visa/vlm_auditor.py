"""Transformers VLM auditor (Qwen2-VL / Qwen2.5-VL / Qwen3-VL family) — docs/visa.md §1, §4 (design choice).

The crop and the versioned prompt :data:`PROMPT_VERSION` go through the model's own processor
and chat template; decoding is greedy (``do_sample=False``, temperature 0); the first JSON object
of the answer is validated against ``visa-audit/1`` (:func:`.schema.parse_answer_text`). On a
parse or validation failure the model is asked once more (the rejected answer and the reason
are appended to the conversation; a greedy re-ask of the same prompt would repeat itself); a
second failure rejects the crop. Requests, first-time / retry acceptances and rejections (with
reasons) are counted in ``stats``.

No VLM weights exist in this environment: tests run the real ``Qwen2VLForConditionalGeneration``
with a tiny random-init config and a tiny byte-level BPE tokenizer saved to a local directory,
which exercises loading, prompting, generation, decoding, validation, retry and rejection — not
audit quality (a random model never answers valid JSON).

Processor: ``AutoProcessor`` when it loads. With transformers 5.x the Qwen2-VL processor also
builds a video processor that needs torchvision (not installed here, on purpose); then the
auditor uses :class:`_LightQwenProcessor` — the checkpoint's own tokenizer, chat template and
PIL image processor, with the image-placeholder expansion of ``Qwen2VLProcessor`` (one
``<|image_pad|>`` per merged patch, ``prod(image_grid_thw) // merge_size**2``). The tests
exercise this fallback path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from occ_audit_ros.devices import resolve_device
from training.visa.auditors import AuditRequest, Auditor
from training.visa.schema import AuditValidationError, parse_answer_text
from training.visa.taxonomy import ATTRIBUTES, CLASS_DEFINITIONS, K_OBJ

LOG = logging.getLogger(__name__)

PROMPT_VERSION = "visa-prompt/1"


class VlmUnavailable(RuntimeError):
    """The VLM could not be loaded from the given directory or hub id."""


HOW_TO_PROVIDE = (
    "Provide a Qwen2-VL-family checkpoint as a local directory saved with save_pretrained (model +\n"
    "processor), e.g. `huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir DIR` on a\n"
    "machine with hub access, then `--vlm DIR`; or a hub id where the hub is reachable and\n"
    "HF_HUB_OFFLINE is unset. No VLM weights ship with this repository."
)


def build_prompt() -> str:
    """The text of prompt ``visa-prompt/1`` (classes with one-line definitions, exact JSON form)."""
    classes = "\n".join(f"- {c}: {CLASS_DEFINITIONS[c]}" for c in K_OBJ)
    attrs = ", ".join(f'"{a}": 0|1|null' for a in ATTRIBUTES)
    return (
        "You audit the semantic class of ONE object shown in this crop of a driving-camera image.\n"
        f"Choose the class from this closed set (nuScenes):\n{classes}\n"
        "Answer with exactly one JSON object and no other text:\n"
        '{"class_hypothesis": "<class>", "confidence": <0-1>, '
        '"confusions": [{"class": "<other class>", "score": <0-1>}], '
        f'"attributes": {{{attrs}}}, '
        '"reliability": <0-1, how well the crop shows the object>, '
        '"evidence": "<short visual reason>"}\n'
        "confidence + the confusion scores must not exceed 1; use null for attributes you cannot see."
    )


class _LightQwenProcessor:
    """Qwen2-VL-family processor without the video branch (no torchvision needed).

    Args:
        name: checkpoint directory or hub id (tokenizer, image processor, chat template).

    Raises:
        OSError / ValueError: from ``from_pretrained`` when the pieces are missing.
    """

    def __init__(self, name: str) -> None:
        import json

        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name)
        self.image_processor = AutoImageProcessor.from_pretrained(name, backend="pil")
        template = getattr(self.tokenizer, "chat_template", None)
        path = Path(name)
        if path.is_dir() and (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif path.is_dir() and (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text())["chat_template"]
        if not template:
            raise ValueError(f"no chat template in {name}")
        self.chat_template = template
        self.image_token = "<|image_pad|>"
        self.merge = int(getattr(self.image_processor, "merge_size", 2))

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        """The conversation as text, rendered with the checkpoint's chat template."""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt,
                                                  tokenize=tokenize)

    def __call__(self, text, images, return_tensors="pt"):
        """Tokenised text with expanded image placeholders plus ``pixel_values``/``image_grid_thw``."""
        from transformers import BatchFeature

        image_inputs = self.image_processor(images=images, return_tensors=return_tensors)
        grids = image_inputs["image_grid_thw"]
        out_text = []
        k = 0
        for t in text:
            while self.image_token in t:
                n = int(grids[k].prod()) // self.merge ** 2
                t = t.replace(self.image_token, "<|placeholder|>" * n, 1)
                k += 1
            out_text.append(t.replace("<|placeholder|>", self.image_token))
        if k != len(grids):
            raise ValueError(f"{k} image placeholders in the text for {len(grids)} images")
        enc = self.tokenizer(out_text, return_tensors=return_tensors)
        return BatchFeature({**enc, **image_inputs})

    def batch_decode(self, ids, skip_special_tokens=True):
        """Token ids -> strings."""
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)


class VlmAuditor(Auditor):
    """Audits crops with a transformers image-text-to-text model (Qwen2-VL family).

    Args:
        source: local directory (model + processor saved with ``save_pretrained``) or hub id.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_new_tokens: generation budget per answer (the JSON is ~150 tokens for Qwen).
        dtype: torch dtype for the weights (float32 on CPU; bfloat16 on GPU is typical).

    Raises:
        ValueError: ``device`` names CUDA on a machine without it (:func:`occ_audit_ros.devices.resolve_device`).
        VlmUnavailable: when ``source`` is neither a loadable directory nor a reachable hub id
            (one error, saying how to provide weights).
    """

    kind = "vlm"
    temperature = 0.0
    prompt = PROMPT_VERSION

    def __init__(self, source: str, device: str = "cpu", max_new_tokens: int = 256,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = resolve_device(device)
        path = Path(source).expanduser()
        looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
        if looks_like_path and not path.is_dir():
            raise VlmUnavailable(f"VLM directory {path} does not exist.\n{HOW_TO_PROVIDE}")
        name = str(path) if path.is_dir() else source
        try:
            try:
                self.processor = AutoProcessor.from_pretrained(name)
            except (ImportError, AttributeError, TypeError) as err:  # video branch needs torchvision
                LOG.info("AutoProcessor unavailable (%s); using the checkpoint's tokenizer, chat "
                         "template and PIL image processor", err.__class__.__name__)
                self.processor = _LightQwenProcessor(name)
            self.vlm = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise VlmUnavailable(f"could not load a VLM from {source!r}: "
                                 f"{err.__class__.__name__}: {first}\n{HOW_TO_PROVIDE}") from err
        self.vlm.eval().requires_grad_(False).to(device)
        self.device = device
        self.model = source
        self.max_new_tokens = int(max_new_tokens)
        self.prompt_text = build_prompt()

    def _generate(self, messages: list, image) -> str:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.vlm.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]

    def ask(self, image: np.ndarray) -> tuple[dict | None, list[str]]:
        """Ask the model about one crop, retrying once on an invalid answer.

        Args:
            image: (H, W, 3) uint8 RGB crop.

        Returns:
            (normalised answer or ``None``, the raw answer texts: 1 or 2).

        Raises:
            ValueError: for an image that is not (H, W, 3) uint8.
        """
        from PIL import Image

        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                and image.dtype == np.uint8):
            raise ValueError(f"crop must be (H, W, 3) uint8, got {getattr(image, 'shape', None)}")
        pil = Image.fromarray(image)
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.prompt_text}]}]
        raw = [self._generate(messages, pil)]
        try:
            answer = parse_answer_text(raw[0])
            self.stats.accepted_first += 1
            return answer, raw
        except AuditValidationError as err:
            reason = str(err)
        messages = messages + [
            {"role": "assistant", "content": [{"type": "text", "text": raw[0]}]},
            {"role": "user", "content": [{"type": "text", "text":
                f"That answer was rejected ({reason}). Reply with only the JSON object."}]},
        ]
        raw.append(self._generate(messages, pil))
        try:
            answer = parse_answer_text(raw[1])
            self.stats.accepted_retry += 1
            return answer, raw
        except AuditValidationError as err:
            self.stats.reject(str(err))
            return None, raw

    def audit(self, request: AuditRequest) -> dict | None:
        """Audit one crop (``request.gt_class`` is not read); ``None`` when rejected twice."""
        self.stats.requests += 1
        if request.image is None:
            self.stats.reject("no image")
            return None
        answer, _ = self.ask(request.image)
        return answer
