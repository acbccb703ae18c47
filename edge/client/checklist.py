"""The ICE checklist: which pair to check next, and which pair wins (RFC 8445 §6.1.2-§8).

Sans-IO. The owner builds the pairs (:func:`edge.client.ice.pairs`), then
calls :meth:`Checklist.handle_timer` whenever :meth:`get_timer` says; each
call returns the checks to send now. It reports each check's fate with
:meth:`on_success` or :meth:`on_failure` (no answer after the retries is a
failure too, found by the timer). The checklist is over when a pair is
nominated (:attr:`nominated`) or every pair has failed (:attr:`failed`).

States (§6.1.2.6), as a table of what each event does to a pair::

    FROZEN  --unfreeze-->  WAITING  --sent-->  IN_PROGRESS  --answer--> SUCCEEDED
                                                            --no answer/error--> FAILED

* At the start, the best pair of each foundation is WAITING, the rest FROZEN.
* One new check every ``pacing`` seconds (Ta, §14.2: 50 ms), best WAITING pair
  first, else the best FROZEN one; an unanswered check is sent again after
  ``rto``, doubling, at most ``tries`` times.
* A success unfreezes the pairs of the same foundation (§7.2.5.3.3): they
  will likely work too.
* Nomination (regular, §8.1.1, by the controlling side): a succeeded pair is
  nominated once every pair of higher priority has failed — or, after
  ``patience`` seconds from the first success, the best succeeded pair, so a
  call is never held hostage by a silent better path.
* Going on after nomination (:meth:`keep_checking_better`): the pairs better
  than the nominated one are still checked, and the first of them to succeed
  becomes :attr:`nominated` in its place (and a better one after it, again).
  A call then starts on the first pair that works and moves up when a better
  one answers, rather than waiting ``patience`` for pairs that may never do.
* Triggered checks (§7.3.1.4): when the peer's check arrives on a pair that
  has not succeeded yet (:meth:`trigger`), or on a pair first learned from
  that check (:meth:`add`, a peer-reflexive remote end), the pair is checked
  next, ahead of the ordinary order; a failed pair gets its tries again. The
  peer's check has just opened its NAT towards us, so ours now gets through.

Pairs keep the index they were given (the owner maps pairs to indexes); the
order of checking and nominating is by pair priority, whatever the index.
"""

from dataclasses import dataclass
from enum import Enum, auto

from edge.client.ice import Pair
from edge.errors import LocalError


class PairState(Enum):
    FROZEN = auto()
    WAITING = auto()
    IN_PROGRESS = auto()
    SUCCEEDED = auto()
    FAILED = auto()


@dataclass(frozen=True)
class Check:
    """Send a connectivity check for ``pair`` (its ``index`` in the checklist)."""

    index: int
    pair: Pair
    attempt: int


@dataclass
class _Entry:
    pair: Pair
    state: PairState
    tries: int = 0
    due: float | None = None
    rto: float = 0.0


class Checklist:
    """The checks of one call, best pair first."""

    def __init__(
        self,
        pairs: list[Pair],
        now: float,
        *,
        pacing: float = 0.05,
        rto: float = 0.5,
        tries: int = 4,
        patience: float = 0.5,
    ) -> None:
        if not pairs:
            raise LocalError("a checklist needs at least one pair")
        self._entries = [_Entry(pair, PairState.FROZEN) for pair in pairs]
        self._ranked = list(range(len(pairs)))
        self._rank()
        self._triggered: list[int] = []
        self._pacing, self._rto, self._tries, self._patience = pacing, rto, tries, patience
        self._next_new = now
        self._first_success: float | None = None
        self.nominated: Pair | None = None
        self._upgrading = False
        self._unfreeze_first_of_each_foundation()

    @property
    def failed(self) -> bool:
        return all(entry.state is PairState.FAILED for entry in self._entries)

    @property
    def done(self) -> bool:
        """Nothing more to check: every pair failed, or one is nominated and no better
        one is still being checked."""
        if self.failed:
            return True
        if self.nominated is None:
            return False
        return not self._upgrading or not any(
            self._open(entry) for entry in self._entries if self._better(entry)
        )

    def keep_checking_better(self) -> None:
        """Once a pair is nominated, go on checking the better ones; the first to succeed
        is nominated instead. Worse pairs are no longer checked."""
        self._upgrading = True
        self._triggered = [i for i in self._triggered if self._better(self._entries[i])]
        for entry in self._entries:
            if entry.due is not None and not self._better(entry):
                entry.due = None

    def state(self, index: int) -> PairState:
        return self._entries[index].state

    def get_timer(self) -> float | None:
        if self.done:
            return None
        times = [entry.due for entry in self._entries if entry.due is not None]
        if self._triggered or self._next_pair() is not None:
            times.append(self._next_new)
        if self._first_success is not None and self.nominated is None:
            times.append(self._first_success + self._patience)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Check]:
        """The checks to send now (new and repeated); may nominate or fail the list."""
        if self.done:
            return []
        checks = self._repeats(now)
        if now >= self._next_new:
            index = self._triggered.pop(0) if self._triggered else self._next_pair()
            if index is not None:
                checks.append(self._send(index, now))
                self._next_new = now + self._pacing
        self._try_nominate(now)
        return checks

    def add(self, pair: Pair) -> int:
        """A pair learned from the peer's check (a peer-reflexive remote end): checked
        next, as a triggered check. Its index."""
        self._entries.append(_Entry(pair, PairState.WAITING))
        index = len(self._entries) - 1
        self._ranked.append(index)
        self._rank()
        self._triggered.append(index)
        return index

    def trigger(self, index: int) -> None:
        """The peer's check arrived on this pair: check it next, unless it already
        succeeded or is being checked (§7.3.1.4)."""
        entry = self._entries[index]
        busy = entry.state in (PairState.SUCCEEDED, PairState.IN_PROGRESS)
        if busy or (self.nominated is not None and not self._better(entry)):
            return
        entry.state = PairState.WAITING
        if index not in self._triggered:
            self._triggered.append(index)

    def on_success(self, index: int, now: float) -> None:
        entry = self._entries[index]
        if entry.state is not PairState.IN_PROGRESS:
            return  # a late answer to a check already given up, or a duplicate
        entry.state, entry.due = PairState.SUCCEEDED, None
        if self._first_success is None:
            self._first_success = now
        for other in self._entries:
            if (
                other.state is PairState.FROZEN
                and other.pair.local.foundation == entry.pair.local.foundation
            ):
                other.state = PairState.WAITING
        self._try_nominate(now)

    def on_failure(self, index: int, now: float) -> None:
        entry = self._entries[index]
        if entry.state in (PairState.IN_PROGRESS, PairState.WAITING, PairState.FROZEN):
            entry.state, entry.due = PairState.FAILED, None
        self._try_nominate(now)

    # -- helpers -------------------------------------------------------------------

    def _unfreeze_first_of_each_foundation(self) -> None:
        seen: set[tuple[int, int]] = set()
        for entry in self._entries:
            key = _foundation(entry)
            if key not in seen:
                seen.add(key)
                entry.state = PairState.WAITING

    def _rank(self) -> None:
        self._ranked.sort(key=lambda index: -self._entries[index].pair.priority)

    def _next_pair(self) -> int | None:
        for wanted in (PairState.WAITING, PairState.FROZEN):
            for index in self._ranked:
                entry = self._entries[index]
                if entry.state is wanted and (self.nominated is None or self._better(entry)):
                    return index
        return None

    def _better(self, entry: _Entry) -> bool:
        """Ranked above the nominated pair (which must exist)."""
        assert self.nominated is not None
        return entry.pair.priority > self.nominated.priority

    @staticmethod
    def _open(entry: _Entry) -> bool:
        return entry.state not in (PairState.SUCCEEDED, PairState.FAILED)

    def _send(self, index: int, now: float) -> Check:
        entry = self._entries[index]
        entry.state, entry.tries, entry.rto = PairState.IN_PROGRESS, 1, self._rto
        entry.due = now + entry.rto
        return Check(index, entry.pair, 1)

    def _repeats(self, now: float) -> list[Check]:
        checks = []
        for index, entry in enumerate(self._entries):
            if entry.due is None or entry.due > now:
                continue
            if entry.tries >= self._tries:
                entry.state, entry.due = PairState.FAILED, None
                continue
            entry.tries += 1
            entry.rto *= 2
            entry.due = now + entry.rto
            checks.append(Check(index, entry.pair, entry.tries))
        return checks

    def _try_nominate(self, now: float) -> None:
        if self.nominated is not None:
            if self._upgrading:
                better = [e for e in self._entries if self._better(e)]
                won = [e for e in better if e.state is PairState.SUCCEEDED]
                if won:
                    self.nominated = max(won, key=lambda e: e.pair.priority).pair
            return
        for entry in (self._entries[index] for index in self._ranked):  # best first
            if entry.state is PairState.SUCCEEDED:
                self.nominated = entry.pair
                return
            if entry.state is not PairState.FAILED:
                break
        patient = self._first_success is not None and now >= self._first_success + self._patience
        if patient:
            ranked = (self._entries[index] for index in self._ranked)
            best = next(e for e in ranked if e.state is PairState.SUCCEEDED)
            self.nominated = best.pair


def _foundation(entry: _Entry) -> tuple[int, int]:
    """A pair's foundation is its two candidates' foundations together (§6.1.2.6)."""
    return entry.pair.local.foundation, entry.pair.remote.foundation
