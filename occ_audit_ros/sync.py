"""Approximate-time synchronisation of N streams (ROS-free), like message_filters' ApproximateTime.

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
