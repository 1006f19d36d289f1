"""Where data lives: the demo keyframe embedded in the repo and the shared data tree ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent


def shared_dir() -> Path:
    """The shared data tree: ``$OCC_AUDIT_SHARED`` or ``<repo>/../shared``.

    Raises:
        FileNotFoundError: when the directory does not exist, naming the variable to set.
    """
    path = Path(os.environ.get("OCC_AUDIT_SHARED", REPO_ROOT.parent / "shared")).resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared data directory {path} not found; set OCC_AUDIT_SHARED to the directory that "
            "holds design/ and data/"
        )
    return path


def _embedded_data() -> Path:
    """Data shipped with the package: ``<repo>/data`` in a source tree, ``share/occ_audit_ros/data``
    in a colcon install (one real nuScenes keyframe, CC BY-NC-SA 4.0, and CLIP's BPE list; see the
    READMEs there)."""
    try:
        return resource("data")
    except FileNotFoundError:
        return REPO_ROOT / "data"  # callers report the missing file with its full path


def nuscenes_keyframe_dir() -> Path:
    """nuScenes table-format root of the embedded scene-0061 keyframe (``v1.0-test/``, ``samples/``)."""
    return _embedded_data() / "nuscenes-scene-0061-kf0"


def nuscenes_annotations_pkl() -> Path:
    """MMDetection3D info pickle with the 69 GT boxes of the embedded keyframe."""
    return _embedded_data() / "nuscenes-mmdet3d-annotations" / "n015-2018-07-24-11-22-45+0800.pkl"


def clip_bpe_vocab() -> Path:
    """CLIP's BPE merge list (MIT, OpenAI), used to tokenise with random-weight CLIP models."""
    return _embedded_data() / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"


def _share_dir() -> Path | None:
    """``share/occ_audit_ros`` of a colcon install, when the package is installed that way."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory("occ_audit_ros"))
    except (PackageNotFoundError, ValueError, LookupError, OSError):  # OSError: no AMENT_PREFIX_PATH
        return None


def resource(relative: str) -> Path:
    """A file or directory shipped with the package (``config/...``, ``msg``, ``launch/...``): from the
    source tree when running from it, else from the colcon install's share directory.

    Raises:
        FileNotFoundError: when neither location has it.
    """
    candidates = [REPO_ROOT / relative]
    if candidates[0].exists():
        return candidates[0]
    share = _share_dir()
    if share is not None and (share / relative).exists():
        return share / relative
    if share is not None:
        candidates.append(share / relative)
    raise FileNotFoundError(f"{relative} not found in {', '.join(str(c) for c in candidates)}")
