"""`Takeover`: the first messages of a partition a replica has just been pinned to, held
until what the previous holder left unacknowledged has come again, then handed on in
stream order.

A replica that crashed leaves the messages it was delivered but had not acknowledged;
JetStream delivers them again only once their ack wait runs out, by which time the new
holder has been given newer messages. Handed on as they come, the old ones would be
behind the machine's window and rejected as late: readings lost. Held and sorted by their
stream sequence, every reading reaches the windows in the order it was published.

>>> t = Takeover(foreign=2, until=10.0)
>>> t.hold(5, "new-5", again=False); t.hold(2, "again-2", again=True); t.done(now=1.0)
False
>>> t.hold(3, "again-3", again=True); t.done(now=1.0), t.release()
(True, ['again-2', 'again-3', 'new-5'])
"""

from __future__ import annotations

from typing import Generic, TypeVar

M = TypeVar("M")


class Takeover(Generic[M]):
    def __init__(self, foreign: int, until: float) -> None:
        self.foreign = foreign  # delivered to another holder and not acknowledged by it
        self.until = until  # when to hand on regardless (monotonic): an ack wait and more
        self._held: list[tuple[int, int, M]] = []
        self._count = 0
        self._again = 0

    def hold(self, sequence: int, message: M, again: bool) -> None:
        """Holds a message; `again` when JetStream delivered it before (to anyone)."""
        self._held.append((sequence, self._count, message))
        self._count += 1
        self._again += again

    def messages(self) -> list[M]:
        return [message for _, _, message in self._held]

    def __len__(self) -> int:
        return len(self._held)

    def done(self, now: float) -> bool:
        """What the previous holder left has come again, or time is up."""
        return self._again >= self.foreign or now >= self.until

    def release(self) -> list[M]:
        """The held messages in stream order; the takeover holds nothing after."""
        held, self._held = self._held, []
        return [message for _, _, message in sorted(held)]
