"""The master's kept figures (store/tally.py) on every database it runs
on (SQLite, MariaDB, PostgreSQL), where their sums meet the limits of a
64-bit column."""

import uuid

import pytest

from cinder_ursa.master import models

pytestmark = pytest.mark.timeout(180)

# The largest volume [ursa_master] max_volume_size allows.
LARGEST = 2 ** 63 - 4096


@pytest.fixture
def store(any_store):
    return any_store


def test_provisioned_bytes_of_thousands_of_the_largest_volumes(store):
    """Thin volumes provision more than exists: 4097 of the largest size
    pass 2**63 blocks of 4 KiB.  The status counted them in Python
    before the kept figures (no overflow whatever the sum); a kept
    counter must neither refuse the next volume (MariaDB, PostgreSQL:
    "BIGINT value is out of range", a 500) nor turn into an inexact
    float (SQLite)."""
    with store.engine.begin() as conn:
        conn.execute(models.volumes.insert(), [dict(
            id=str(uuid.uuid4()), name='v%04d' % i, size=LARGEST,
            chunk_size=64 * 2 ** 20, stripe_unit=64 * 2 ** 20,
            stripe_count=1, replicas=1, min_replicas=1, status='available',
            created_at=0, lease_generation=0, lease_expires=0, snap_seq=0)
            for i in range(4096)])
    store.recount_tallies()
    assert store.tally_drift() == {}
    store.create_volume('one-more', LARGEST, replicas=1, min_replicas=1)
    status = store.cluster_status()
    assert (status['volumes'], status['provisioned_bytes']) == (
        4097, 4097 * LARGEST)
    assert store.tally_drift() == {}
