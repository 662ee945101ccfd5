"""The evacuators' shared state: hosts as the leader sees them, recoveries
and their instances, and the operator's controls (pause, maintenance,
enable).  It lives in a database so that a new leader picks up unfinished
recoveries where the old one left them."""

import json
import time

import sqlalchemy as sa

from cinder_ursa.common import db

metadata = sa.MetaData()

hosts = sa.Table(
    'hosts', metadata,
    sa.Column('name', sa.String(255), primary_key=True),
    # ok | degraded | suspect | failed | returned | maintenance
    sa.Column('state', sa.String(16), nullable=False),
    sa.Column('since', sa.Double, nullable=False),
    sa.Column('in_group', sa.Boolean, nullable=False),
    sa.Column('nova_state', sa.String(16), nullable=True),
    sa.Column('nova_status', sa.String(16), nullable=True),
    sa.Column('health', sa.Text, nullable=True),
    sa.Column('note', sa.Text, nullable=True),
    # Operator's flags.
    sa.Column('maintenance', sa.Boolean, nullable=False, default=False),
    # What the host's agent last said of maintenance: it stays true while
    # the host is down for that maintenance.
    sa.Column('agent_maintenance', sa.Text, nullable=True),
    sa.Column('enable_requested', sa.Boolean, nullable=False,
              default=False),
    sa.Column('updated_at', sa.Double, nullable=False),
    # The storage heartbeat: the interval its agent announced (kept once
    # the agent is gone; None: it sends none), and what the Ursa master
    # last said of it (alive | lost | unknown | none).
    sa.Column('storage_heartbeat', sa.Double, nullable=True),
    sa.Column('storage', sa.String(16), nullable=True),
)

recoveries = sa.Table(
    'recoveries', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('host', sa.String(255), nullable=False, index=True),
    # held (mass-failure guard) | fencing | disabling | evacuating
    # | cancelled (the host was back before its fence)
    # | done | failed
    sa.Column('state', sa.String(16), nullable=False),
    # When the host was first seen failing (start of the grace period).
    sa.Column('detected_at', sa.Double, nullable=False),
    sa.Column('created_at', sa.Double, nullable=False),
    sa.Column('updated_at', sa.Double, nullable=False),
    sa.Column('finished_at', sa.Double, nullable=True),
    sa.Column('fenced_by', sa.String(255), nullable=True),
    sa.Column('message', sa.Text, nullable=True),
    # The timeline: fenced, then Nova's compute service forced down.
    sa.Column('fenced_at', sa.Double, nullable=True),
    sa.Column('disabled_at', sa.Double, nullable=True),
)

instances = sa.Table(
    'instances', metadata,
    sa.Column('recovery_id', sa.Integer,
              sa.ForeignKey('recoveries.id', ondelete='CASCADE'),
              primary_key=True),
    sa.Column('uuid', sa.String(36), primary_key=True),
    sa.Column('name', sa.String(255), nullable=True),
    sa.Column('priority', sa.Integer, nullable=False, default=0),
    # pending | evacuating | done | failed | skipped
    sa.Column('status', sa.String(16), nullable=False),
    sa.Column('attempts', sa.Integer, nullable=False, default=0),
    sa.Column('next_attempt_at', sa.Double, nullable=False, default=0),
    # When the last evacuate request was about to be sent.
    sa.Column('requested_at', sa.Double, nullable=True),
    # Newest evacuation record of the instance before that request: the
    # request's own record is the first one after it.
    sa.Column('after_migration', sa.Integer, nullable=False, default=0),
    sa.Column('migration_id', sa.Integer, nullable=True),
    sa.Column('dest_host', sa.String(255), nullable=True),
    sa.Column('message', sa.Text, nullable=True),
    sa.Column('finished_at', sa.Double, nullable=True),
)

control = sa.Table(
    'control', metadata,
    sa.Column('key', sa.String(64), primary_key=True),
    sa.Column('value', sa.Text, nullable=False),
)

ACTIVE_RECOVERY = ('held', 'fencing', 'disabling', 'evacuating')


def format_time(ts):
    """A UNIX time (as the state holds them) as local 'YYYY-mm-dd
    HH:MM:SS' ('' for none)."""
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts)) if ts \
        else ''


class Store:
    def __init__(self, url):
        self.engine = db.create_engine(url)
        for attempt in range(50):
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.OperationalError:
                # Other agents, evacuators or the CLI are creating the
                # tables at this moment ("table ... already exists"): look
                # again once they are done.
                if attempt == 49:
                    raise
                time.sleep(0.05)
        self._add_columns()

    def _add_columns(self):
        """Columns of this release missing from a database an older one
        made (create_all adds tables, not columns); each is nullable."""
        have = sa.inspect(self.engine)
        for table in metadata.sorted_tables:
            present = {c['name'] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                ddl = 'ALTER TABLE %s ADD COLUMN %s %s' % (
                    table.name, col.name,
                    col.type.compile(dialect=self.engine.dialect))
                with self.engine.begin() as conn:
                    try:
                        conn.execute(sa.text(ddl))
                    except sa.exc.OperationalError:
                        # Another process added it meanwhile.
                        if col.name not in {c['name'] for c in sa.inspect(
                                conn).get_columns(table.name)}:
                            raise

    # --- control -----------------------------------------------------------

    def get_control(self, key, default=None):
        with self.engine.connect() as conn:
            v = conn.execute(sa.select(control.c.value).where(
                control.c.key == key)).scalar()
        return json.loads(v) if v is not None else default

    def set_control(self, key, value):
        with self.engine.begin() as conn:
            conn.execute(control.delete().where(control.c.key == key))
            if value is not None:
                conn.execute(control.insert().values(
                    key=key, value=json.dumps(value)))

    def paused(self):
        return self.get_control('paused')

    def pause(self, reason, by='operator'):
        self.set_control('paused', {'reason': reason, 'by': by,
                                    'at': time.time()})

    def resume(self):
        """Lift a pause; recoveries the guard held go ahead."""
        self.set_control('paused', None)
        with self.engine.begin() as conn:
            conn.execute(recoveries.update().where(
                recoveries.c.state == 'held').values(
                state='fencing', updated_at=time.time()))

    # --- hosts -------------------------------------------------------------

    def hosts(self):
        with self.engine.connect() as conn:
            return {r.name: r._asdict() for r in conn.execute(
                sa.select(hosts).order_by(hosts.c.name))}

    def save_host(self, name, **values):
        values['updated_at'] = time.time()
        with self.engine.begin() as conn:
            res = conn.execute(hosts.update().where(
                hosts.c.name == name).values(**values))
            if not res.rowcount:
                values.setdefault('state', 'ok')
                values.setdefault('since', values['updated_at'])
                values.setdefault('in_group', False)
                conn.execute(hosts.insert().values(name=name, **values))

    def set_host_flag(self, name, **flags):
        """Operator flags (maintenance, enable_requested); a host nova_ha
        has not seen yet is recorded."""
        self.save_host(name, **flags)

    # --- recoveries --------------------------------------------------------

    def create_recovery(self, host, state, detected_at, message=None):
        now = time.time()
        with self.engine.begin() as conn:
            return conn.execute(recoveries.insert().values(
                host=host, state=state, detected_at=detected_at,
                created_at=now, updated_at=now,
                message=message)).inserted_primary_key[0]

    def update_recovery(self, rid, **values):
        values['updated_at'] = time.time()
        with self.engine.begin() as conn:
            conn.execute(recoveries.update().where(
                recoveries.c.id == rid).values(**values))

    def recoveries(self, active=None, host=None, limit=None):
        q = sa.select(recoveries).order_by(recoveries.c.id.desc())
        if active is True:
            q = q.where(recoveries.c.state.in_(ACTIVE_RECOVERY))
        if host is not None:
            q = q.where(recoveries.c.host == host)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(q)]

    def recovery(self, rid):
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(recoveries).where(
                recoveries.c.id == rid)).first()
        return r._asdict() if r else None

    def add_instances(self, rid, rows):
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(instances.insert().values(recovery_id=rid,
                                                       **row))

    def instances(self, rid):
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(
                sa.select(instances).where(instances.c.recovery_id == rid)
                .order_by(instances.c.priority.desc(), instances.c.name,
                          instances.c.uuid))]

    def update_instance(self, rid, uuid, **values):
        with self.engine.begin() as conn:
            conn.execute(instances.update().where(
                instances.c.recovery_id == rid,
                instances.c.uuid == uuid).values(**values))
