"""The waiting queue of a replica: first come, first served (vLLM's default policy).

A preempted request goes back to the head, to be recomputed before any
newer one is admitted. A deque subclass, so the scheduler's hot loop keeps
C-speed ``[0]``/``popleft``; other policies (priority, shortest-first) would
be queues of their own with the same doors.
"""

from __future__ import annotations

from collections import deque


class FCFSQueue(deque):
    """Waiting requests in arrival order; ``put_back`` returns a preempted one to the head."""

    __slots__ = ()

    add = deque.append
    put_back = deque.appendleft
