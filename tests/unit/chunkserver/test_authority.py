"""The chunk server's view of what the master says: replica sets, epochs
and lease generations are never taken from a request."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import authority
from cinder_ursa.chunkserver import store as store_mod

VOL = '11111111-2222-3333-4444-555555555555'


class FakeMaster:
    """The two master calls the authority makes, over a dict."""

    def __init__(self):
        self.generation = 4
        self.chunks = {0: {'index': 0, 'epoch': 3, 'replicas': [
            {'id': 1}, {'id': 2}, {'id': 3}]}}
        self.calls = 0

    def _volume(self):
        return {'id': VOL, 'min_replicas': 2,
                'lease': {'generation': self.generation}}

    async def chunk_map(self, volume, start, count, allocate=False):
        self.calls += 1
        return {'volume': self._volume(),
                'chunks': [self.chunks[i] for i in range(start, start + count)
                           if i in self.chunks]}

    async def volume(self, ref):
        self.calls += 1
        return self._volume()


@pytest.fixture
def auth(tmp_path):
    st = store_mod.ChunkStore(str(tmp_path))
    yield authority.Authority(FakeMaster(), st)
    st.close()


def test_a_new_epoch_is_confirmed_once_then_checked_in_place(auth):
    with pytest.raises(authority.Unconfirmed):
        auth.view(VOL, 0, 3, 1, False)
    asyncio.run(auth.confirm(VOL, 0))
    v = auth.view(VOL, 0, 3, 1, False)
    assert (v.epoch, v.replicas, v.min_replicas) == (3, [1, 2, 3], 2)
    with pytest.raises(exception.StaleEpoch, match='is at epoch 3'):
        auth.view(VOL, 0, 2, 1, False)
    # An epoch from the future is refused once the master was asked.
    with pytest.raises(exception.StaleEpoch, match='not issued'):
        auth.view(VOL, 0, 9, 1, True)
    assert auth.master.calls == 1


def test_a_server_outside_the_replica_set_is_stale(auth):
    asyncio.run(auth.confirm(VOL, 0))
    with pytest.raises(exception.StaleReplica):
        auth.view(VOL, 0, 3, 7, False)
    with pytest.raises(exception.Unavailable, match='registered'):
        auth.view(VOL, 0, 3, None, False)


def test_generations_come_from_the_master(auth):
    with pytest.raises(authority.Unconfirmed):
        auth.check_generation(VOL, 4, False)
    asyncio.run(auth.confirm(VOL, 0))
    auth.check_generation(VOL, 4, False)
    with pytest.raises(exception.Fenced, match='not issued'):
        auth.check_generation(VOL, 5, True)
    with pytest.raises(exception.Fenced):
        auth.check_generation(VOL, 3, False)
    with pytest.raises(exception.InvalidArgument, match='not issued'):
        asyncio.run(auth.confirm_generation(VOL, 2 ** 64 - 1))
    assert auth.store.generation(VOL) == 4
    auth.master.generation = 6
    asyncio.run(auth.confirm_generation(VOL, 5))
    assert auth.store.generation(VOL) == 6   # the master's, not the FENCE's


def test_the_view_cache_is_bounded(auth, monkeypatch):
    monkeypatch.setattr(authority, 'MAX_VIEWS', 2)
    for i in range(3):
        auth.learn(VOL, {'index': i, 'epoch': 1, 'replicas': [{'id': 1}]}, 1)
    assert len(auth._views) == 2
    # An older answer never replaces a newer one.
    auth.learn(VOL, {'index': 2, 'epoch': 5, 'replicas': [{'id': 1}]}, 1)
    auth.learn(VOL, {'index': 2, 'epoch': 4, 'replicas': [{'id': 2}]}, 1)
    assert auth.view(VOL, 2, 5, 1, False).epoch == 5
