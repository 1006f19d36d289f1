"""VISA: VLM-guided instance semantic auditing, distilled into occupancy logits (training only).

Xian et al., "VISA: VLM-Guided Instance Semantic Auditing for 3D Occupancy World Models",
arXiv 2606.13460 (2026). Every equation and threshold used here is a design choice (docs/visa.md,
§1-§8), not the paper's code, which is not public.

ROS-free and training-time only: nothing in this subpackage is imported by the perception
node, and it adds loss terms on a model's logits without touching the model (see
:mod:`training.visa.losses`). Modules, one job each:

- :mod:`.taxonomy` — class set K_obj, parent groups, attributes and the class->attribute matrix M.
- :mod:`.schema` — the ``visa-audit/1`` JSON schema, validation and normalisation.
- :mod:`.auditors` — the auditor interface, the SIMULATED auditor and the CLIP zero-shot auditor.
- :mod:`.vlm_auditor` — the transformers VLM auditor (Qwen2-VL family).
- :mod:`.crops` — crop selection per instance over its annotations and cameras.
- :mod:`.tables` — instances and camera views from nuScenes-format tables (nuscenes-devkit).
- :mod:`.store` — the JSONL audit store (atomic appends, resumable, sharded).
- :mod:`.propagation` — tracks by instance token and per-frame weights.
- :mod:`.grounding` — matched voxels of each instance (box + margin intersected with GT class).
- :mod:`.losses` — taxonomy, attribute-factor and scene-graph losses, reliability weights, ramp.
- :mod:`.integration` — audits + keyframe -> loss targets; the ``VisaTerm`` a trainer adds to L_occ.
- :mod:`.generate` — the offline audit-generation CLI (``occ_audit_generate_audits``).
"""
