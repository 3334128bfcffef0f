"""Subscriptions: readers of the delta log, each at its own cursor.

A subscriber holds no buffer of its own: it reads the shared, bounded delta log from its
cursor (``READ_BATCH`` at a time) and gRPC's flow control paces it, so a slow reader costs no
memory; one that falls behind the log's retention ends with OUT_OF_RANGE (SequenceTooOld) and
resumes from a re-read of the members. ``max_subscribers`` bounds how many may read at once.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.errors import Overloaded, SequenceTooOld
from engine.server._sequencer import Sequencer

READ_BATCH = 4096            # deltas read from the log per subscriber wake-up
ENCODED_PAGES = 512          # pages kept encoded for the wire, shared by equal subscribers


class Page:
    """The deltas one subscriber reads at one wake-up, as positions in the log's chunks (no
    object per delta unless iterated). ``key`` names its content exactly (the log is
    append-only): every subscriber with the same segments at the same cursor reads the same
    page, so it is encoded for the wire once (:meth:`Subscriptions.encoded`)."""

    __slots__ = ("log", "parts", "key", "n")

    def __init__(self, log, parts: list, key: tuple):
        self.log, self.parts, self.key = log, parts, key
        self.n = sum(len(rows) for _, _, rows in parts)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        """The page's ``Delta`` objects (shared with every other reader of the chunk)."""
        for first, batch, rows in self.parts:
            objs = self.log._objects_of(batch, first)
            if isinstance(rows, range):
                yield from objs[rows.start:rows.stop]
            else:
                for j in rows:
                    yield objs[j]

    @property
    def last_sequence(self) -> int:
        first, _, rows = self.parts[-1]
        return first + rows[-1]


class TooManySubscribers(Overloaded):
    """Refused: the server has ``max_subscribers`` subscriptions open (RESOURCE_EXHAUSTED)."""


class Subscriptions:
    def __init__(self, sequencer: Sequencer, max_subscribers: int):
        self.seq = sequencer
        self.max_subscribers = max_subscribers
        self.count = 0
        self._encoded: OrderedDict = OrderedDict()
        self._cursors: dict[int, int] = {}    # per open subscription: the last sequence read

    def lag(self) -> tuple[int, int]:
        """(the largest, the sum of) deltas sequenced that open subscriptions have not read
        yet (of their segments or not)."""
        last = self.seq.log.last_sequence
        lags = [max(0, last - c) for c in self._cursors.values()]
        return (max(lags), sum(lags)) if lags else (0, 0)

    def encoded(self, page: Page, encode) -> bytes:
        """``encode(page)`` once for every subscriber that reads this same page."""
        data = self._encoded.get(page.key)
        if data is None:
            data = self._encoded[page.key] = encode(page)
            if len(self._encoded) > ENCODED_PAGES:
                self._encoded.popitem(last=False)
        return data

    def open(self, segments: list[str], after_sequence: int, from_oldest: bool = False,
             retained_only: bool = False):
        """-> (start, async iterator of lists of engine Deltas with sequence > start).

        First the retained deltas after ``after_sequence`` (when > 0; with 0, live ones only,
        or every retained one with ``from_oldest``), then live ones (none with
        ``retained_only``). Raises SequenceTooOld when the start, or later a slow reader's
        position, is no longer retained."""
        log = self.seq.log
        last = log.last_sequence
        if after_sequence > last and retained_only:
            return after_sequence, self._follow(None, after_sequence, after_sequence)
        if after_sequence > last:
            raise SequenceTooOld(
                f"after_sequence {after_sequence} is ahead of the delta log (newest is {last}); "
                "the server's delta log was reset: re-read the members and subscribe with 0")
        if self.count >= self.max_subscribers:
            raise TooManySubscribers(
                f"the server has {self.count} subscriptions open (max_subscribers "
                f"{self.max_subscribers}); close one or serve with a larger --max-subscribers")
        if after_sequence == 0:
            start = log.first_retained - 1 if from_oldest else last
        else:
            start = after_sequence
            if after_sequence < last:
                log.read(after_sequence, None, limit=1)   # raises SequenceTooOld
        stop_at = last if retained_only else None
        return start, self._follow(set(segments) or None, start, stop_at)

    async def _follow(self, wanted, cursor: int, stop_at: int | None):
        self.count += 1
        seq = self.seq
        epoch = seq.epoch
        wanted_key = frozenset(wanted) if wanted else None
        me = object()
        self._cursors[id(me)] = cursor
        try:
            while not seq.closed:
                if epoch != seq.epoch:
                    raise SequenceTooOld("the server was reset: its delta log starts again at 1")
                log = seq.log
                last = log.last_sequence
                if stop_at is not None:
                    if cursor >= stop_at:
                        return
                    last = min(last, stop_at)
                if cursor >= last:
                    await seq.wait_beyond(cursor, epoch)
                    continue
                start = cursor
                parts = log.read_parts(cursor, wanted, READ_BATCH, upto=last)
                page = Page(log, parts, ()) if parts else None
                cursor = page.last_sequence if page is not None and len(page) >= READ_BATCH else last
                self._cursors[id(me)] = cursor
                if page is not None:
                    page.key = (epoch, wanted_key, start, page.last_sequence)
                    yield page
        finally:
            self.count -= 1
            self._cursors.pop(id(me), None)
