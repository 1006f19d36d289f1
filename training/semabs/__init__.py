"""Offline parts of Semantic Abstraction (Ha & Song, CoRL 2022): training data and evaluation.

* :mod:`.sim_data` / :mod:`.pack` - simulator scenes to training items, and packed dataset shards.
* :mod:`.toy` - a tiny procedural box scene for tests and smoke runs (not the simulator).
* :mod:`.batching` - OVSSC / VOOL batches (points, queries, labels, relation balancing).
* :mod:`.metrics` / :mod:`.baselines` - voxel IoU with a global cutoff sweep (Sec. 4) and the two baselines.
* :mod:`.demo` / :mod:`.demo_nuscenes` - figures of the predictor on the ARKit frame and a nuScenes keyframe.

The networks and the predictor a node calls are runtime code in :mod:`occ_audit_ros.semabs`.
"""
