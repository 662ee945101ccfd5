"""The master's metadata store: volumes, chunks, chunk servers, leases.

SQLAlchemy Core over any URL: ``sqlite:///path`` by default,
``mysql+pymysql://...`` or ``postgresql+psycopg://...`` in production.
Methods are synchronous and each runs in one transaction; the REST layer
calls them from a single worker thread so the event loop never blocks on
the database.

Invariants kept here:

* a chunk's ``epoch`` grows by one on every change of its replica set, and
  the change is committed before anyone is told about it;
* a volume's lease ``generation`` grows by one every time a new holder
  takes the lease, so chunk servers can refuse the older writer.

One module per aggregate, each a part of :class:`MetadataStore`:
``servers``, ``volumes``, ``snapshots``, ``chunks``, ``leases`` (their
history, written in the transaction of each change, and whole hosts),
``attachments``, ``principals`` (who signs REST
requests, with which role and key), ``tally`` (the figures kept up to
date instead of counted), ``term`` (the masters' fencing term, and
:meth:`~.term.TermRecords.begin`, the one entry point of every write
transaction), ``summary`` (what the metrics count); ``common`` holds
what they share.
"""

import os

import alembic.command
import alembic.config
import sqlalchemy as sa

from cinder_ursa.common import db
from cinder_ursa.master.store.attachments import AttachmentRecords
from cinder_ursa.master.store.chunks import ChunkRecords
from cinder_ursa.master.store.common import REQUESTER  # noqa: F401
from cinder_ursa.master.store.common import check_text  # noqa: F401
from cinder_ursa.master.store.common import check_volume_size  # noqa: F401
from cinder_ursa.master.store.common import holder_host  # noqa: F401
from cinder_ursa.master.store.common import validate_qos  # noqa: F401
from cinder_ursa.master.store.leases import LEASE_HANDOVER_TIMEOUT
from cinder_ursa.master.store.leases import LEASE_HISTORY_PER_VOLUME
from cinder_ursa.master.store.leases import LeaseRecords
from cinder_ursa.master.store.principals import PrincipalRecords
from cinder_ursa.master.store.servers import ServerRecords
from cinder_ursa.master.store.snapshots import SnapshotRecords
from cinder_ursa.master.store.summary import SummaryRecords
from cinder_ursa.master.store.tally import TallyRecords
from cinder_ursa.master.store.term import TermRecords
from cinder_ursa.master.store.volumes import VolumeRecords

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'migrations')


class MetadataStore(ServerRecords, VolumeRecords, SnapshotRecords,
                    ChunkRecords, LeaseRecords, AttachmentRecords,
                    TermRecords, PrincipalRecords, SummaryRecords,
                    TallyRecords):
    """The master's records over one database: the engine and the schema
    here, each aggregate's methods in its own module."""

    def __init__(self, url, failure_domain='host',
                 lease_history_per_volume=LEASE_HISTORY_PER_VOLUME,
                 lease_handover_timeout=LEASE_HANDOVER_TIMEOUT):
        if lease_history_per_volume < 1:
            raise ValueError('lease_history_per_volume must be 1 or more')
        if lease_handover_timeout < 0:
            raise ValueError('lease_handover_timeout must be 0 or more')
        self.url = url
        self.engine = db.create_engine(url)
        self.failure_domain = failure_domain
        self.lease_history_per_volume = lease_history_per_volume
        self.lease_handover_timeout = lease_handover_timeout
        # Why each failed chunk server's data directory failed, as it says
        # in every heartbeat (not kept in the database).
        self.failures = {}

    def upgrade(self):
        """Bring the schema to the newest alembic revision."""
        cfg = alembic.config.Config()
        cfg.set_main_option('script_location', MIGRATIONS)
        with self.engine.begin() as conn:
            cfg.attributes['connection'] = conn
            alembic.command.upgrade(cfg, 'head')

    def schema_version(self):
        with self.engine.connect() as conn:
            try:
                return conn.execute(sa.text(
                    'SELECT version_num FROM alembic_version')).scalar()
            except sa.exc.DatabaseError:
                return None

    def close(self):
        self.engine.dispose()
