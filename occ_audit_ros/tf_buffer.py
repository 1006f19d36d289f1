"""A small transform buffer over /tf and /tf_static for where tf2_ros is not importable (ROS-free).

tf2_ros is not available as a PyPI wheel; the node uses it when importable and this buffer
otherwise. Transforms form a tree (each child has one parent). Static transforms hold for all
time; dynamic ones are kept per edge in a time-sorted history and looked up by the nearest stamp
within ``tolerance_ns`` (no interpolation: nuScenes ego poses are stamped per sensor reading).
A missing or stale transform raises :class:`TransformUnavailable`; there is never a silent identity.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

import numpy as np

from occ_audit_ros.geometry import invert_transform


class TransformUnavailable(LookupError):
    """No transform chain between the frames at the requested time."""


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    matrices: list[np.ndarray] = field(default_factory=list)


class TransformBuffer:
    """Transform tree with history.

    Args:
        cache_ns: dynamic transforms older than the newest one on their edge by more than this are
            dropped [ns].
    """

    def __init__(self, cache_ns: int = 10_000_000_000) -> None:
        self._edges: dict[str, _Edge] = {}
        self._cache_ns = cache_ns
        self._lock = threading.Lock()

    def set_transform(self, parent: str, child: str, matrix: np.ndarray, stamp_ns: int, static: bool) -> None:
        """Add ``parent <- child`` (maps points in ``child`` to ``parent``): (4, 4) float64.

        A dynamic sample with a stamp already on the edge replaces it (a looped bag does not grow
        the buffer); samples older than ``cache_ns`` before the edge's newest are dropped.

        Raises:
            ValueError: on empty frame names, a frame that is its own parent, or a non-finite matrix.
        """
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} <- {child!r}")
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"transform {parent} <- {child} is not a finite 4x4 matrix")
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            if static:
                edge.stamps, edge.matrices = [0], [matrix]
                return
            i = bisect.bisect_left(edge.stamps, stamp_ns)
            if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                edge.matrices[i] = matrix  # same stamp again (bag loop, republished TF): replace, never grow
                return
            edge.stamps.insert(i, stamp_ns)
            edge.matrices.insert(i, matrix)
            cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self._cache_ns)
            del edge.stamps[:cut], edge.matrices[:cut]

    def _ancestors(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]`` (no time lookups).

        Raises:
            TransformUnavailable: when the parent links form a cycle.
        """
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > 64:
                raise TransformUnavailable(f"transform chain from {frame} is cyclic")
        return chain

    def _to_ancestor(self, frame: str, ancestor: str, stamp_ns: int, tolerance_ns: int) -> np.ndarray:
        """(4, 4) ``ancestor <- frame`` at ``stamp_ns``, multiplying only the edges in between."""
        matrix = np.eye(4)
        while frame != ancestor:
            edge = self._edges[frame]
            if edge.static:
                m = edge.matrices[0]
            else:
                i = bisect.bisect(edge.stamps, stamp_ns)
                candidates = [j for j in (i - 1, i) if 0 <= j < len(edge.stamps)]
                j = min(candidates, key=lambda j: abs(edge.stamps[j] - stamp_ns))
                if abs(edge.stamps[j] - stamp_ns) > tolerance_ns:
                    raise TransformUnavailable(
                        f"{edge.parent} <- {frame}: nearest transform is {abs(edge.stamps[j] - stamp_ns) / 1e9:.3f} s "
                        f"from the requested time (tolerance {tolerance_ns / 1e9:.3f} s)")
                m = edge.matrices[j]
            matrix = m @ matrix
            frame = edge.parent
        return matrix

    def lookup(self, target: str, source: str, stamp_ns: int = 0, tolerance_ns: int = 100_000_000) -> np.ndarray:
        """(4, 4) float64 transform mapping points in ``source`` to ``target`` at ``stamp_ns``.

        Only the edges between the two frames and their nearest common ancestor are used (like
        tf2): a stale ``map <- base_link`` does not block ``base_link <- camera``.

        Raises:
            TransformUnavailable: when the frames are not connected or a dynamic edge on the path
                has no sample within ``tolerance_ns`` of ``stamp_ns``.
        """
        if target == source:
            return np.eye(4)
        with self._lock:
            chain_s, chain_t = self._ancestors(source), self._ancestors(target)
            in_t = set(chain_t)
            common = next((f for f in chain_s if f in in_t), None)
            if common is None:
                raise TransformUnavailable(
                    f"no transform from {source!r} to {target!r}: they are in different trees "
                    f"(roots {chain_s[-1]!r} and {chain_t[-1]!r})")
            common_from_s = self._to_ancestor(source, common, stamp_ns, tolerance_ns)
            common_from_t = self._to_ancestor(target, common, stamp_ns, tolerance_ns)
        return invert_transform(common_from_t) @ common_from_s

    def frames(self) -> set[str]:
        """All frame names known to the buffer."""
        with self._lock:
            return set(self._edges) | {e.parent for e in self._edges.values()}
