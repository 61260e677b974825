"""The host's lock manager: POSIX record locks and BSD flock locks shared by every guest.

Sans-IO and thread-safe (one internal mutex).  The host keeps all guests' locks here, so one guest's
F_SETLKW can wait for another guest's lock, a guest's death releases what it held, and a deadlock
between guests is visible in one place.  The table never sleeps: a request that must wait is
queued under a *token* (the FUSE ``unique`` of the SETLKW, together with the session) and answered
later through its ``on_grant(token)`` callback (the server sends FUSE_NOTIFY_LOCK from there).

Owners and keys:

* POSIX locks belong to ``Owner = (session, lock_owner)`` — FUSE's ``lock_owner`` names the guest
  process (its ``files_struct``), and is only unique within one session.
* flock locks belong to the open file ``(session, fh)``.  POSIX and flock locks never conflict with
  each other (Linux keeps ``flc_posix`` and ``flc_flock`` separate).
* ``key`` is whatever names the inode (nodeid, ``(dev, ino)``): any hashable.

Ranges are inclusive ``[start, end]``; ``end == OFFSET_MAX`` means "to end of file", exactly as
``fuse_file_lock`` carries them.  Types are ``F_RDLCK`` / ``F_WRLCK`` / ``F_UNLCK``.

What each method mirrors in Linux ``fs/locks.c``:

============================  ===========================================================
``getlk``                     ``fcntl_getlk`` (EINVAL for F_UNLCK) + ``posix_test_lock``
``setlk``                     ``posix_lock_inode`` without FL_SLEEP (EAGAIN on conflict)
``setlkw``                    ``posix_lock_inode`` with FL_SLEEP: ``posix_locks_deadlock``
                              then ``locks_insert_block``; the later grant is
                              ``locks_wake_up_blocks`` + the retry in ``do_lock_file_wait``
``cancel``                    ``locks_delete_block`` after an interrupted wait (EINTR)
``release_owner``             ``locks_remove_posix`` (``filp_close`` / FUSE FLUSH)
``release_file``              ``locks_remove_flock`` (last ``fput`` / FUSE RELEASE)
``release_session``           every guest file closed at once (process exit / unmount)
``flock``                     ``flock_translate_cmd`` + ``flock_lock_inode``
conflict tests                ``posix_locks_conflict`` / ``flock_locks_conflict``
============================  ===========================================================

Grants and callbacks.  After every change that can free a range (unlock, downgrade, release,
flock drop, and also any grant, since a grant may downgrade the grantee's own ranges) the waiters
on that key are retried in FIFO order, repeatedly until a pass grants nothing.  A grantable waiter
is applied to the table *before* its callback runs and leaves the queue at once, so it is granted
at most once, and a ``cancel`` racing with the grant returns False.  Callbacks are called after
the internal mutex is released, in grant order, by the thread whose call caused the grant; a
callback may call back into the table.  If callbacks raise, all of them still run, and then the
exception (an ExceptionGroup if several did) propagates from the triggering call, whose own
operation has already taken effect.

Deliberate differences from Linux:

* Deadlock detection follows *every* owner holding a conflicting lock and every waiter of each
  owner (a full search of the wait-for graph), not only the first blocker with at most
  MAX_DEADLK_ITERATIONS hops; it therefore also finds longer cycles Linux gives up on.  Like
  Linux it runs only when a request is about to be queued, and counts an owner with any queued
  waiter as blocked (threads sharing one lock_owner may see EDEADLK, as on Linux).
* Like Linux there is no fairness against newcomers: a request grantable now is granted even if
  others are queued (readers can starve a queued writer).  Among queued waiters, FIFO.
* ``release_owner`` keeps the owner's queued waiters (another thread of that process may still be
  in F_SETLKW, as on Linux); ``release_file`` drops the file's flock waiters and returns their
  tokens, since a closed file can no longer be granted anything.
* The pid recorded for a merged POSIX range is the newest request's pid (FUSE gives one pid per
  lock_owner, so this only matters for odd clients).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

OFFSET_MAX = (1 << 63) - 1
F_RDLCK, F_WRLCK, F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

Owner = tuple[Hashable, int]
"""A POSIX lock owner: (session, FUSE lock_owner)."""
OnGrant = Callable[[Any], object]

_FLOCK_TYPES = {LOCK_SH: F_RDLCK, LOCK_EX: F_WRLCK, LOCK_UN: F_UNLCK}
FLOCK_OPS = {F_RDLCK: LOCK_SH, F_WRLCK: LOCK_EX, F_UNLCK: LOCK_UN}
"""fuse_file_lock.type of an LK_FLOCK request → the flock(2) operation for ``LockTable.flock``."""


class Outcome(enum.Enum):
    GRANTED = "granted"  # the lock is held (or the unlock done) when the call returns
    QUEUED = "queued"  # on_grant(token) will be called once it is held, unless cancelled


GRANTED, QUEUED = Outcome.GRANTED, Outcome.QUEUED


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(frozen=True)
class PosixLock:
    """A held POSIX record lock: ``owner`` holds ``type`` over the inclusive [start, end]."""

    owner: Owner
    type: int
    start: int
    end: int
    pid: int = 0

    def conflicts(self, owner: Owner, ltype: int, start: int, end: int) -> bool:
        """``posix_locks_conflict``: another owner, overlapping, and one of the two a write."""
        return (self.owner != owner and self.start <= end and start <= self.end
                and (ltype == F_WRLCK or self.type == F_WRLCK))


@dataclass(frozen=True)
class FlockLock:
    """A held flock lock of the open file (session, fh); type F_RDLCK (shared) or F_WRLCK."""

    session: Hashable
    fh: int
    type: int


@dataclass(frozen=True)
class Waiter:
    """A queued request.  ``owner`` is the POSIX Owner, or (session, fh) for flock."""

    session: Hashable
    token: Hashable
    key: Hashable
    flock: bool
    owner: tuple
    type: int
    start: int = 0
    end: int = OFFSET_MAX
    pid: int = 0
    on_grant: OnGrant | None = field(compare=False, repr=False, default=None)


def _check_range(ltype: int, start: int, end: int, types: tuple[int, ...]) -> None:
    if ltype not in types or not 0 <= start <= end <= OFFSET_MAX:
        raise _oserror(errno.EINVAL)


def _run(grants: list[tuple[OnGrant, Hashable]]) -> None:
    """Call every callback; re-raise what they raised once all have run."""
    errors: list[Exception] = []
    for on_grant, token in grants:
        try:
            on_grant(token)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other grants
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup("lock grant callbacks failed", errors)


class LockTable:
    """All guests' POSIX and flock locks, and the requests waiting for them."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        # key -> owner -> that owner's locks on key: sorted by start, disjoint, and coalesced
        # (no two adjacent or overlapping ranges of one type).
        self._posix: dict[Hashable, dict[Owner, list[PosixLock]]] = {}
        self._flock: dict[Hashable, dict[tuple, FlockLock]] = {}
        self._queue: dict[Hashable, list[Waiter]] = {}  # per key, FIFO
        self._waiting: dict[tuple, Waiter] = {}  # (session, token) -> waiter, FIFO overall

    # ---- POSIX record locks -------------------------------------------------------------------

    def getlk(self, key: Hashable, owner: Owner, ltype: int, start: int,
              end: int) -> PosixLock | None:
        """F_GETLK: a lock of another owner that would block ``ltype`` over [start, end], or
        None if the request could be granted now.  Of several, the one ``posix_test_lock``
        reports: the first in the inode's list, where each owner's locks sit together (in order
        of start) and owners in the order they came (an owner that held nothing comes last).
        EINVAL for F_UNLCK, an unknown type or a bad range, like Linux."""
        _check_range(ltype, start, end, (F_RDLCK, F_WRLCK))
        with self._mutex:
            return next(self._conflicts(key, owner, ltype, start, end), None)

    def setlk(self, key: Hashable, owner: Owner, ltype: int, start: int, end: int,
              pid: int = 0) -> None:
        """F_SETLK: take, convert or (F_UNLCK) release [start, end] for ``owner`` without
        waiting.  The new range replaces the owner's own overlapping ranges (upgrade, downgrade,
        split) and coalesces with adjacent ones of its type; other owners' conflicting locks give
        EAGAIN and change nothing.  Waiters the change frees are granted."""
        _check_range(ltype, start, end, (F_RDLCK, F_WRLCK, F_UNLCK))
        with self._mutex:
            if ltype != F_UNLCK and next(self._conflicts(key, owner, ltype, start, end), None):
                raise _oserror(errno.EAGAIN)
            self._apply_posix(key, owner, ltype, start, end, pid)
            grants = self._wake(key)
        _run(grants)

    def setlkw(self, key: Hashable, owner: Owner, ltype: int, start: int, end: int, pid: int,
               token: Hashable, on_grant: OnGrant) -> Outcome:
        """F_SETLKW: like ``setlk`` when grantable now (GRANTED; ``on_grant`` is not called).
        Otherwise EDEADLK if waiting would close a cycle of owners waiting for each other's locks
        (across all keys and sessions), else queue the request under (owner's session, token)
        and return QUEUED: once grantable the lock is applied and ``on_grant(token)`` called,
        exactly once, unless ``cancel`` removed it first.  EINVAL if that token is already
        waiting."""
        _check_range(ltype, start, end, (F_RDLCK, F_WRLCK, F_UNLCK))
        session = owner[0]
        with self._mutex:
            if (session, token) in self._waiting:
                raise _oserror(errno.EINVAL)
            if ltype == F_UNLCK or not next(self._conflicts(key, owner, ltype, start, end), None):
                self._apply_posix(key, owner, ltype, start, end, pid)
                grants, outcome = self._wake(key), GRANTED
            elif self._deadlock(key, owner, ltype, start, end):
                raise _oserror(errno.EDEADLK)
            else:
                self._enqueue(Waiter(session, token, key, False, owner, ltype, start, end, pid,
                                     on_grant))
                grants, outcome = [], QUEUED
        _run(grants)
        return outcome

    def release_owner(self, key: Hashable, owner: Owner) -> int:
        """POSIX unlock-on-close: drop every lock ``owner`` holds on ``key`` and grant the
        waiters that frees; returns how many lock records went.  The owner's own queued waiters
        stay (another thread of that process may still be waiting)."""
        with self._mutex:
            owners = self._posix.get(key, {})
            dropped = len(owners.pop(owner, ()))
            if not owners:
                self._posix.pop(key, None)
            grants = self._wake(key) if dropped else []
        _run(grants)
        return dropped

    # ---- flock --------------------------------------------------------------------------------

    def flock(self, key: Hashable, session: Hashable, fh: int, op: int, nonblock: bool = False,
              token: Hashable = None, on_grant: OnGrant | None = None) -> Outcome:
        """flock(2) on the open file (session, fh): ``op`` is LOCK_SH, LOCK_EX or LOCK_UN
        (LOCK_NB may be or-ed in, same as ``nonblock``); EINVAL otherwise.

        Holding the same type already is a no-op.  Conversion is not atomic, as in Linux
        ``flock_lock_inode``: the held lock is dropped first, then the new one is tried at once;
        if another file's lock conflicts, LOCK_NB fails with EWOULDBLOCK (== EAGAIN) and the
        file is left with *no* lock, else the request is queued behind earlier waiters (QUEUED,
        ``on_grant(token)`` later, as for ``setlkw``).  Waiters the drop freed are granted after
        the request was tried.  There is no deadlock detection for flock (nor in Linux)."""
        if op & LOCK_NB:
            nonblock, op = True, op & ~LOCK_NB
        if op not in _FLOCK_TYPES:
            raise _oserror(errno.EINVAL)
        ltype, file = _FLOCK_TYPES[op], (session, fh)
        if not nonblock and ltype != F_UNLCK and on_grant is None:
            raise TypeError("a blocking flock needs a token and an on_grant callback")
        error = 0
        with self._mutex:
            if not nonblock and (session, token) in self._waiting:
                raise _oserror(errno.EINVAL)
            held = self._flock.get(key, {})
            current = held.get(file)
            if current is not None and current.type == ltype:
                return GRANTED
            if current is not None:
                self._drop_flock(key, file)
            outcome = GRANTED
            if ltype == F_UNLCK:
                pass
            elif self._flock_conflict(key, file, ltype):
                if nonblock:
                    error = errno.EWOULDBLOCK
                else:
                    self._enqueue(Waiter(session, token, key, True, file, ltype,
                                         on_grant=on_grant))
                    outcome = QUEUED
            else:
                self._flock.setdefault(key, {})[file] = FlockLock(session, fh, ltype)
            grants = self._wake(key) if current is not None else []
        _run(grants)
        if error:
            raise _oserror(error)
        return outcome

    def release_file(self, session: Hashable, fh: int) -> list[Hashable]:
        """The open file (session, fh) is gone (FUSE RELEASE): drop its flock locks on every key,
        grant the waiters that frees, and drop its own queued flock waiters without callbacks.
        Returns the dropped waiters' tokens; the caller still owes each request a reply."""
        file = (session, fh)
        with self._mutex:
            keys = [key for key, held in self._flock.items() if file in held]
            for key in keys:
                self._drop_flock(key, file)
            dropped = [w for w in self._waiting.values() if w.flock and w.owner == file]
            for w in dropped:
                self._dequeue(w)
            grants = [g for key in keys for g in self._wake(key)]
        _run(grants)
        return [w.token for w in dropped]

    # ---- waiters and sessions -----------------------------------------------------------------

    def cancel(self, session: Hashable, token: Hashable) -> bool:
        """FUSE_INTERRUPT of a queued request: True if it was waiting — it is gone, will never be
        granted, and the caller replies EINTR.  False if it was already granted (its on_grant
        has been or is being called: no second reply) or is unknown."""
        with self._mutex:
            waiter = self._waiting.get((session, token))
            if waiter is None:
                return False
            self._dequeue(waiter)
            return True

    def release_session(self, session: Hashable) -> list[Hashable]:
        """A guest died or unmounted: drop all its POSIX and flock locks and all its waiters (no
        callbacks for those), then grant the other sessions' waiters that this frees.  Returns
        the dropped waiters' tokens (a guest that unmounted may still be told)."""
        with self._mutex:
            dropped = [w for w in self._waiting.values() if w.session == session]
            for waiter in dropped:
                self._dequeue(waiter)
            keys = []
            for key, owners in list(self._posix.items()):
                for owner in [o for o in owners if o[0] == session]:
                    del owners[owner]
                    keys.append(key)
                if not owners:
                    del self._posix[key]
            for key, held in list(self._flock.items()):
                for file in [f for f in held if f[0] == session]:
                    self._drop_flock(key, file)
                    keys.append(key)
            grants = [g for key in dict.fromkeys(keys) for g in self._wake(key)]
        _run(grants)
        return [w.token for w in dropped]

    # ---- introspection ------------------------------------------------------------------------

    def locks(self, key: Hashable) -> list[PosixLock]:
        """The POSIX locks held on ``key``, by start then end."""
        with self._mutex:
            held = [lk for locks in self._posix.get(key, {}).values() for lk in locks]
        return sorted(held, key=lambda lk: (lk.start, lk.end))

    def flocks(self, key: Hashable) -> list[FlockLock]:
        """The flock locks held on ``key``."""
        with self._mutex:
            return list(self._flock.get(key, {}).values())

    def waiters(self, key: Hashable | None = None) -> list[Waiter]:
        """Queued requests (of ``key``, or all), oldest first."""
        with self._mutex:
            return [w for w in self._waiting.values() if key is None or w.key == key]

    def counts(self) -> dict[str, int]:
        """Sizes for monitoring: keys with locks or waiters, POSIX lock records, flock locks,
        waiters."""
        with self._mutex:
            return {
                "keys": len(set(self._posix) | set(self._flock) | set(self._queue)),
                "posix": sum(len(v) for owners in self._posix.values() for v in owners.values()),
                "flock": sum(len(held) for held in self._flock.values()),
                "waiters": len(self._waiting),
            }

    # ---- internals (the mutex is held) --------------------------------------------------------

    def _conflicts(self, key: Hashable, owner: Owner, ltype: int, start: int,
                   end: int) -> Iterator[PosixLock]:
        for other, locks in self._posix.get(key, {}).items():
            if other == owner:
                continue
            for lk in locks:
                if lk.start > end:
                    break
                if lk.conflicts(owner, ltype, start, end):
                    yield lk

    def _apply_posix(self, key: Hashable, owner: Owner, ltype: int, start: int, end: int,
                     pid: int) -> None:
        """``posix_lock_inode``'s merge: absorb adjacent/overlapping same-type ranges, cut the
        rest of the owner's ranges around the result, insert it (unless F_UNLCK)."""
        owners = self._posix.setdefault(key, {})
        old = owners.get(owner, [])
        if ltype != F_UNLCK:
            for lk in old:  # ranges of one type never touch each other: one pass is enough
                if lk.type == ltype and lk.start <= end + 1 and start <= lk.end + 1:
                    start, end = min(start, lk.start), max(end, lk.end)
        new = []
        for lk in old:
            if lk.end < start or lk.start > end:
                new.append(lk)
                continue
            if lk.start < start:
                new.append(replace(lk, end=start - 1))
            if lk.end > end:
                new.append(replace(lk, start=end + 1))
        if ltype != F_UNLCK:
            new.append(PosixLock(owner, ltype, start, end, pid))
        new.sort(key=lambda lk: lk.start)
        if new:
            owners[owner] = new
        else:
            owners.pop(owner, None)
            if not owners:
                del self._posix[key]

    def _blockers(self, waiter: Waiter) -> set[Owner]:
        return {lk.owner for lk in self._conflicts(waiter.key, waiter.owner, waiter.type,
                                                   waiter.start, waiter.end)}

    def _deadlock(self, key: Hashable, owner: Owner, ltype: int, start: int, end: int) -> bool:
        """``posix_locks_deadlock``, as a full search: would ``owner`` waiting for the holders of
        the locks conflicting with its request close a cycle of owners each waiting for a lock
        the next one holds?"""
        todo = self._blockers(Waiter(owner[0], None, key, False, owner, ltype, start, end))
        seen: set[Owner] = set()
        while todo:
            holder = todo.pop()
            if holder == owner:
                return True
            if holder in seen:
                continue
            seen.add(holder)
            for w in self._waiting.values():
                if not w.flock and w.owner == holder:
                    todo |= self._blockers(w)
        return False

    def _flock_conflict(self, key: Hashable, file: tuple, ltype: int) -> bool:
        return any(f != file and (ltype == F_WRLCK or lk.type == F_WRLCK)
                   for f, lk in self._flock.get(key, {}).items())

    def _drop_flock(self, key: Hashable, file: tuple) -> None:
        held = self._flock[key]
        del held[file]
        if not held:
            del self._flock[key]

    def _enqueue(self, waiter: Waiter) -> None:
        self._waiting[(waiter.session, waiter.token)] = waiter
        self._queue.setdefault(waiter.key, []).append(waiter)

    def _dequeue(self, waiter: Waiter) -> None:
        del self._waiting[(waiter.session, waiter.token)]
        queue = self._queue[waiter.key]
        queue.remove(waiter)
        if not queue:
            del self._queue[waiter.key]

    def _wake(self, key: Hashable) -> list[tuple[OnGrant, Hashable]]:
        """Retry ``key``'s waiters in FIFO order until a pass grants nothing; apply each grant
        and return the callbacks to run once the mutex is released."""
        grants: list[tuple[OnGrant, Hashable]] = []
        progress = True
        while progress and key in self._queue:
            progress = False
            for w in list(self._queue[key]):
                if w.flock:
                    if self._flock_conflict(key, w.owner, w.type):
                        continue
                    self._flock.setdefault(key, {})[w.owner] = FlockLock(*w.owner, w.type)
                elif next(self._conflicts(key, w.owner, w.type, w.start, w.end), None):
                    continue
                else:
                    self._apply_posix(key, w.owner, w.type, w.start, w.end, w.pid)
                self._dequeue(w)
                grants.append((w.on_grant, w.token))
                progress = True
        return grants
