"""SQL schema of the master's metadata (SQLAlchemy Core tables).

Changes to these tables go with an alembic revision under migrations/.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

chunkservers = sa.Table(
    'chunkservers', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('uuid', sa.String(36), nullable=False, unique=True),
    sa.Column('host', sa.String(255), nullable=False),
    sa.Column('rack', sa.String(255), nullable=False),
    sa.Column('address', sa.String(255), nullable=False),
    sa.Column('port', sa.Integer, nullable=False),
    sa.Column('capacity', sa.BigInteger, nullable=False, default=0),
    sa.Column('used', sa.BigInteger, nullable=False, default=0),
    sa.Column('free', sa.BigInteger, nullable=False, default=0),
    sa.Column('state', sa.String(16), nullable=False, default='up'),
    sa.Column('last_seen', sa.Double, nullable=False),
    sa.Column('created_at', sa.Double, nullable=False),
    # When it was marked down (None while up): out after the grace period.
    sa.Column('down_since', sa.Double, nullable=True),
    # An operator's "it comes back": no re-replication for its absence.
    sa.Column('maintenance', sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    # An operator's "empty it": its replicas move to other servers, and
    # it is never chosen for a new one.
    sa.Column('draining', sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    # The chunks it is a replica of, and those it is joining: kept up to
    # date with every change (store/tally.py), never counted.
    sa.Column('chunks', sa.BigInteger, nullable=False, default=0,
              server_default='0'),
    sa.Column('joining_chunks', sa.BigInteger, nullable=False, default=0,
              server_default='0'),
)

volumes = sa.Table(
    'volumes', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('name', sa.String(255), nullable=False, unique=True),
    sa.Column('size', sa.BigInteger, nullable=False),
    sa.Column('chunk_size', sa.BigInteger, nullable=False),
    sa.Column('stripe_unit', sa.BigInteger, nullable=False),
    sa.Column('stripe_count', sa.Integer, nullable=False),
    sa.Column('replicas', sa.Integer, nullable=False),
    sa.Column('min_replicas', sa.Integer, nullable=False),
    sa.Column('status', sa.String(16), nullable=False),
    sa.Column('created_at', sa.Double, nullable=False),
    sa.Column('lease_holder', sa.String(255), nullable=True),
    sa.Column('lease_generation', sa.BigInteger, nullable=False, default=0),
    sa.Column('lease_expires', sa.Double, nullable=False, default=0),
    # Snapshot sequence: the next snapshot of this volume gets seq + 1.
    sa.Column('snap_seq', sa.BigInteger, nullable=False, default=0),
    # Clones: the snapshot whose blocks this volume reads until written.
    sa.Column('parent_snapshot_id', sa.String(36), nullable=True),
    # QoS limits, JSON: {"total_iops_sec": 500, ...}; every client (the
    # NBD gateway, the attach agent, the library) enforces them.
    sa.Column('qos', sa.Text, nullable=True),
    # Several hosts may write it at once; writers share the lease
    # (shared_leases), and revoking it fences them all.
    sa.Column('multiattach', sa.Boolean, nullable=False, default=False),
    # A pending handover of the exclusive lease (a live migration): the
    # holder a standby attachment's client asked for it as, and when it
    # first asked (master clock).  The holder's host learns it from its
    # attachment listing (release_requested) and releases; past
    # [ursa_master] lease_handover_timeout the requester takes it by
    # force.  Cleared when the lease is acquired, or the standby detached.
    sa.Column('handover_to', sa.String(255), nullable=True),
    sa.Column('handover_since', sa.Double, nullable=True),
    # Its chunks rows, kept up to date (store/tally.py), never counted.
    sa.Column('allocated_chunks', sa.BigInteger, nullable=False, default=0,
              server_default='0'),
    # The trash and the deletions left are found without a scan, and a
    # snapshot's clones.
    sa.Index('ix_volumes_status', 'status'),
    sa.Index('ix_volumes_parent', 'parent_snapshot_id'),
)

shared_leases = sa.Table(
    'shared_leases', metadata,
    sa.Column('volume_id', sa.String(36),
              sa.ForeignKey('volumes.id', ondelete='CASCADE'),
              primary_key=True),
    sa.Column('holder', sa.String(255), primary_key=True),
    sa.Column('expires', sa.Double, nullable=False),
)

snapshots = sa.Table(
    'snapshots', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('name', sa.String(255), nullable=False),
    sa.Column('volume_id', sa.String(36), sa.ForeignKey('volumes.id'),
              nullable=False),
    sa.Column('seq', sa.BigInteger, nullable=False),
    sa.Column('size', sa.BigInteger, nullable=False),
    # The volume's parent when the snapshot was taken (clones of clones).
    sa.Column('parent_snapshot_id', sa.String(36), nullable=True),
    # creating, available, or trash (deleted, kept for its clones).
    sa.Column('status', sa.String(16), nullable=False),
    sa.Column('created_at', sa.Double, nullable=False),
    sa.UniqueConstraint('volume_id', 'name', name='uniq_snapshot_name'),
    # The trash, and snapshots left creating, are found without a scan.
    sa.Index('ix_snapshots_status', 'status'),
    sa.Index('ix_snapshots_parent', 'parent_snapshot_id'),
)

chunks = sa.Table(
    'chunks', metadata,
    sa.Column('volume_id', sa.String(36),
              sa.ForeignKey('volumes.id', ondelete='CASCADE'),
              primary_key=True),
    sa.Column('idx', sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column('epoch', sa.BigInteger, nullable=False),
    # Server ids, comma separated; the first one is the primary.
    sa.Column('replicas', sa.String(1024), nullable=False),
    # Servers being brought up to date: they take the chunk's writes but
    # serve no reads and count for no acknowledgement.
    sa.Column('joining', sa.String(1024), nullable=False, default='',
              server_default=''),
    # Servers dropped from the set while they held a copy, which may
    # still be there to catch up from (until replaced).
    sa.Column('lost', sa.String(1024), nullable=False, default='',
              server_default=''),
    # Its primary was dropped (it may have forwarded its last write to
    # some replicas only): the replicas are to be compared (RESYNC).
    sa.Column('resync', sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    # Few are marked: the repair rounds find them without a scan.
    sa.Index('ix_chunks_resync', 'resync'),
)

# The chunks of each volume by state, kept up to date by every change of
# the chunks table in its transaction (store/tally.py): the metrics
# classify these rows (about one per volume) instead of the chunks.
chunk_tally = sa.Table(
    'chunk_tally', metadata,
    sa.Column('volume_id', sa.String(36),
              sa.ForeignKey('volumes.id', ondelete='CASCADE'),
              primary_key=True),
    # How many replicas and joining copies the chunks have.
    sa.Column('replicas', sa.Integer, primary_key=True,
              autoincrement=False),
    sa.Column('joining', sa.Integer, primary_key=True, autoincrement=False),
    # The server of their only replica (0 unless they have exactly one).
    sa.Column('only_server', sa.Integer, primary_key=True,
              autoincrement=False),
    sa.Column('resync', sa.Boolean, primary_key=True),
    sa.Column('chunks', sa.BigInteger, nullable=False),
    # Their lost copies (servers dropped while holding one), summed.
    sa.Column('lost', sa.BigInteger, nullable=False),
)

# The cluster's totals (store/tally.py names them), one row each, kept up
# to date in the transaction of every change: the status is one read.
cluster_counters = sa.Table(
    'cluster_counters', metadata,
    sa.Column('name', sa.String(32), primary_key=True),
    sa.Column('value', sa.BigInteger, nullable=False),
)

attachments = sa.Table(
    'attachments', metadata,
    sa.Column('volume_id', sa.String(36),
              sa.ForeignKey('volumes.id', ondelete='CASCADE'),
              primary_key=True),
    # The host whose ursa-nbd gateway exposes the volume (its [ursa_nbd]
    # host option; Cinder's connector['host']).
    sa.Column('host', sa.String(255), primary_key=True),
    # attaching -> attached (path set) or error; detaching -> row removed.
    sa.Column('status', sa.String(16), nullable=False),
    sa.Column('path', sa.String(1024), nullable=True),
    sa.Column('error', sa.Text, nullable=True),
    sa.Column('created_at', sa.Double, nullable=False),
    # A random secret made with the attachment (and again at a new
    # attach): over TCP without a client certificate ursa-nbd opens the
    # volume only for an export name carrying it (VOLUME~TOKEN), since
    # every local user of the host shares 127.0.0.1.
    sa.Column('export_token', sa.String(64), nullable=True),
    # A live migration's destination: attached beside the volume's one
    # attachment on another host (not multiattach), its client opens the
    # volume without its lease and asks for it (a handover) at its first
    # write; then the flags swap (the source becomes the standby).
    sa.Column('standby', sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
)

# Hosts fenced as a whole (nova_ha fences a failed compute host): no lease
# holder of theirs may take a lease again until the host is unfenced.
fenced_hosts = sa.Table(
    'fenced_hosts', metadata,
    sa.Column('host', sa.String(255), primary_key=True),
    sa.Column('reason', sa.Text, nullable=True),
    sa.Column('fenced_at', sa.Double, nullable=False),
)

# The masters' fencing term: one row.  A master that becomes leader takes
# term + 1 (compare and swap on the old value); every metadata transaction
# of a leader first checks the row still holds its term, in the same
# transaction, so a deposed leader's writes fail.
cluster_term = sa.Table(
    'cluster_term', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),
    sa.Column('term', sa.BigInteger, nullable=False),
    # The URL of the master that took the term (None: no leader yet).
    sa.Column('leader', sa.String(1024), nullable=True),
    sa.Column('elected_at', sa.Double, nullable=True),
)

# Who may sign REST requests (besides the cluster key, the principal
# "admin", which is not stored here): a role limiting the routes, the
# key (HMAC needs the secret itself, so the database holds it: protect
# it as the cluster key file), and after a rotation the previous key,
# valid until previous_until so daemons are reconfigured without
# downtime.
principals = sa.Table(
    'principals', metadata,
    sa.Column('name', sa.String(64), primary_key=True),
    sa.Column('role', sa.String(16), nullable=False),
    sa.Column('key', sa.String(128), nullable=False),
    sa.Column('previous_key', sa.String(128), nullable=True),
    sa.Column('previous_until', sa.Double, nullable=True),
    sa.Column('created_at', sa.Double, nullable=False),
    sa.Column('rotated_at', sa.Double, nullable=True),
)

# What happened to volumes' leases (protocol/lease_history.py has the
# events), appended in the transaction of the lease change it records, so
# it never disagrees with the volumes' lease columns; renewals are not
# recorded.  ``id`` is the order (one leader writes at a time, its
# database calls one after the other; ids are never reused).  The newest
# [ursa_master] lease_history_per_volume events of a volume are kept, and
# none of a deleted volume: the REST API finds a history through its
# volume, so rows of a deleted one would be out of anyone's reach.
lease_events = sa.Table(
    'lease_events', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('volume_id', sa.String(36),
              sa.ForeignKey('volumes.id', ondelete='CASCADE'),
              nullable=False),
    # The generation of the lease the event is about (for an end, the
    # one that ended).
    sa.Column('generation', sa.BigInteger, nullable=False),
    # None: a revoke while nobody held the lease.
    sa.Column('holder', sa.String(255), nullable=True),
    sa.Column('event', sa.String(16), nullable=False),
    # Wall-clock time of the master that recorded it.
    sa.Column('at', sa.Double, nullable=False),
    # Who asked: "<principal> from <address>", or "the master".
    sa.Column('by', sa.String(255), nullable=False),
    sa.Column('reason', sa.Text, nullable=True),
    # A volume's events, oldest first, and the trimming of its oldest.
    sa.Index('ix_lease_events_volume', 'volume_id', 'id'),
    sqlite_autoincrement=True,
)
