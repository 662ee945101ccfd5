"""Keys per role against real processes: principals made with the ``ursa
key`` commands (run in process against a real master), a nova_ha key
refused a volume deletion but accepted for fencing, a chunk server
signing as a chunkserver principal of its own, rotation (the old key
works within its window, not after), revocation, and a request signed
for one master refused by the other (review finding 4)."""

import http.client
import io
import json
import os
import socket
import time
import urllib.parse

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.cmd.admin import keys
from cinder_ursa.common import auth
from tests.fixtures.wait import wait_for


class App:
    """What the ``ursa key`` commands use of the CLI application."""

    def __init__(self, cluster):
        self.stdout = io.StringIO()
        self._master = cluster.client()

    def master(self):
        return self._master


def ursa_key(cluster, cls, *argv):
    cmd = cls(App(cluster), None)
    return cmd.take_action(cmd.get_parser('ursa key').parse_args(argv))


def create(cluster, tmp_path, name, role):
    path = str(tmp_path / ('%s.key' % name))
    ursa_key(cluster, keys.KeyCreate, name, '--role', role, '--key-file',
             path)
    return path


def as_principal(cluster, name, path):
    return master_mod.MasterClient(
        list(cluster.master_urls), cluster.key,
        principal=(name, auth.load_key(path)))


def test_a_nova_ha_key_fences_but_deletes_no_volume(make_cluster, tmp_path):
    c = make_cluster(1)
    admin = c.client()
    admin.create_volume('vol1', 1 << 20, replicas=1, min_replicas=1)
    ha = as_principal(c, 'ha', create(c, tmp_path, 'ha', 'nova_ha'))
    with pytest.raises(exception.Forbidden) as e:
        ha.delete_volume('vol1')
    for words in ("'ha'", 'nova_ha', 'DELETE /volumes/{ref}'):
        assert words in str(e.value)
    assert admin.volume('vol1')['name'] == 'vol1'
    # What nova_ha calls.
    assert ha.cluster_status()['health']
    ha.fence_host('compute-9', 'test')
    assert ha.host('compute-9')['fenced']
    ha.unfence_host('compute-9')
    # Listed without its key; revoked, refused at once.
    _, rows = ursa_key(c, keys.KeyList)
    assert [r[:2] for r in rows] == [('ha', 'nova_ha')]
    with open(tmp_path / 'ha.key') as f:
        assert f.read().strip() not in json.dumps(admin.principals())
    ursa_key(c, keys.KeyRevoke, 'ha')
    with pytest.raises(exception.NotAuthorized, match='unknown principal'):
        ha.cluster_status()


def test_rotation_keeps_the_old_key_for_its_window(make_cluster, tmp_path):
    c = make_cluster(1)
    path = create(c, tmp_path, 'ha', 'nova_ha')
    old = as_principal(c, 'ha', path)
    old.cluster_status()
    window = 3.0
    ursa_key(c, keys.KeyRotate, 'ha', '--key-file', path, '--window',
             str(window))
    rotated = time.time()
    new = as_principal(c, 'ha', path)       # the file now holds the new key
    new.cluster_status()
    old.cluster_status()                    # within the window
    time.sleep(max(0.0, rotated + window + 0.5 - time.time()))
    with pytest.raises(exception.NotAuthorized, match="principal 'ha'"):
        old.cluster_status()
    new.cluster_status()


def test_a_chunk_server_signs_as_its_own_principal(make_cluster, tmp_path):
    c = make_cluster(1)
    # Named after its host ([ursa_chunkserver] host): it may speak for
    # that host's servers only.
    host = socket.gethostname()
    path = create(c, tmp_path, host, 'chunkserver')
    c.kill_chunkserver(0)
    c.cs_extra_conf[0] = ('[ursa]\nprincipal = %s\nprincipal_key_file = '
                          '%s\n' % (host, path))
    c.start_chunkserver(0)          # registers: waits for it to be up
    # It serves I/O (it asks the master for chunk maps and volumes).
    c.client().create_volume('vol1', 4 << 20, replicas=1, min_replicas=1,
                             chunk_size=1 << 20)
    with sync.SyncCluster(list(c.master_urls), c.key) as cl:
        v = cl.open_volume('vol1')
        v.write(0, b'x' * 4096)
        assert v.read(0, 4096) == b'x' * 4096
        v.close()
    log = os.path.join(c.data_dir, 'cs0.log')
    with open(log) as f:
        text = f.read()
    assert 'Forbidden' not in text and 'not_authorized' not in text, text
    # It signs as its principal: revoked, its heartbeats are refused and
    # the master sees it down.
    ursa_key(c, keys.KeyRevoke, host)
    wait_for(lambda: [s['state'] for s in c.client().servers()] != ['up'],
             20, 'chunk server 0 down after its principal was revoked')
    with open(log) as f:
        assert 'unknown principal %r' % host in f.read()


def send(url, authority, method, path, value):
    """One request to master ``url`` with ``X-Ursa-Auth: value`` and
    ``Host: authority``: (status, JSON body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, headers={auth.HEADER: value,
                                            'Host': authority})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b'{}')
    finally:
        conn.close()


def test_a_request_signed_for_one_master_is_refused_by_another(
        make_cluster):
    c = make_cluster(1, masters=2)
    admin = c.client()
    admin.volumes()
    leader = admin.urls[0]          # the one that answered
    standby = [u for u in c.master_urls if u != leader][0]
    # A request on its way to the standby, captured and replayed to the
    # leader as it was (its Host header too: the signature covers it).
    for_standby = auth.authority(standby)
    value = auth.sign(c.key, 'GET', '/v1/volumes', principal='admin',
                      authority=for_standby)
    status, reply = send(leader, for_standby, 'GET', '/v1/volumes', value)
    assert status == 401, reply
    assert 'signed for the master at %r' % for_standby in \
        reply['error']['message']
    # With the leader's Host instead: the signature does not match.
    status, reply = send(leader, auth.authority(leader), 'GET',
                         '/v1/volumes', value)
    assert status == 401 and 'bad signature' in reply['error']['message']
    # Signed for the leader, it is accepted there.
    value = auth.sign(c.key, 'GET', '/v1/volumes', principal='admin',
                      authority=auth.authority(leader))
    assert send(leader, auth.authority(leader), 'GET', '/v1/volumes',
                value)[0] == 200
