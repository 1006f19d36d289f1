"""MultiCameraSynchronizer: per-camera exact matching, cross-camera slop, message loss, silent
cameras, on nuScenes-like stamps (12 Hz, six cameras firing ~43 ms apart)."""

import json

import numpy as np
import pytest

from occ_audit_ros import conventions, paths
from occ_audit_ros.sync import (DEFAULT_SLOP_S, NUSCENES_CAMERA_HZ, ApproximateSynchronizer,
                                MultiCameraSynchronizer)

KINDS = ("image", "info", "depth")
CAMS = list(conventions.CAMERA_CHANNELS)
PERIOD_NS = int(1e9 / NUSCENES_CAMERA_HZ)


def _stream(n_frames, rng, loss, silent=None):
    """Arrival-ordered (camera, kind, stamp, (camera, kind, frame)) of a 12 Hz rig.

    Camera i fires i * 8.4 ms after the frame start (+- 1 ms jitter, as nuScenes' cameras follow
    the LiDAR sweep); image, info and depth of a camera frame share the stamp; every message is
    lost with probability ``loss``; ``silent`` = (camera, first frame, last frame) sends nothing.
    Each message arrives 0-30 ms after its stamp (streams stay in order at 83 ms spacing).
    """
    out, delivered = [], {}
    for f in range(n_frames):
        for i, cam in enumerate(CAMS):
            stamp = 10**12 + f * PERIOD_NS + int(i * 8.4e6) + int(rng.integers(-10**6, 10**6))
            if silent and cam == silent[0] and silent[1] <= f <= silent[2]:
                continue
            for kind in KINDS:
                if rng.random() < loss:
                    continue
                delivered[(f, cam, kind)] = stamp
                out.append((stamp + int(rng.integers(0, 30_000_000)), cam, kind, stamp, (cam, kind, f)))
    out.sort(key=lambda x: x[0])
    return [x[1:] for x in out], delivered


def _run(sync, stream):
    sets = []
    for cam, kind, stamp, msg in stream:
        sets += sync.add(cam, kind, stamp, msg)
    return sets


def _check_sets(sets, slop_ns):
    """Per camera one frame's image, info and depth; across cameras every stamp within the slop
    of the set's centre; no camera frame emitted twice. Returns the emitted (camera, frame)s and
    the number of sets whose cameras come from more than one rig frame."""
    emitted, mixed = [], 0
    for s in sets:
        frames = set()
        for cam, parts in s.frames.items():
            assert set(parts) == set(KINDS)
            assert {m[0] for m in parts.values()} == {cam}
            (f,) = {m[2] for m in parts.values()}  # image, info, depth of one frame
            frames.add(f)
            emitted.append((cam, f))
        mixed += len(frames) > 1
        assert all(abs(st - s.stamp_ns) <= slop_ns for st in s.stamps.values()), s
        assert set(s.frames) | set(s.missing) == set(CAMS) and not set(s.frames) & set(s.missing)
    assert len(emitted) == len(set(emitted))  # each camera frame once
    return emitted, mixed


@pytest.mark.parametrize("loss", [0.02, 0.1])
def test_message_loss_on_all_streams_never_mixes_frames(loss):
    rng = np.random.default_rng(7)
    stream, delivered = _stream(300, rng, loss)
    slop = int(DEFAULT_SLOP_S * 1e9)
    sync = MultiCameraSynchronizer(CAMS, KINDS, slop_ns=slop)
    sets = _run(sync, stream) + sync.poll(10**13)
    emitted, mixed = _check_sets(sets, slop)
    # Every camera frame whose three messages arrived is emitted (none is thrown away), no other.
    complete = {(c, f) for f in range(300) for c in CAMS if all((f, c, k) in delivered for k in KINDS)}
    assert set(emitted) == complete
    full = sum(len(s.missing) == 0 for s in sets)
    # A whole rig frame gives a full set unless the previous set took a camera of it (below).
    assert full >= 0.9 * sum(all((c, f) in complete for c in CAMS) for f in range(300))
    # A set takes a camera's next rig frame (within the slop) only where its own frame was lost.
    assert mixed <= sum(not all((c, f) in complete for c in CAMS) for f in range(300))


def test_message_filters_like_sync_mixes_frames_where_the_camera_sync_does_not():
    """The flat 18-stream approximate sync at 0.1 s pairs one frame's image with another's depth
    under message loss; the two-level sync on the same arrivals never does."""
    rng = np.random.default_rng(3)
    stream, _ = _stream(200, rng, 0.02)
    flat = ApproximateSynchronizer([(c, k) for c in CAMS for k in KINDS], slop_ns=100_000_000)
    mixed = 0
    for cam, kind, stamp, msg in stream:
        out = flat.add((cam, kind), stamp, msg)
        if out is not None:
            mixed += any(len({out[(c, k)][2] for k in KINDS}) > 1 for c in CAMS)
    assert mixed > 0
    _check_sets(_run(MultiCameraSynchronizer(CAMS, KINDS), stream), int(DEFAULT_SLOP_S * 1e9))


def test_silent_camera_is_left_out_after_the_timeout():
    rng = np.random.default_rng(11)
    stream, _ = _stream(120, rng, 0.0, silent=("CAM_BACK", 30, 89))
    sync = MultiCameraSynchronizer(CAMS, KINDS, timeout_ns=250_000_000)
    sets = _run(sync, stream) + sync.poll(10**13)
    emitted, mixed = _check_sets(sets, int(DEFAULT_SLOP_S * 1e9))
    assert len(sets) == 120 and mixed == 0  # no frame lost while the camera is silent
    for f, s in enumerate(sets):
        assert {fr for (_, _, fr) in [m for p in s.frames.values() for m in p.values()]} == {f}
        assert s.missing == (("CAM_BACK",) if 30 <= f <= 89 else ()), f
    # Without a timeout nothing is emitted while the camera is silent (it might still come).
    sync = MultiCameraSynchronizer(CAMS, KINDS, timeout_ns=None)
    stream, _ = _stream(60, rng, 0.0, silent=("CAM_BACK", 30, 59))
    sets = _run(sync, stream)
    _check_sets(sets, int(DEFAULT_SLOP_S * 1e9))
    assert len(sets) == 30 and all(not s.missing for s in sets)


def test_last_set_is_emitted_on_poll_and_min_cameras_drops_small_sets():
    sync = MultiCameraSynchronizer(["a", "b"], ("image", "info"), slop_ns=10, timeout_ns=100)
    assert sync.add("a", "image", 1000, "ai") == []
    assert sync.add("a", "info", 1000, "af") == []  # b may still come
    assert sync.poll(1050) == []
    (s,) = sync.poll(1101)
    assert s.frames == {"a": {"image": "ai", "info": "af"}} and s.missing == ("b",)
    assert sync.silent_cameras(1050) == [] and sync.silent_cameras(1101) == ["a", "b"]
    sync = MultiCameraSynchronizer(["a", "b"], ("image",), slop_ns=10, timeout_ns=100, min_cameras=2)
    sync.add("a", "image", 1000, "x")
    assert sync.poll(2000) == [] and sync.dropped == 1
    # per-camera tolerance: info 2 ns off the image still pairs with tolerance 5, not with 0
    sync = MultiCameraSynchronizer(["a"], ("image", "info"), slop_ns=10, tolerance_ns=5)
    sync.add("a", "image", 1000, "i")
    assert [s.frames for s in sync.add("a", "info", 1002, "f")] == [{"a": {"image": "i", "info": "f"}}]
    sync = MultiCameraSynchronizer(["a"], ("image", "info"), slop_ns=10, tolerance_ns=0, timeout_ns=None)
    sync.add("a", "image", 1000, "i")
    assert sync.add("a", "info", 1002, "f") == []
    with pytest.raises(KeyError):
        sync.add("c", "image", 1, "x")
    with pytest.raises(ValueError):
        MultiCameraSynchronizer(["a"], ("image",), min_cameras=2)


def test_backwards_stamps_restart_the_camera():
    sync = MultiCameraSynchronizer(["a", "b"], ("image",), slop_ns=10, timeout_ns=None)
    assert sync.add("a", "image", 5000, "late") == []
    assert sync.add("a", "image", 100, "a100") == []  # bag loop: a's queue restarted
    (s,) = sync.add("b", "image", 105, "b105")
    assert s.frames == {"a": {"image": "a100"}, "b": {"image": "b105"}}


def test_default_slop_takes_the_real_nuscenes_keyframe():
    """The embedded scene-0061 keyframe's six camera stamps (42.6 ms apart end to end) form one set
    with the default slop, below half the 12 Hz camera period."""
    rows = json.loads((paths.nuscenes_keyframe_dir() / "v1.0-test" / "sample_data.json").read_text())
    stamps = {r["filename"].split("/")[1]: r["timestamp"] * 1000 for r in rows if "/CAM_" in r["filename"]}
    assert DEFAULT_SLOP_S < 0.5 / NUSCENES_CAMERA_HZ
    assert 0.04e9 < max(stamps.values()) - min(stamps.values()) < 2 * DEFAULT_SLOP_S * 1e9
    sync = MultiCameraSynchronizer(CAMS, KINDS)
    sets = []
    for cam, stamp in sorted(stamps.items(), key=lambda x: x[1]):
        for kind in KINDS:
            sets += sync.add(cam, kind, stamp, (cam, kind, 0))
    (s,) = sets
    assert sorted(s.frames) == sorted(CAMS) and s.missing == ()


def test_a_frame_arriving_after_its_set_went_out_is_discarded():
    """A camera frame completing after the timeout emitted its set without it must not form a second
    set at the same stamp (seen on a loaded machine replaying at rate 1)."""
    sync = MultiCameraSynchronizer(["a", "b"], ("image", "info"), slop_ns=10, timeout_ns=100)
    sync.add("a", "image", 1000, "ai")
    sync.add("a", "info", 1000, "af")
    (s,) = sync.poll(1101)
    assert s.missing == ("b",)
    # b's frame of the same instant arrives late: discarded, counted, no set
    assert sync.add("b", "image", 1003, "bi") == [] and sync.add("b", "info", 1003, "bf") == []
    assert sync.poll(1102) == [] and sync.late_frames == 1
    # the next instant of both cameras is a normal set
    sync.add("a", "image", 1050, "ai2")
    sync.add("a", "info", 1050, "af2")
    sync.add("b", "image", 1052, "bi2")
    (s,) = sync.add("b", "info", 1052, "bf2")
    assert s.frames == {"a": {"image": "ai2", "info": "af2"}, "b": {"image": "bi2", "info": "bf2"}}
    assert s.missing == ()
