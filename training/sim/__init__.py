"""Procedural scene simulator with exact ground truth (research tool, ROS-free).

No pretrained CLIP/VLM weights and only a few real annotated keyframes exist here, so the learnable
parts of the package (SemAbs completion and VOOL, AGO grounding, VISA) are trained and measured on
simulated scenes with exact ground truth, the way Semantic Abstraction (Ha & Song, CoRL 2022, App. 6)
trained on AI2-THOR. Modules, one job each:

* :mod:`.primitives` - closed primitive meshes (box, cylinder, sphere, cone, torus), composite objects
  and an open3d ``RaycastingScene`` wrapper: depth + instance ids by ray casting, per-object
  occupancy at query points.
* :mod:`.vocabulary` - open-vocabulary class list with synonyms, shape recipes and splits (YAML).
* :mod:`.indoor` - tabletop / room scenes in the SemAbs workspace with RGB-D views.
* :mod:`.relations` - VOOL ground truth for the six relations of the paper's appendix.
* :mod:`.relevancy_sim` - a *simulation* of CLIP relevancy maps (not CLIP) with the same output shape.
* :mod:`.driving` - nuScenes-like driving sequences with Occ3D-style occupancy ground truth.
* :mod:`.nuscenes_writer` - nuScenes table-format writer for driving sequences.
* :mod:`.shards` - deterministic, atomic ``.npz`` shards.
* :mod:`.generate` - the dataset CLI (``python -m training.sim.generate``).

The real-data path (nuScenes keyframes, real CLIP weights) stays the product's main path.
"""
