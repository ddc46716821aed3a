"""Where a worker's consumer group may commit: the rule crash recovery rests on.

A partition's committed offset never passes the request of an operation that is not finished,
so a worker that restarts, or takes the partition over, re-reads that request and everything
after it (checkpoints, a cancel) and resumes the operation. Past everything else, including an
event parked as poison, the commit moves on: nothing behind it waits. A revoked partition is
forgotten, so a later owner's commits are never undone by ours.
"""

from __future__ import annotations


class CommitOrder:
    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        # op id -> (partition, offset of its request), while the operation is unfinished
        self._unfinished: dict[str, tuple[int, int]] = {}

    def consumed(self, partition: int, offset: int) -> None:
        """A message was consumed (folded, skipped or parked)."""
        self._next[partition] = offset + 1

    def unfinished(self, op_id: str, partition: int, request_offset: int) -> None:
        self._unfinished[op_id] = (partition, request_offset)

    def finished(self, op_id: str) -> None:
        self._unfinished.pop(op_id, None)

    def due(self) -> dict[int, int]:
        """The offsets to commit now: per partition, the oldest unfinished request, else
        everything consumed; only those that differ from the last commit."""
        offsets = {}
        for partition, next_offset in self._next.items():
            pending = [o for p, o in self._unfinished.values() if p == partition]
            offset = min(pending, default=next_offset)
            if self._committed.get(partition) != offset:
                offsets[partition] = offset
        return offsets

    def committed(self, offsets: dict[int, int]) -> None:
        self._committed.update(offsets)

    def behind_commit(self, partition: int, offset: int) -> bool:
        """True when the message at `offset` will never be read again by this group."""
        return offset < self._committed.get(partition, 0)

    def partitions(self) -> set[int]:
        return set(self._next) | {p for p, _ in self._unfinished.values()}

    def drop(self, partitions: set[int]) -> None:
        """Forget revoked partitions (and their operations): their new owner commits them."""
        for partition in partitions:
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
        for op_id, (partition, _) in list(self._unfinished.items()):
            if partition in partitions:
                del self._unfinished[op_id]
