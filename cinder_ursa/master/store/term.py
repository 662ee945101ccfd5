"""The masters' fencing term and the one entry point of every metadata
write transaction.

Every method of the store that changes records opens its transaction with
:meth:`TermRecords.begin`.  When the store has a ``guard`` (a master that
takes part in leader election sets one), ``begin`` asks it for the term
this master holds (the guard raises NotLeader when it holds none, or let
its lease deadline pass) and, first thing in the transaction, updates the
term row on condition that it still holds that term::

    UPDATE cluster_term SET term = term WHERE id = 1 AND term = :mine

No row matched: another master took a newer term, the transaction is
rolled back and NotLeader raised.  The row stays locked until the
transaction ends (SQLite: the write lock; InnoDB: the row lock), so a new
leader's compare and swap waits for it: a write is either committed
before the new term or refused.  (MySQL counts rows matched, not
changed, because SQLAlchemy connects with CLIENT_FOUND_ROWS.)
"""

import contextlib
import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models

ROW = 1
# Terms are kept in a signed 64-bit column (BigInteger) and sent as u64.
MAX_TERM = 2 ** 63 - 1


class TermRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    # A callable returning the term this master holds, raising NotLeader
    # if none; None: no check (one master without election, tools, tests).
    guard = None

    @contextlib.contextmanager
    def begin(self):
        """A write transaction, checked against the term (see above)."""
        guard = self.guard
        mine = guard() if guard is not None else None
        with self.engine.begin() as conn:
            if mine is not None:
                t = models.cluster_term
                done = conn.execute(t.update().where(
                    t.c.id == ROW, t.c.term == mine).values(term=t.c.term))
                if done.rowcount != 1:
                    raise exception.NotLeader(
                        reason='term %d is over: another master was elected '
                               'since; nothing was changed' % mine)
            yield conn

    def leader_record(self):
        """{'term', 'leader', 'elected_at'}: the newest term and the URL
        of the master that took it."""
        t = models.cluster_term
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == ROW)).first()
        if row is None:
            return {'term': 0, 'leader': None, 'elected_at': None}
        return {'term': row.term, 'leader': row.leader,
                'elected_at': row.elected_at}

    def take_term(self, seen, leader, above=0):
        """Compare and swap: if the term is still ``seen``, make it one
        more than ``seen`` and ``above`` (a term chunk servers have seen,
        e.g. after the database was restored from a backup), held by
        ``leader`` (a URL), and return the new term; else return None
        (another master was elected meanwhile)."""
        new = max(seen, above) + 1
        if new > MAX_TERM:
            raise exception.NotLeader(
                reason='no term is left above %d (the chunk servers hold '
                       'it): stop every chunk server, delete '
                       '<data_dir>/master-term on each and start them '
                       'again' % max(seen, above))
        t = models.cluster_term
        with self.engine.begin() as conn:
            done = conn.execute(t.update().where(
                t.c.id == ROW, t.c.term == seen).values(
                    term=new, leader=leader, elected_at=time.time()))
        return new if done.rowcount == 1 else None

    def resign_term(self, term, leader):
        """Give term ``term``, held by ``leader`` (a URL), up: a leader
        that stops.  The row then names no leader, and a standby takes
        ``term + 1`` at its next round instead of waiting for the lease.
        Nothing changes if another master took a newer term since."""
        t = models.cluster_term
        with self.engine.begin() as conn:
            conn.execute(t.update().where(
                t.c.id == ROW, t.c.term == term,
                t.c.leader == leader).values(leader=None))
