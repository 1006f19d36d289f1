"""Offline side of occ_audit_ros: trainers, VISA audits, simulators and experiment drivers.

Nothing here runs on the robot, and nothing in ``occ_audit_ros`` imports this package; it imports the
same ROS-free model code as the nodes (``occ_audit_ros.semabs``, ``occ_audit_ros.ago``). Subpackages:

* :mod:`training.sim` - procedural indoor and driving scenes with exact ground truth.
* :mod:`training.visa` - VLM audits of tracked instances, propagation, grounding and distillation losses.
* :mod:`training.semabs` - SemAbs training data (simulator packs, toy scenes), batching, metrics, baselines, demos.
* :mod:`training.ago` - AGO training data, Occ3D-style GT, Occ3D metrics, evaluation CLI, oracle auditor.
* :mod:`training.experiments` - experiment drivers; their results live in ``training/experiments/results``.

Trainers: :mod:`training.train_semabs`, :mod:`training.train_ago` (both ``torchrun``-compatible), and
:mod:`training.semabs_card`. Their YAML configs are in ``training/config``.
"""

from pathlib import Path

#: Directory of the training configs (``training/config/*.yaml``).
CONFIG_DIR = Path(__file__).resolve().parent / "config"
