"""Shared pytest setup: offline Hugging Face, deterministic threads, paths to real data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
