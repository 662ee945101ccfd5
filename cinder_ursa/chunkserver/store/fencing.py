"""What makes a replica refuse a request: the volume's lease generation
(an older writer is fenced), its snapshot sequence (a write made before
the newest snapshot), the chunk's epoch (a request or replica left behind
by a change of the replica set), the stale mark of a dropped replica, and
the master's term (a deposed master's commands).  Generations, sequences
and epochs are kept in small files beside the chunks, the newest master
term in the data directory."""

import logging
import os
import time

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.files import atomic_write
from cinder_ursa.chunkserver.store.files import fsync_dir

LOG = logging.getLogger(__name__)


MASTER_TERM = 'master-term'   # the newest master term seen


class Fencing:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

    def adopt_master_term(self, term):
        """Remember a newer master term, at once in memory and durably
        when the disk allows (a restarted chunk server must not take
        commands from a master deposed before): a failed write is logged
        and tried again at the next call, never raised, as the term is
        learned in the middle of other work (a heartbeat's reply)."""
        if term > self.master_term:
            self.master_term = term
            self._term_saved = False
        if not self._term_saved:
            try:
                atomic_write(os.path.join(self.data_dir, MASTER_TERM),
                             '%d\n' % self.master_term)
                self._term_saved = True
            except OSError as e:
                LOG.warning('Keeping master term %d on disk failed (%s); '
                            'held in memory, written later',
                            self.master_term, e)

    def check_master_term(self, term):
        """Refuse a master whose term is older than the newest seen."""
        if term < self.master_term:
            raise exception.NotLeader(
                reason='its term %d is over: this chunk server follows the '
                       'leader of term %d' % (term, self.master_term))

    def generation(self, volume):
        return self._generations.get(volume, 0)

    def adopt_generation(self, volume, generation):
        """Record a newer lease generation; raise Fenced for an older one."""
        current = self._generations.get(volume, 0)
        if generation < 1:
            raise exception.Fenced(
                reason='writes to volume %s need a lease (generation >= 1)'
                % volume)
        if generation < current:
            raise exception.Fenced(
                reason='volume %s is now written under lease generation %d; '
                       'generation %d was fenced' % (volume, current,
                                                     generation))
        if generation > current:
            self._persist(volume, 'generation', generation)
            self._generations[volume] = generation

    def snapseq(self, volume):
        return self._snapseqs.get(volume, 0)

    def adopt_snapseq(self, volume, seq):
        """Record the volume's newest snapshot sequence (from the master)."""
        if seq > self._snapseqs.get(volume, 0):
            self._persist(volume, 'snapseq', seq)
            self._snapseqs[volume] = seq

    def check_snapseq(self, volume, seq):
        """A primary refuses writes made before the newest snapshot: the
        writer must learn of it so its next writes preserve old blocks."""
        current = self._snapseqs.get(volume, 0)
        if seq < current:
            raise exception.StaleSnapshot(
                reason='volume %s has snapshot sequence %d, the write has '
                       '%d; refresh the volume' % (volume, current, seq))

    def _persist(self, volume, name, value):
        vdir = os.path.join(self.chunks_dir, volume)
        if not os.path.isdir(vdir):
            os.makedirs(vdir, exist_ok=True)
            fsync_dir(self.chunks_dir)
        atomic_write(os.path.join(vdir, name), '%d\n' % value)

    def known_epoch(self, volume, index):
        """The epoch of a replica held here (None: none is)."""
        c = self._known.get((volume, index))
        return None if c is None else c.epoch

    def check_epoch(self, volume, index, epoch, create=False):
        """Return the chunk after checking ``epoch`` against what this
        replica knows: refuse stale replicas and outdated requests, and
        reads (``create`` False) of a copy still being brought up to date;
        adopt a newer epoch.  Returns None for a chunk never written here
        (reads)."""
        if self._failed:
            self.check_failed(volume)
        c = self._chunk(volume, index, create=create)
        if c is None:
            return None
        if c.stale:
            raise exception.StaleReplica(
                reason='replica of chunk %s/%d on this server left the '
                       'replica set; refresh the chunk map' % (volume, index))
        if c.joining and not create:
            raise exception.StaleReplica(
                reason='the copy of chunk %s/%d on this server is being '
                       'brought up to date and serves no reads yet; refresh '
                       'the chunk map' % (volume, index))
        if epoch < c.epoch:
            raise exception.StaleEpoch(
                reason='chunk %s/%d is at epoch %d, request has %d; refresh '
                       'the chunk map' % (volume, index, c.epoch, epoch))
        if epoch > c.epoch:
            self.set_epoch(c, epoch)
        return c

    def set_epoch(self, c, epoch):
        if c.epoch != epoch:
            os.makedirs(os.path.dirname(c.base), exist_ok=True)
            atomic_write(c.base + '.epoch', '%d\n' % epoch)
            c.epoch = epoch

    def set_joining(self, c, joining):
        """Mark a copy as being brought up to date (it serves no reads,
        also after a restart) or as a replica again."""
        if c.joining == joining:
            return
        path = c.base + '.joining'
        if joining:
            atomic_write(path, 'being brought up to date\n')
        else:
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
        c.joining = joining
        if joining:
            # The joining-copy sweep leaves a copy this young alone.
            c.joined_at = time.monotonic()
        LOG.info('Copy of chunk %s/%d %s', c.volume, c.index,
                 'joins: it takes writes and serves no reads until it is '
                 'up to date' if joining else 'is a replica again')

    def rejoin(self, volume, index):
        """Make the copy of a chunk held here, stale or not, a joining copy
        (to be brought up to date: it serves no reads); return it (None:
        no copy is held)."""
        c = self._chunk(volume, index)
        if c is None:
            return None
        self.set_joining(c, True)
        c.joined_at = time.monotonic()      # a new attempt, if joining
        if c.stale:
            os.unlink(c.base + '.stale')
            fsync_dir(os.path.dirname(c.base))
            c.stale = False
            LOG.info('Stale copy of chunk %s/%d is to be brought up to date',
                     volume, index)
        return c

    def mark_stale(self, volume, index):
        c = self._chunk(volume, index)
        if c is not None and not c.stale:
            with open(c.base + '.stale', 'w') as f:
                f.write('dropped from the replica set\n')
            c.stale = True
            LOG.warning('Replica of chunk %s/%d is stale: the master dropped '
                        'it from the replica set', volume, index)
        self.torn_scanned(volume, index, dropped=True)
