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


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier, the folder it lives in: ``unit`` (ROS-free runtime library),
    ``ros`` (real rclpy, real bags) or ``training`` (offline side), so ``-m unit`` etc. select one."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


TIERS = ("unit", "ros", "training")
