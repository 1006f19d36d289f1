"""Shared pytest setup: offline Hugging Face, deterministic threads, paths to real data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep DDS traffic of the tests on this host and away from other ROS 2 processes on it.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))

import pytest  # noqa: E402

from occ_audit_ros import paths  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip():
    """Randomly initialised tiny CLIP (2 blocks, width 64, ViT-B/32 patching), real BPE tokenizer."""
    from occ_audit_ros.clip_model import load_clip

    return load_clip("random-tiny", seed=0)


@pytest.fixture(scope="session")
def keyframe():
    """The real nuScenes scene-0061 keyframe embedded in the repo."""
    from occ_audit_ros.nuscenes_io import load_keyframe

    return load_keyframe(paths.nuscenes_keyframe_dir(), paths.nuscenes_annotations_pkl())
