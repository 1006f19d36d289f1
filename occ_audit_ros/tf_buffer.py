"""A small transform buffer over /tf and /tf_static for where tf2_ros is not importable (ROS-free).

tf2_ros is not available as a PyPI wheel; the node uses it when importable and this buffer
otherwise, and asks both the same way (:func:`tolerant_lookup`), so they give the same answer:

* **tf2 semantics.** Transforms form a tree (each child has one parent). Static transforms hold for
  all time; dynamic ones are kept per edge in a time-sorted history. A lookup at time ``t`` uses
  only the edges between the two frames and their nearest common ancestor; on each dynamic edge
  the two samples around ``t`` are interpolated (translation linearly, rotation by spherical linear
  interpolation, as tf2's ``TimeCache``). ``t = 0`` is the latest time at which every dynamic edge
  of the path has data (tf2's "latest common time").
* **Tolerance.** ``t`` past the newest sample of the path by at most ``tolerance_ns`` gives the
  transform at that newest (latest common) time; further past it, or before the oldest sample, is
  an extrapolation error (:class:`ExtrapolationError`). tf2 has no tolerance: the node asks tf2_ros
  for the latest common time after its ``ExtrapolationException`` and applies the same rule.
* **Timeout.** A lookup may wait up to ``timeout_ns`` for the data it needs to arrive (tf2's
  ``lookup_transform(..., timeout)``), then applies the tolerance.

The graph is guarded (:class:`FrameGraph`): an edge that would close a cycle, a dynamic edge for a
frame whose parent is static (re-parenting it, or replacing the static edge), and a new frame
beyond ``max_frames`` are refused
(:class:`TransformRefused`). A dynamic edge whose newest sample is more than ``cache_ns`` older than
the newest dynamic sample of the buffer ages out, so a refusal caused by a stale edge ends by
itself; a re-sent static transform replaces a dynamic edge of the same child. A missing or stale
transform raises :class:`TransformUnavailable`; there is never a silent identity.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from occ_audit_ros.geometry import invert_transform

__all__ = ["TransformUnavailable", "ExtrapolationError", "TransformRefused", "FrameGraph", "TransformBuffer",
           "tolerant_lookup", "interpolate_transform"]


class TransformUnavailable(LookupError):
    """No transform chain between the frames at the requested time."""


class ExtrapolationError(TransformUnavailable):
    """The requested time lies outside the data of a dynamic edge on the path (tf2's
    ``ExtrapolationException``)."""


class TransformRefused(ValueError):
    """An edge the buffer does not accept: it would close a cycle, re-parent a frame with a static
    parent, or add a frame beyond the cap.

    Attributes:
        first: True for the first refusal of this ``parent <- child`` edge since the buffer last
            accepted it (the node logs only those; later ones are counted).
    """

    def __init__(self, message: str, first: bool = True) -> None:
        super().__init__(message)
        self.first = first


def interpolate_transform(m0: np.ndarray, m1: np.ndarray, w: float) -> np.ndarray:
    """(4, 4) float64 rigid transform ``w`` of the way from ``m0`` to ``m1`` (``w`` in [0, 1]).

    Translation is linear, rotation the shortest-path spherical linear interpolation of the two
    rotations (tf2 ``TimeCache::interpolate``: ``lerp`` of the origins, ``slerp`` of the quaternions).
    ``w = 0`` and ``w = 1`` return copies of ``m0`` and ``m1`` exactly.
    """
    if w <= 0.0:
        return np.array(m0, dtype=np.float64)
    if w >= 1.0:
        return np.array(m1, dtype=np.float64)
    r0, r1 = Rotation.from_matrix(m0[:3, :3]), Rotation.from_matrix(m1[:3, :3])
    out = np.eye(4)
    out[:3, :3] = (r0 * Rotation.from_rotvec(w * (r0.inv() * r1).as_rotvec())).as_matrix()
    out[:3, 3] = (1.0 - w) * m0[:3, 3] + w * m1[:3, 3]
    return out


def tolerant_lookup(lookup_at: Callable[[int, int], np.ndarray], latest_common_ns: Callable[[], int],
                    stamp_ns: int, tolerance_ns: int, timeout_ns: int, what: str = "") -> np.ndarray:
    """The lookup rule both transform backends follow (tf2_ros in the node, :class:`TransformBuffer`).

    Args:
        lookup_at: ``(stamp_ns, timeout_ns) -> (4, 4)`` tf2-style lookup at exactly that time
            (interpolating), waiting up to ``timeout_ns`` for data; raises :class:`ExtrapolationError`
            when the time is outside the data, :class:`TransformUnavailable` otherwise.
        latest_common_ns: ``() -> int``: the latest time at which the whole path has data [ns].
        stamp_ns: requested time [ns]; 0 = the latest common time.
        tolerance_ns: how far past the latest common time a request may be and still get the
            transform at that time [ns].
        timeout_ns: bounded wait for data [ns] (0 = none).
        what: ``"target <- source"`` for messages.

    Returns:
        (4, 4) float64 ``target <- source``.

    Raises:
        TransformUnavailable: not connected, before the oldest data, or more than ``tolerance_ns``
            past the newest (an :class:`ExtrapolationError` then).
    """
    try:
        return lookup_at(stamp_ns, timeout_ns)
    except ExtrapolationError as err:
        latest = latest_common_ns()
        if stamp_ns <= latest:
            raise
        late = stamp_ns - latest
        if late <= tolerance_ns:
            return lookup_at(latest, 0)
        raise ExtrapolationError(
            f"{what}: requested time {stamp_ns / 1e9:.3f} is {late / 1e9:.3f} s past the newest transform "
            f"({latest / 1e9:.3f}; tolerance {tolerance_ns / 1e9:.3f} s)") from err


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    matrices: list[np.ndarray] = field(default_factory=list)


def checked_edge(parent: str, child: str, matrix) -> np.ndarray:
    """``matrix`` as a (4, 4) float64 array for the edge ``parent <- child``, checked for both TF paths.

    Raises:
        ValueError: an empty frame name, a frame that is its own parent, or not a finite 4x4 matrix.
    """
    if not parent or not child or parent == child:
        raise ValueError(f"invalid transform {parent!r} <- {child!r}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"transform {parent} <- {child} is not a finite 4x4 matrix")
    return matrix


class FrameGraph:
    """Which ``parent <- child`` edges to admit into a transform tree (both transform backends).

    Keeps, per child, its parent, whether the edge is static and the newest stamp of a dynamic
    edge. :meth:`admit` refuses an edge that would close a cycle, a dynamic edge that would
    replace the static parent of a frame, and a new frame beyond ``max_frames``; dynamic edges more
    than ``cache_ns`` older than the newest accepted dynamic stamp are forgotten first (aged out).
    Not thread-safe: the caller locks.

    Args:
        cache_ns: age [ns] after which a dynamic edge without new samples is forgotten.
        max_frames: most frames (children and roots) kept.
    """

    def __init__(self, cache_ns: int = 10_000_000_000, max_frames: int = 1000) -> None:
        self.parent: dict[str, str] = {}
        self.static: dict[str, bool] = {}
        self.newest: dict[str, int] = {}  # child -> newest stamp of its dynamic edge [ns]
        self.cache_ns = int(cache_ns)
        self.max_frames = int(max_frames)
        self.newest_dynamic_ns: int | None = None
        self._refused: set[tuple[str, str]] = set()

    def frames(self) -> set[str]:
        """All frame names of the graph."""
        return set(self.parent) | set(self.parent.values())

    def ancestors(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]`` (acyclic by construction)."""
        chain = [frame]
        while chain[-1] in self.parent:
            chain.append(self.parent[chain[-1]])
        return chain

    def expire(self) -> list[str]:
        """Forget the dynamic edges that aged out; returns their children."""
        if self.newest_dynamic_ns is None:
            return []
        cut = self.newest_dynamic_ns - self.cache_ns
        gone = [c for c, s in self.newest.items() if s < cut]
        for child in gone:
            self.remove(child)
        return gone

    def remove(self, child: str) -> None:
        """Forget the edge of ``child``."""
        self.parent.pop(child, None)
        self.static.pop(child, None)
        self.newest.pop(child, None)

    def admit(self, parent: str, child: str, stamp_ns: int, static: bool) -> bool:
        """Record ``parent <- child`` if acceptable; True when the edge is new or its parent or kind changed.

        Raises:
            TransformRefused: a cycle, a dynamic edge for a frame whose parent is static, or a
                frame beyond ``max_frames`` (``first`` set on the first refusal of that edge).
        """
        self.expire()
        reason = None
        old_parent = self.parent.get(child)
        if old_parent is not None and self.static[child] and not static:
            reason = (f"{child!r} has the static parent {old_parent!r}; a dynamic transform from {parent!r} "
                      "would replace it (re-send /tf_static to change the tree)")
        elif child in self.ancestors(parent):
            reason = f"{parent!r} <- {child!r} would close a cycle ({' -> '.join(self.ancestors(parent))})"
        else:
            new = {f for f in (parent, child) if f not in self.frames()}
            if new and len(self.frames()) + len(new) > self.max_frames:
                reason = f"more than {self.max_frames} frames (the cap of the transform buffer)"
        if reason is not None:
            key = (parent, child)
            first = key not in self._refused
            if first:
                if len(self._refused) >= self.max_frames:
                    self._refused.clear()
                self._refused.add(key)
            raise TransformRefused(f"refusing transform {parent} <- {child}: {reason}", first)
        self._refused.discard((parent, child))
        changed = old_parent != parent or self.static.get(child) != static
        self.parent[child], self.static[child] = parent, static
        if not static and (self.newest_dynamic_ns is None or stamp_ns > self.newest_dynamic_ns):
            self.newest_dynamic_ns = stamp_ns
        if static:
            self.newest.pop(child, None)
        else:
            self.newest[child] = max(self.newest.get(child, stamp_ns), stamp_ns) if not changed else stamp_ns
        return changed


class TransformBuffer:
    """Transform tree with history, tf2 lookup semantics (module docstring) and a guarded graph.

    Args:
        cache_ns: dynamic samples older than the newest one on their edge by more than this are
            dropped, and a dynamic edge this much older than the newest dynamic sample is forgotten [ns].
        max_frames: most frames kept (:class:`FrameGraph`).
    """

    def __init__(self, cache_ns: int = 10_000_000_000, max_frames: int = 1000) -> None:
        self._edges: dict[str, _Edge] = {}
        self._cache_ns = cache_ns
        self.graph = FrameGraph(cache_ns, max_frames)
        self._lock = threading.Condition()

    def set_transform(self, parent: str, child: str, matrix: np.ndarray, stamp_ns: int, static: bool) -> None:
        """Add ``parent <- child`` (maps points in ``child`` to ``parent``): (4, 4) float64.

        A dynamic sample with a stamp already on the edge replaces it (a looped bag does not grow
        the buffer); samples older than ``cache_ns`` before the edge's newest are dropped. A static
        transform replaces the edge of ``child`` whatever it was.

        Raises:
            ValueError: on empty frame names, a frame that is its own parent, or a non-finite matrix.
            TransformRefused: the edge would close a cycle, re-parent a frame that has a static
                parent with a dynamic transform, or exceed ``max_frames`` (the buffer is unchanged).
        """
        matrix = checked_edge(parent, child, matrix)
        with self._lock:
            before = set(self.graph.parent)
            try:
                self.graph.admit(parent, child, int(stamp_ns), static)
            finally:
                for gone in before - set(self.graph.parent):  # aged out
                    self._edges.pop(gone, None)
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            if static:
                edge.stamps, edge.matrices = [0], [matrix]
            else:
                i = bisect.bisect_left(edge.stamps, stamp_ns)
                if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                    edge.matrices[i] = matrix  # same stamp again (bag loop, republished TF): replace, never grow
                else:
                    edge.stamps.insert(i, stamp_ns)
                    edge.matrices.insert(i, matrix)
                    cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self._cache_ns)
                    del edge.stamps[:cut], edge.matrices[:cut]
            self._lock.notify_all()

    def _path(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Frames from ``source`` and from ``target`` up to (excluding) their nearest common ancestor."""
        chain_s, chain_t = self.graph.ancestors(source), self.graph.ancestors(target)
        in_t = set(chain_t)
        common = next((f for f in chain_s if f in in_t), None)
        if common is None:
            raise TransformUnavailable(
                f"no transform from {source!r} to {target!r}: they are in different trees "
                f"(roots {chain_s[-1]!r} and {chain_t[-1]!r})")
        return chain_s[:chain_s.index(common)], chain_t[:chain_t.index(common)]

    def _latest_common_ns(self, target: str, source: str) -> int:
        """Latest time at which every dynamic edge between the frames has data (0: all static)."""
        up_s, up_t = self._path(target, source)
        newest = [self._edges[f].stamps[-1] for f in up_s + up_t if not self._edges[f].static]
        return min(newest) if newest else 0

    def _edge_at(self, frame: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[frame]
        if edge.static:
            return edge.matrices[0]
        stamps = edge.stamps
        if not stamps[0] <= stamp_ns <= stamps[-1]:
            side = "future" if stamp_ns > stamps[-1] else "past"
            raise ExtrapolationError(
                f"{edge.parent} <- {frame}: requested time {stamp_ns / 1e9:.3f} would need extrapolation into "
                f"the {side} (data from {stamps[0] / 1e9:.3f} to {stamps[-1] / 1e9:.3f})")
        i = bisect.bisect_left(stamps, stamp_ns)
        if stamps[i] == stamp_ns:
            return edge.matrices[i]
        w = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        return interpolate_transform(edge.matrices[i - 1], edge.matrices[i], w)

    def _lookup_exact(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        up_s, up_t = self._path(target, source)
        if stamp_ns == 0:
            stamp_ns = self._latest_common_ns(target, source)
        common_from = []
        for chain in (up_s, up_t):
            m = np.eye(4)
            for frame in chain:
                m = self._edge_at(frame, stamp_ns) @ m
            common_from.append(m)
        return invert_transform(common_from[1]) @ common_from[0]

    def lookup_at(self, target: str, source: str, stamp_ns: int, timeout_ns: int = 0) -> np.ndarray:
        """tf2's ``lookup_transform(target, source, time, timeout)``: (4, 4) float64 at exactly
        ``stamp_ns`` (interpolated; 0 = latest common time), waiting up to ``timeout_ns`` for data.

        Raises:
            ExtrapolationError: the time lies outside the data of an edge on the path.
            TransformUnavailable: the frames are not connected.
        """
        if target == source:
            return np.eye(4)
        deadline = time.monotonic() + max(timeout_ns, 0) / 1e9
        with self._lock:
            while True:
                try:
                    return self._lookup_exact(target, source, stamp_ns)
                except TransformUnavailable:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._lock.wait(remaining)  # woken by set_transform

    def latest_common_ns(self, target: str, source: str) -> int:
        """Latest time [ns] at which every dynamic edge between the frames has data (0: all static).

        Raises:
            TransformUnavailable: the frames are not connected.
        """
        with self._lock:
            return self._latest_common_ns(target, source) if target != source else 0

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 100_000_000,
               timeout_ns: int = 0) -> np.ndarray:
        """(4, 4) float64 transform mapping points in ``source`` to ``target`` at ``stamp_ns``
        (:func:`tolerant_lookup` over :meth:`lookup_at`; module docstring).

        Only the edges between the two frames and their nearest common ancestor are used (like
        tf2): a stale ``map <- base_link`` does not block ``base_link <- camera``.

        Raises:
            TransformUnavailable: when the frames are not connected, or (:class:`ExtrapolationError`)
                the time is before a path edge's oldest sample or more than ``tolerance_ns`` past
                the latest common time.
        """
        return tolerant_lookup(lambda t, wait: self.lookup_at(target, source, t, wait),
                               lambda: self.latest_common_ns(target, source), int(stamp_ns), int(tolerance_ns),
                               int(timeout_ns), f"{target} <- {source}")

    def frames(self) -> set[str]:
        """All frame names known to the buffer."""
        with self._lock:
            return self.graph.frames()
