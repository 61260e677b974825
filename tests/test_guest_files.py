"""The guest's descriptor table (guest/files.py ``FdTable``): numbers, the limit, reservations."""

import errno
import resource

import pytest

from vfscluster.guest.files import FIRST_FD, FdTable

pytestmark = pytest.mark.timeout(30)


class _File:
    """Stands in for an OpenFile: the table only stores it and hands it back."""

    def get(self) -> None:
        pass

    def put(self) -> None:
        pass


def test_lowest_free_number_first_and_emfile_at_the_limit():
    t = FdTable(limit=FIRST_FD + 3)
    a, b, c = (t.install(_File()) for _ in range(3))
    assert (a, b, c) == (FIRST_FD, FIRST_FD + 1, FIRST_FD + 2)
    with pytest.raises(OSError) as e:
        t.install(_File())
    assert e.value.errno == errno.EMFILE
    t.remove(b)
    assert t.install(_File()) == b
    with pytest.raises(OSError) as e:
        t.install_at(FIRST_FD + 3, _File())             # dup2 onto the limit
    assert e.value.errno == errno.EBADF


def test_the_limit_follows_setrlimit_made_after_the_table():
    """Linux reads RLIMIT_NOFILE at every allocation (a campaign found it read once, when the
    mount was made)."""
    t = FdTable()
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FIRST_FD + 2, old[1]))
        got = [t.install(_File()), t.install(_File())]
        with pytest.raises(OSError) as e:
            t.install(_File())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    assert got == [FIRST_FD, FIRST_FD + 1] and e.value.errno == errno.EMFILE
    assert t.install(_File()) == FIRST_FD + 2           # raised again: room again
