"""The ``visa-audit/1`` JSON schema: validation (``jsonschema``) and normalisation.

Design choice (DC), docs/visa.md §4. Two schemas:

- :data:`ANSWER_SCHEMA` — what an auditor (VLM, CLIP, SIMULATED) answers about one crop:
  ``class_hypothesis``, ``confidence`` q, ``confusions`` [{class, score}], ``attributes``
  {name: 0 | 1 | null}, ``reliability`` r, ``evidence``.
- :data:`RECORD_SCHEMA` — one JSONL line of the audit store: the answer plus ``schema``,
  ``instance_token``, ``scene_token``, ``crop``, ``vlm`` (which auditor made it) and ``gt``
  (filled by our pipeline, never by the auditor).

Normalisation after schema validation (§4): confusions equal to the hypothesis are dropped and
repeated confusion classes keep their first entry; if q + Σ scores > 1 all of them are divided by
the sum; missing attributes become ``null`` (masked).
"""

from __future__ import annotations

import copy
import json
import re

import jsonschema

from training.visa.taxonomy import ATTRIBUTES, K_OBJ

SCHEMA_VERSION = "visa-audit/1"
#: Auditor kinds; SIMULATED audits are for controlled experiments only.
AUDITOR_KINDS = ("vlm", "clip-zero-shot", "SIMULATED")
QUALITIES = ("clear", "partial", "poor")


class AuditValidationError(ValueError):
    """An auditor answer or store record does not satisfy ``visa-audit/1``."""


_PROB = {"type": "number", "minimum": 0.0, "maximum": 1.0}

#: JSON schema (draft 2020-12) of an auditor's answer.
ANSWER_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "visa-audit/1/answer",
    "type": "object",
    "required": ["class_hypothesis", "confidence", "confusions", "attributes", "reliability",
                 "evidence"],
    "additionalProperties": False,
    "properties": {
        "class_hypothesis": {"enum": list(K_OBJ)},
        "confidence": _PROB,
        "confusions": {
            "type": "array",
            "maxItems": len(K_OBJ),
            "items": {
                "type": "object",
                "required": ["class", "score"],
                "additionalProperties": False,
                "properties": {"class": {"enum": list(K_OBJ)}, "score": _PROB},
            },
        },
        "attributes": {
            "type": "object",
            "additionalProperties": False,
            "properties": {a: {"enum": [0, 1, None]} for a in ATTRIBUTES},
        },
        "reliability": _PROB,
        "evidence": {"type": "string", "maxLength": 500},
    },
}

#: JSON schema of one audit-store record (one JSONL line).
RECORD_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "visa-audit/1/record",
    "type": "object",
    "required": ["schema", "instance_token", "crop", "vlm", *ANSWER_SCHEMA["required"]],
    "properties": {
        **ANSWER_SCHEMA["properties"],
        "schema": {"const": SCHEMA_VERSION},
        "instance_token": {"type": "string", "minLength": 1},
        "scene_token": {"type": ["string", "null"]},
        "crop": {
            "type": ["object", "null"],
            "properties": {
                "sample_data_token": {"type": ["string", "null"]},
                "camera": {"type": ["string", "null"]},
                "bbox_xyxy": {"type": "array", "items": {"type": "integer"}, "minItems": 4,
                              "maxItems": 4},
                "visibility_bin": {"enum": [1, 2, 3, 4, None]},
                "quality": {"enum": list(QUALITIES)},
            },
        },
        "vlm": {
            "type": "object",
            "required": ["kind", "model"],
            "properties": {
                "kind": {"enum": list(AUDITOR_KINDS)},
                "model": {"type": "string"},
                "prompt": {"type": ["string", "null"]},
                "temperature": {"type": ["number", "null"]},
            },
        },
        "gt": {
            "type": ["object", "null"],
            "properties": {"category": {"type": "string"},
                           "class": {"enum": [*K_OBJ, None]}},
        },
    },
}

_ANSWER_VALIDATOR = jsonschema.Draft202012Validator(ANSWER_SCHEMA)
_RECORD_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)


def _first_error(validator, obj) -> str | None:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.absolute_path) or "<root>"
    return f"{where}: {e.message}"


def normalise_answer(answer: dict) -> dict:
    """Validate an auditor answer against :data:`ANSWER_SCHEMA` and normalise it (docs/visa.md §4).

    Args:
        answer: parsed JSON object.

    Returns:
        A new dict: confusions without the hypothesis or repeats, q + Σ scores ≤ 1 (renormalised
        by the sum when above 1), all 10 attributes present (missing -> ``None``).

    Raises:
        AuditValidationError: naming the first schema violation (a class outside K_obj drops the
            audit, as §4 prescribes).
    """
    err = _first_error(_ANSWER_VALIDATOR, answer)
    if err is not None:
        raise AuditValidationError(err)
    out = copy.deepcopy(answer)
    seen = {out["class_hypothesis"]}
    confusions = []
    for c in out["confusions"]:
        if c["class"] not in seen:
            seen.add(c["class"])
            confusions.append({"class": c["class"], "score": float(c["score"])})
    q = float(out["confidence"])
    total = q + sum(c["score"] for c in confusions)
    if total > 1.0:
        q /= total
        for c in confusions:
            c["score"] /= total
    out["confidence"] = q
    out["confusions"] = confusions
    out["reliability"] = float(out["reliability"])
    out["attributes"] = {a: out["attributes"].get(a) for a in ATTRIBUTES}
    return out


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_answer_text(text: str) -> dict:
    """Parse and normalise a model's text answer (the first JSON object in it).

    A Markdown code fence around the object is accepted; anything else around it is ignored.

    Raises:
        AuditValidationError: no JSON object, invalid JSON, or a schema violation.
    """
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    start = body.find("{")
    if start < 0:
        raise AuditValidationError("no JSON object in the answer")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError as err:
        raise AuditValidationError(f"invalid JSON: {err.msg} at char {err.pos}") from None
    if not isinstance(obj, dict):
        raise AuditValidationError("the JSON value is not an object")
    return normalise_answer(obj)


def validate_record(record: dict) -> None:
    """Check one store record against :data:`RECORD_SCHEMA` (and its answer part).

    Raises:
        AuditValidationError: naming the first violation.
    """
    err = _first_error(_RECORD_VALIDATOR, record)
    if err is not None:
        raise AuditValidationError(err)


def make_record(answer: dict, instance_token: str, auditor: dict, crop: dict | None = None,
                scene_token: str | None = None, gt: dict | None = None) -> dict:
    """Assemble and validate a ``visa-audit/1`` store record.

    Args:
        answer: a normalised answer (:func:`normalise_answer`).
        instance_token: nuScenes ``instance`` token (the store key).
        auditor: ``{"kind", "model", "prompt", "temperature"}`` (stored under ``"vlm"``).
        crop: crop metadata (:class:`training.visa.crops.Crop` ``.to_json()``) or ``None``.
        scene_token: nuScenes ``scene`` token.
        gt: ``{"category", "class"}`` from the annotation (our pipeline fills it).

    Raises:
        AuditValidationError: when the record violates the schema.
    """
    record = {"schema": SCHEMA_VERSION, "instance_token": instance_token,
              "scene_token": scene_token, "crop": crop, "vlm": dict(auditor)}
    record.update({k: answer[k] for k in ANSWER_SCHEMA["required"]})
    record["gt"] = gt
    validate_record(record)
    return record
