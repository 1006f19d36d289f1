"""Approximate-time synchronisation of N streams (ROS-free), like message_filters' ApproximateTime,
and :class:`MultiCameraSynchronizer` for camera rigs (per camera exact, across cameras approximate).

Each stream keeps its last few messages. When every stream has a message and the newest message of
one stream can be matched with one message per other stream such that all stamps lie within
``slop_ns`` of each other, that set is emitted and everything at or before it is dropped. Sets are
formed around the newest arrival, so a slow consumer never builds a backlog.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Hashable, Iterable


class ApproximateSynchronizer:
    """Match one message per key within ``slop_ns``.

    Args:
        keys: stream keys, e.g. ``("CAM_FRONT", "image")``.
        slop_ns: maximum spread of the stamps of one emitted set [ns].
        queue_size: messages kept per stream.
    """

    def __init__(self, keys: Iterable[Hashable], slop_ns: int, queue_size: int = 5) -> None:
        self.keys = list(keys)
        if not self.keys:
            raise ValueError("the synchroniser needs at least one stream")
        self.slop_ns = int(slop_ns)
        self._queues: dict[Hashable, deque] = {k: deque(maxlen=queue_size) for k in self.keys}
        self._lock = threading.Lock()

    def add(self, key: Hashable, stamp_ns: int, msg: Any) -> dict[Hashable, Any] | None:
        """Add a message; return ``{key: msg}`` for a complete set within the slop, else None.

        Raises:
            KeyError: for an unknown key.
        """
        with self._lock:
            queue = self._queues[key]
            if queue and stamp_ns < queue[-1][0]:
                queue.clear()  # time went backwards (bag loop, replay restart): start over
            queue.append((stamp_ns, msg))
            chosen = {}
            for other, q in self._queues.items():
                if not q:
                    return None
                best = min(q, key=lambda item: abs(item[0] - stamp_ns))
                chosen[other] = best
            stamps = [s for s, _ in chosen.values()]
            if max(stamps) - min(stamps) > self.slop_ns:
                return None
            for other, (s, _) in chosen.items():
                q = self._queues[other]
                while q and q[0][0] <= s:
                    q.popleft()
            return {k: m for k, (_, m) in chosen.items()}


#: nuScenes camera rate [Hz] and the default cross-camera slop derived from it. The slop is the
#: half-width of a set's window (every stamp within +-slop of the set's centre). nuScenes' six
#: cameras fire within ~43 ms of each other (they trigger as the 20 Hz LiDAR sweeps past them), so
#: the window must be wider than that; at 0.03 s (below half the 83.3 ms period) the 60 ms window
#: holds at most one frame per camera, and a set whose first cameras were lost reaches into the
#: next rig frame only when the first three cameras of a frame are all lost.
NUSCENES_CAMERA_HZ = 12.0
DEFAULT_SLOP_S = 0.03
#: Default per-camera tolerance between image, camera_info and depth stamps [s] (exact in bags
#: and from drivers; 1 ms absorbs drivers that stamp the info separately).
DEFAULT_TOLERANCE_S = 0.001
#: Default time after which a silent camera is left out of a set [s].
DEFAULT_TIMEOUT_S = 0.25


class SyncedSet:
    """One synchronised multi-camera set.

    Attributes:
        frames: camera -> {stream kind: message} for the cameras present.
        stamps: camera -> stamp of its frame [ns] (all its streams within the tolerance of it).
        missing: cameras left out (lost frame or silent past the timeout), in camera order.
        stamp_ns: the set's centre, midpoint of the earliest and latest camera stamp [ns].
    """

    __slots__ = ("frames", "stamps", "missing", "stamp_ns")

    def __init__(self, frames: dict, stamps: dict, missing: tuple) -> None:
        self.frames = frames
        self.stamps = stamps
        self.missing = missing
        self.stamp_ns = (min(stamps.values()) + max(stamps.values())) // 2

    def __repr__(self) -> str:
        return f"SyncedSet(cameras={list(self.frames)}, missing={list(self.missing)}, stamp_ns={self.stamp_ns})"


class MultiCameraSynchronizer:
    """Two-level synchroniser for camera rigs (ROS-free).

    Level 1, per camera: the image, camera_info (and depth, ...) of one frame are matched exactly or
    within ``tolerance_ns`` into a camera frame; a partial frame is dropped as soon as a newer
    frame of that camera completes (its missing message was lost: each stream is in order).

    Level 2, across cameras: a set is formed around the oldest pending camera frame ``p``: every
    camera contributes its earliest complete frame in ``[p, p + 2 * slop_ns]``, so every stamp of
    an emitted set lies within ``slop_ns`` of the set's centre. A camera without such a frame is
    left out (and named in :attr:`SyncedSet.missing`) once it is known not to come: the camera has
    already completed a later frame (this one was lost), it has been silent for ``timeout_ns``, or
    the newest stamp seen on any stream is ``timeout_ns`` past ``p``. Sets with fewer than
    ``min_cameras`` cameras are dropped (counted in :attr:`dropped`). A camera frame that completes
    after a set covering its stamp went out without that camera (a late frame: the timeout had
    passed) is discarded and counted in :attr:`late_frames`, so it never forms a second set at that
    stamp; with ``slop_ns`` below half the camera period a window never reaches a camera's next
    frame. (A camera that was in the set may resend the same stamp: that frame counts again.) Stamps
    going backwards on a stream (bag loop, replay restart) reset that camera.

    Time is stream time: the newest stamp seen; :meth:`poll` advances it from a clock (so the last
    set of a stream that stopped is still emitted).

    Args:
        cameras: camera names, in output order.
        kinds: stream kinds every camera frame needs, e.g. ``("image", "info", "depth")``.
        slop_ns: half-width of a set's window [ns] (default :data:`DEFAULT_SLOP_S`).
        tolerance_ns: max stamp difference between the streams of one camera frame [ns].
        timeout_ns: after this a missing camera is left out [ns]; None waits forever (every
            set then needs all cameras unless a later frame shows the camera's frame was lost).
        min_cameras: smallest set emitted (default 1).
        queue_size: complete frames kept per camera (older ones are dropped).

    Raises:
        ValueError: no cameras or kinds, a negative slop / tolerance / timeout, ``min_cameras``
            outside ``1..len(cameras)``, or ``2 * slop_ns`` not above ``tolerance_ns``.
    """

    def __init__(self, cameras: Iterable[Hashable], kinds: Iterable[Hashable],
                 slop_ns: int = int(DEFAULT_SLOP_S * 1e9), tolerance_ns: int = int(DEFAULT_TOLERANCE_S * 1e9),
                 timeout_ns: int | None = int(DEFAULT_TIMEOUT_S * 1e9), min_cameras: int = 1,
                 queue_size: int = 8) -> None:
        self.cameras = list(cameras)
        self.kinds = tuple(kinds)
        if not self.cameras or not self.kinds:
            raise ValueError("the synchroniser needs at least one camera and one stream kind")
        if slop_ns < 0 or tolerance_ns < 0 or (timeout_ns is not None and timeout_ns < 0):
            raise ValueError(f"slop {slop_ns}, tolerance {tolerance_ns} and timeout {timeout_ns} [ns] must be >= 0")
        if not 1 <= int(min_cameras) <= len(self.cameras):
            raise ValueError(f"min_cameras {min_cameras} outside 1..{len(self.cameras)}")
        self.slop_ns = int(slop_ns)
        self.tolerance_ns = int(tolerance_ns)
        self.timeout_ns = None if timeout_ns is None else int(timeout_ns)
        self.min_cameras = int(min_cameras)
        self.queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._partial: dict[Hashable, list] = {c: [] for c in self.cameras}  # [stamp, {kind: (stamp, msg)}]
        self._complete: dict[Hashable, deque] = {c: deque(maxlen=self.queue_size) for c in self.cameras}
        self._last_stream: dict[tuple, int] = {}
        self._last_seen: dict[Hashable, int] = {}
        self._newest_complete: dict[Hashable, int] = {}
        self._now = None
        self._start = None  # first stamp seen: a camera never heard from is silent from here
        # camera -> upper end [ns] of the window of the last set that went out without it
        self._missed_until: dict[Hashable, int] = {}
        #: Sets dropped for having fewer than ``min_cameras`` cameras.
        self.dropped = 0
        #: Camera frames discarded incomplete (a message of theirs never came).
        self.incomplete_frames = 0
        #: Complete camera frames discarded because a set covering their stamp was already emitted.
        self.late_frames = 0

    def add(self, camera: Hashable, kind: Hashable, stamp_ns: int, msg: Any) -> list[SyncedSet]:
        """Add one message; returns the sets it completes (oldest first, often empty).

        Raises:
            KeyError: unknown camera or kind.
        """
        if camera not in self._partial:
            raise KeyError(f"unknown camera {camera!r}; have {self.cameras}")
        if kind not in self.kinds:
            raise KeyError(f"unknown stream kind {kind!r}; have {self.kinds}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            last = self._last_stream.get((camera, kind))
            if last is not None and stamp_ns < last:
                self._reset_camera(camera)  # time went backwards on this stream: start over
            self._last_stream[(camera, kind)] = stamp_ns
            self._last_seen[camera] = max(self._last_seen.get(camera, stamp_ns), stamp_ns)
            self._now = stamp_ns if self._now is None or self._now < stamp_ns else self._now
            self._start = stamp_ns if self._start is None else self._start
            self._add_to_camera(camera, kind, stamp_ns, msg)
            return self._emit()

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Advance time to ``now_ns`` (e.g. the node clock) and return the sets that became due."""
        with self._lock:
            if self._now is None or now_ns > self._now:
                self._now = int(now_ns)
            if self._start is None:
                self._start = self._now
            return self._emit()

    @property
    def now_ns(self) -> int | None:
        """Stream time: the newest stamp seen (or polled) [ns]; None before the first message."""
        return self._now

    def silent_cameras(self, now_ns: int | None = None) -> list[Hashable]:
        """Cameras with no message within ``timeout_ns`` of ``now_ns`` (default: stream time)."""
        now = self._now if now_ns is None else now_ns
        if now is None or self.timeout_ns is None:
            return [c for c in self.cameras if c not in self._last_seen] if now is not None else []
        return [c for c in self.cameras if now - self._last_seen.get(c, self._start) > self.timeout_ns]

    def reset(self) -> None:
        """Forget every pending message (e.g. after a clock jump)."""
        with self._lock:
            for c in self.cameras:
                self._reset_camera(c)
            self._now = self._start = None

    # ------------------------------------------------------------------ internals

    def _reset_camera(self, camera) -> None:
        self._partial[camera].clear()
        self._complete[camera].clear()
        self._newest_complete.pop(camera, None)
        self._missed_until.pop(camera, None)
        self._last_seen.pop(camera, None)
        for key in [k for k in self._last_stream if k[0] == camera]:
            del self._last_stream[key]

    def _add_to_camera(self, camera, kind, stamp_ns, msg) -> None:
        groups = self._partial[camera]
        for i, group in enumerate(groups):
            if abs(group[0] - stamp_ns) <= self.tolerance_ns and kind not in group[1]:
                group[1][kind] = (stamp_ns, msg)
                if len(group[1]) == len(self.kinds):
                    # Complete: older partial frames can no longer complete (streams are in order).
                    self.incomplete_frames += i
                    del groups[: i + 1]
                    newest = self._newest_complete.get(camera)
                    if newest is None or group[0] >= newest:  # a resend of the same stamp counts again
                        self._complete[camera].append((group[0], {k: m for k, (_, m) in group[1].items()}))
                        self._newest_complete[camera] = group[0]
                return
        groups.append([stamp_ns, {kind: (stamp_ns, msg)}])
        if len(self.kinds) == 1:
            self._add_complete_single(camera)
        elif len(groups) > self.queue_size:
            del groups[0]
            self.incomplete_frames += 1

    def _add_complete_single(self, camera) -> None:
        stamp, parts = self._partial[camera].pop()
        self._complete[camera].append((stamp, {k: m for k, (_, m) in parts.items()}))
        self._newest_complete[camera] = stamp

    def _emit(self) -> list[SyncedSet]:
        out = []
        window = 2 * self.slop_ns
        while True:
            for cam, until in self._missed_until.items():
                q = self._complete[cam]
                while q and q[0][0] <= until:
                    q.popleft()
                    self.late_frames += 1
            heads = [q[0][0] for q in self._complete.values() if q]
            if not heads:
                return out
            p = min(heads)
            chosen, missing, waiting = {}, [], False
            for cam in self.cameras:
                q = self._complete[cam]
                frame = next((f for f in q if p <= f[0] <= p + window), None)
                if frame is not None:
                    chosen[cam] = frame
                    continue
                lost = self._newest_complete.get(cam, -(2**62)) > p + window
                silent = (self.timeout_ns is not None and self._now is not None
                          and self._now - self._last_seen.get(cam, self._start) > self.timeout_ns)
                late = self.timeout_ns is not None and self._now is not None and self._now - p > self.timeout_ns
                if lost or silent or late:
                    missing.append(cam)
                else:
                    waiting = True
            if waiting:
                return out
            for cam, (stamp, _) in chosen.items():
                q = self._complete[cam]
                while q and q[0][0] <= stamp:
                    q.popleft()
            for cam in missing:
                self._missed_until[cam] = p + window
            if len(chosen) >= self.min_cameras:
                out.append(SyncedSet({c: m for c, (_, m) in chosen.items()},
                                     {c: s for c, (s, _) in chosen.items()}, tuple(missing)))
            else:
                self.dropped += 1
