"""Offline parts of AGO (Li et al., ICCV 2025): training data, ground truth and evaluation.

* :mod:`.data` - nuScenes-format samples to training tensors (real keyframes and the driving simulator).
* :mod:`.occ_gt` - Occ3D-style GT occupancy of a nuScenes keyframe from LiDAR and boxes.
* :mod:`.metrics` - Occ3D confusion-matrix evaluator (mIoU, mIoU*, object / rare / known / unknown).
* :mod:`.eval` - evaluation CLI (``occ_audit_ago_eval``); :mod:`.keyframe_gt` - GT figure of the real keyframe.
* :mod:`.oracle_vlm` - the simulated voxel auditor used for open-world pre-training.

The model, its losses and the predictor a node calls are runtime code in :mod:`occ_audit_ros.ago`.
"""
