"""VISA step 1: the visa-audit/1 schema, the SIMULATED, CLIP zero-shot and VLM auditors."""

import copy
import json

import numpy as np
import pytest
import torch

from training.visa import schema
from training.visa.auditors import AuditRequest, ClipZeroShotAuditor, SimulatedAuditor
from training.visa.taxonomy import (ATTRIBUTES, K_OBJ, PARENTS, attribute_matrix,
                                         category_to_class, parent_of)

# The example record of visa.md §4, verbatim apart from the auditor kind our schema adds.
DESIGN_EXAMPLE = json.loads("""
{"schema": "visa-audit/1", "instance_token": "abc", "scene_token": "def",
 "crop": {"sample_data_token": "sd", "camera": "CAM_FRONT", "bbox_xyxy": [412, 230, 655, 401],
          "visibility_bin": 4, "quality": "clear"},
 "vlm": {"kind": "vlm", "model": "Qwen3-VL-8B-Instruct", "prompt": "visa-prompt/1", "temperature": 0.0},
 "class_hypothesis": "truck", "confidence": 0.80,
 "confusions": [{"class": "trailer", "score": 0.12}, {"class": "bus", "score": 0.05}],
 "attributes": {"large_vehicle": 1, "two_wheeler": 0, "person": 0, "static_obstacle": 0,
                "enclosed_passenger_cabin": 1, "cargo_bed_or_box": 1, "towed_unit": 0,
                "construction_equipment": 0, "tall_over_2p5m": 1, "wheeled": 1},
 "reliability": 0.85, "evidence": "box-shaped cargo body behind a cab",
 "gt": {"category": "vehicle.truck", "class": "truck"}}
""")


def _answer(**kw):
    a = {k: copy.deepcopy(DESIGN_EXAMPLE[k]) for k in schema.ANSWER_SCHEMA["required"]}
    a.update(kw)
    return a


def test_taxonomy_matrix_matches_design_example():
    M = attribute_matrix()
    truck = M[K_OBJ.index("truck")]
    assert [int(v) for v in truck] == [DESIGN_EXAMPLE["attributes"][a] for a in ATTRIBUTES]
    assert sorted(c for g in PARENTS.values() for c in g) == sorted(K_OBJ)
    assert category_to_class("vehicle.bus.bendy") == "bus" and category_to_class("animal") is None
    assert parent_of("motorcycle") == "two_wheeler"
    # No two classes in different parents share an M row (the attribute loss can separate them).
    rows = {tuple(M[i]) for i in range(len(K_OBJ))}
    assert len(rows) >= 8


def test_design_example_record_validates_and_answer_is_normalised():
    schema.validate_record(DESIGN_EXAMPLE)
    out = schema.normalise_answer(_answer())
    assert out["confidence"] == pytest.approx(0.80) and out["confusions"][0]["score"] == 0.12


def test_normalisation_renormalises_drops_self_and_repeats_and_masks_missing():
    a = _answer(confidence=0.8, confusions=[{"class": "trailer", "score": 0.4},
                                           {"class": "truck", "score": 0.3},
                                           {"class": "trailer", "score": 0.2},
                                           {"class": "bus", "score": 0.3}],
                attributes={"wheeled": 1})
    out = schema.normalise_answer(a)
    # kept: trailer 0.4, bus 0.3; total 0.8 + 0.7 = 1.5 -> divide by 1.5
    assert out["confidence"] == pytest.approx(0.8 / 1.5)
    assert [c["class"] for c in out["confusions"]] == ["trailer", "bus"]
    assert [c["score"] for c in out["confusions"]] == pytest.approx([0.4 / 1.5, 0.3 / 1.5])
    assert out["attributes"]["wheeled"] == 1 and out["attributes"]["person"] is None
    assert len(out["attributes"]) == len(ATTRIBUTES)


@pytest.mark.parametrize("bad, where", [
    (dict(class_hypothesis="van"), "class_hypothesis"),
    (dict(confidence=1.2), "confidence"),
    (dict(confusions=[{"class": "dog", "score": 0.1}]), "confusions/0/class"),
    (dict(attributes={"wheeled": 2}), "attributes/wheeled"),
    (dict(attributes={"flying": 1}), "attributes"),
    (dict(reliability="high"), "reliability"),
])
def test_schema_rejects_bad_answers_naming_the_field(bad, where):
    with pytest.raises(schema.AuditValidationError, match=where):
        schema.normalise_answer(_answer(**bad))


def test_parse_answer_text_accepts_fenced_json_and_rejects_garbage():
    text = "Sure.\n```json\n" + json.dumps(_answer()) + "\n```\nDone."
    assert schema.parse_answer_text(text)["class_hypothesis"] == "truck"
    with pytest.raises(schema.AuditValidationError, match="no JSON object"):
        schema.parse_answer_text("a truck, I think")
    with pytest.raises(schema.AuditValidationError, match="invalid JSON"):
        schema.parse_answer_text('{"class_hypothesis": "truck",')
    rec = schema.make_record(schema.normalise_answer(_answer()), "tok", {"kind": "SIMULATED", "model": "m"})
    bad = dict(rec, schema="visa-audit/2")
    with pytest.raises(schema.AuditValidationError, match="schema"):
        schema.validate_record(bad)


def _simulate(n, **kw):
    aud = SimulatedAuditor(**kw)
    rng = np.random.default_rng(1)
    gts = [K_OBJ[i] for i in rng.integers(0, len(K_OBJ), n)]
    answers = [aud.audit(AuditRequest(f"inst-{i}", gt_class=g)) for i, g in enumerate(gts)]
    return aud, gts, answers


def test_simulated_auditor_accuracy_confusion_structure_and_reliability_correlation():
    n = 3000
    aud, gts, ans = _simulate(n, accuracy=0.7, confusion="parent", p_sibling=0.8,
                              reliability_correlation=0.8, seed=3)
    assert aud.kind == "SIMULATED" and "SIMULATED" in aud.model
    assert all("SIMULATED" in a["evidence"] for a in ans)
    correct = np.array([a["class_hypothesis"] == g for a, g in zip(ans, gts)])
    # Binomial: 4 sigma of 0.7 over 3000 draws is 0.033.
    assert abs(correct.mean() - 0.7) < 0.035
    wrong = [(a["class_hypothesis"], g) for a, g in zip(ans, gts) if a["class_hypothesis"] != g]
    has_sib = [(h, g) for h, g in wrong if len(PARENTS[parent_of(g)]) > 1]
    sib_rate = np.mean([parent_of(h) == parent_of(g) for h, g in has_sib])
    # With a sibling available: p_sibling + (1 - p_sibling) * |siblings| / 9 >= 0.8.
    assert sib_rate > 0.75
    r = np.array([a["reliability"] for a in ans])
    assert r[correct].mean() - r[~correct].mean() > 0.3
    assert np.corrcoef(r, correct)[0, 1] > 0.5
    # rho = 0: reliability carries no information; rho < 0: it misleads.
    _, gts0, ans0 = _simulate(n, accuracy=0.7, reliability_correlation=0.0, seed=3)
    c0 = np.array([a["class_hypothesis"] == g for a, g in zip(ans0, gts0)])
    r0 = np.array([a["reliability"] for a in ans0])
    assert abs(np.corrcoef(r0, c0)[0, 1]) < 0.08
    _, gtsn, ansn = _simulate(500, accuracy=0.7, reliability_correlation=-0.8, seed=3)
    cn = np.array([a["class_hypothesis"] == g for a, g in zip(ansn, gtsn)])
    rn = np.array([a["reliability"] for a in ansn])
    assert rn[cn].mean() < rn[~cn].mean()
    # GT appears among the confusions of most wrong audits (p_gt_in_confusions = 0.7).
    gt_in = np.mean([g in [c["class"] for c in a["confusions"]]
                     for a, g in zip(ans, gts) if a["class_hypothesis"] != g])
    _, gtsz, ansz = _simulate(1000, accuracy=0.7, p_gt_in_confusions=0.0, seed=3)
    gt_in0 = np.mean([g in [c["class"] for c in a["confusions"]]
                      for a, g in zip(ansz, gtsz) if a["class_hypothesis"] != g])
    assert gt_in > 0.65 and gt_in - gt_in0 > 0.3


def test_simulated_auditor_is_deterministic_per_token_and_per_quality():
    a1 = SimulatedAuditor(accuracy={"clear": 1.0, "partial": 0.5, "poor": 0.0}, seed=7)
    a2 = SimulatedAuditor(accuracy={"clear": 1.0, "partial": 0.5, "poor": 0.0}, seed=7)
    req = [AuditRequest(f"t{i}", quality=q, gt_class="car") for i in range(50) for q in ("clear", "poor")]
    out1 = [a1.audit(r) for r in req]
    out2 = [a2.audit(r) for r in reversed(req)][::-1]
    assert out1 == out2  # order independent (resumable, shardable)
    assert all(o["class_hypothesis"] == "car" for o, r in zip(out1, req) if r.quality == "clear")
    assert all(o["class_hypothesis"] != "car" for o, r in zip(out1, req) if r.quality == "poor")
    assert a1.stats.requests == 100 and a1.stats.accepted_first == 100
    with pytest.raises(ValueError, match="gt_class"):
        a1.audit(AuditRequest("x"))
    with pytest.raises(ValueError, match="accuracy"):
        SimulatedAuditor(accuracy=1.5)
    with pytest.raises(ValueError, match="confusion"):
        SimulatedAuditor(confusion=np.ones((3, 3)))


def test_clip_zero_shot_auditor_matches_naive_full_forward(tiny_clip):
    aud = ClipZeroShotAuditor(tiny_clip)
    assert "RANDOM" in aud.model
    rng = np.random.default_rng(0)
    img = (rng.random((70, 120, 3)) * 255).astype(np.uint8)
    p = aud.class_probabilities(img)
    # Naive reference: one CLIPModel forward (both towers, projections, normalisation) on the
    # same pixels and prompts, then softmax(100 cos) over the 10 classes.
    from occ_audit_ros.clip_model import CLIP_MEAN, CLIP_STD
    from training.visa.auditors import CLIP_PROMPTS

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    x = (x.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tok = tiny_clip.tokenizer([CLIP_PROMPTS[c] for c in K_OBJ], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = tiny_clip.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=x)
    ref = torch.softmax(100.0 * out.image_embeds @ out.text_embeds.T, dim=-1)[0].double().numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)
    ans = aud.audit(AuditRequest("i", image=img, quality="partial"))
    assert ans["class_hypothesis"] == K_OBJ[int(np.argmax(ref))]
    assert ans["confidence"] == pytest.approx(ref.max(), rel=1e-4)
    schema.make_record(ans, "i", aud.describe())  # a valid store record
    assert aud.audit(AuditRequest("j")) is None and aud.stats.rejected == 1
    with pytest.raises(ValueError, match="uint8"):
        aud.class_probabilities(np.zeros((5, 5), np.float32))


@pytest.fixture(scope="module")
def tiny_vlm_dir():
    """A tiny RANDOM-init Qwen2-VL checkpoint saved to disk (see test/visa_tiny_vlm.py)."""
    from visa_tiny_vlm import tiny_qwen2vl_dir

    return tiny_qwen2vl_dir()


def test_vlm_auditor_runs_the_real_qwen2vl_code_path_and_rejects_invalid_answers(tiny_vlm_dir):
    from training.visa.vlm_auditor import PROMPT_VERSION, VlmAuditor, build_prompt

    aud = VlmAuditor(str(tiny_vlm_dir), max_new_tokens=6)
    assert type(aud.vlm).__name__ == "Qwen2VLForConditionalGeneration"
    assert aud.describe() == {"kind": "vlm", "model": str(tiny_vlm_dir), "prompt": PROMPT_VERSION,
                              "temperature": 0.0}
    prompt = build_prompt()
    assert all(c in prompt for c in K_OBJ) and all(a in prompt for a in ATTRIBUTES)
    img = (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    answer, raw = aud.ask(img)
    # A random model does not write valid JSON: first answer rejected, one retry, then rejected.
    assert answer is None and len(raw) == 2
    assert aud.stats.rejected == 1 and aud.stats.accepted_first == 0
    assert sum(aud.stats.reasons.values()) == 1
    # Greedy decoding: the same crop gives the same text.
    assert aud.ask(img)[1] == raw
    assert aud.audit(AuditRequest("tok", image=img)) is None
    assert aud.stats.requests == 1 and aud.stats.rejected == 3


def test_vlm_auditor_missing_model_is_one_clear_error(tmp_path):
    from training.visa.vlm_auditor import VlmAuditor, VlmUnavailable

    with pytest.raises(VlmUnavailable, match="does not exist"):
        VlmAuditor(str(tmp_path / "no-such-model"))
    with pytest.raises(VlmUnavailable, match="could not load a VLM"):
        VlmAuditor(str(tmp_path))  # an empty directory
