"""SQLAlchemy engines as Ursa's master and nova_ha use them."""

import sqlalchemy as sa


def create_engine(url):
    """SQLite in WAL mode, fsync'ed, with foreign keys, usable from several
    threads; server databases (MySQL, PostgreSQL) with pre-ping and
    recycled connections.  A ``postgresql://`` URL naming no driver gets
    psycopg 3, the one installed (SQLAlchemy's default is psycopg2)."""
    url = sa.engine.make_url(url)
    if url.drivername == 'postgresql':
        url = url.set(drivername='postgresql+psycopg')
    kwargs = {}
    sqlite = url.get_backend_name() == 'sqlite'
    if sqlite:
        kwargs['connect_args'] = {'check_same_thread': False, 'timeout': 30}
    else:
        kwargs['pool_pre_ping'] = True
        kwargs['pool_recycle'] = 3600
    engine = sa.create_engine(url, **kwargs)
    if sqlite:
        @sa.event.listens_for(engine, 'connect')
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute('PRAGMA journal_mode=WAL')
            cur.execute('PRAGMA synchronous=FULL')
            cur.execute('PRAGMA foreign_keys=ON')
            cur.close()
    return engine
