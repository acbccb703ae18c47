"""Buddy-list transitions, as a table: what one operation does to both sides.

Every relationship is two entries, one in each user's list: Alice's entry for
Bob and Bob's entry for Alice. An operation by Alice about Bob looks at both
and writes both, in one transaction of the store. ``None`` means "no entry";
REMOVED is kept as a tombstone so that delta sync can tell a device that an
entry went away.

Skype's model: a request waits until the other side accepts or denies; a
block is silent (the blocked side never learns it, and its requests vanish).
"""

from edge.login.errors import NotAllowed
from edge.wire.messages import BuddyOp, BuddyState

Entry = BuddyState | None
Pair = tuple[Entry, Entry]
"""(the actor's entry for the other, the other's entry for the actor)."""

P_OUT, P_IN, OK, BLOCKED, GONE = (
    BuddyState.PENDING_OUT,
    BuddyState.PENDING_IN,
    BuddyState.ACCEPTED,
    BuddyState.BLOCKED,
    BuddyState.REMOVED,
)


def transition(op: BuddyOp, mine: Entry, theirs: Entry) -> Pair:
    """The new (mine, theirs) after ``op``; raises NotAllowed when it makes no sense."""
    if mine is BLOCKED and op not in (BuddyOp.UNBLOCK, BuddyOp.BLOCK):
        raise NotAllowed(f"{op.name}: unblock this user first")
    handler = _TABLE[op]
    return handler(mine, theirs)


def _add(mine: Entry, theirs: Entry) -> Pair:
    if mine is OK:
        raise NotAllowed("ADD_REQUEST: already buddies")
    if theirs is BLOCKED:
        # Silent: the requester sees its request pending forever.
        return P_OUT, BLOCKED
    if theirs is P_OUT:
        # Both asked: that is an acceptance.
        return OK, OK
    return P_OUT, P_IN


def _accept(mine: Entry, theirs: Entry) -> Pair:
    if mine is not P_IN:
        raise NotAllowed("ACCEPT: no request from this user is pending")
    return OK, OK


def _deny(mine: Entry, theirs: Entry) -> Pair:
    if mine is not P_IN:
        raise NotAllowed("DENY: no request from this user is pending")
    return GONE, GONE


def _remove(mine: Entry, theirs: Entry) -> Pair:
    if mine in (None, GONE):
        raise NotAllowed("REMOVE: not in the buddy list")
    return GONE, (theirs if theirs is BLOCKED else _gone_if_present(theirs))


def _block(mine: Entry, theirs: Entry) -> Pair:
    return BLOCKED, (theirs if theirs is BLOCKED else _gone_if_present(theirs))


def _unblock(mine: Entry, theirs: Entry) -> Pair:
    if mine is not BLOCKED:
        raise NotAllowed("UNBLOCK: this user is not blocked")
    return GONE, theirs


def _gone_if_present(entry: Entry) -> Entry:
    return None if entry is None else GONE


_TABLE = {
    BuddyOp.ADD_REQUEST: _add,
    BuddyOp.ACCEPT: _accept,
    BuddyOp.DENY: _deny,
    BuddyOp.REMOVE: _remove,
    BuddyOp.BLOCK: _block,
    BuddyOp.UNBLOCK: _unblock,
}
