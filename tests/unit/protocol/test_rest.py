"""The REST request descriptions: paths quoted once, the bodies the
master reads, every request on one of the master's routes, and error
replies turned back into the master's exceptions."""

import inspect
import pathlib
import re
import urllib.parse

import pytest

import cinder_ursa
from cinder_ursa import exception
from cinder_ursa.protocol import rest

API = pathlib.Path(cinder_ursa.__file__).parent / 'master' / 'api.py'


def _routes():
    """(method, regex) of each route the master's REST app adds."""
    text = API.read_text()
    out = []
    for method, path in re.findall(
            r"add_(get|post|put|patch|delete)\(\s*v \+ '([^']*)'", text):
        pattern = re.sub(r'\\\{[a-z]+\\\}', '[^/]+', re.escape(path))
        out.append((method.upper(), re.compile(pattern + '$')))
    return out


def _every_request():
    """One request from each endpoint function, with awkward names."""
    args = {'ref': 'a b/c@d', 'volume': 'vol 1', 'snapshot': 'v@s',
            'name': 'n?x', 'host': 'h#1', 'size': 1, 'start': 0,
            'count': 4, 'index': 3, 'server_id': 2, 'epoch': 5,
            'holder': 'h:1', 'generation': 7, 'ttl': 30, 'usage': {},
            'interval': 1.0,
            'status': 'attached', 'reason': 'test', 'on': True,
            'action': 'join', 'role': 'host', 'wrapped_key': 'ab',
            'nonce': 'cd', 'window': 60}
    for fname, fn in inspect.getmembers(rest, inspect.isfunction):
        if fname.startswith('_') or fn.__module__ != rest.__name__ or \
                fname in ('quote', 'error_from_body'):
            continue
        params = inspect.signature(fn).parameters
        kwargs = {p: args[p] for p, spec in params.items()
                  if spec.default is spec.empty and spec.kind
                  == spec.POSITIONAL_OR_KEYWORD}
        yield fname, fn(**kwargs)
    yield 'promote', rest.change_members('v', 0, 'promote', 1, 2)
    yield 'abandon', rest.change_members('v', 0, 'abandon', 1, 2)
    yield 'snapshots of a volume', rest.snapshots('v')
    yield 'attachments of a volume', rest.attachments('v')


def test_every_request_is_on_a_route_of_the_master():
    routes = _routes()
    assert len(routes) > 30
    reqs = list(_every_request())
    assert len(reqs) >= 35
    for fname, req in reqs:
        assert any(m == req.method and r.match(req.path)
                   for m, r in routes), (fname, req)


@pytest.mark.parametrize('ref', [
    'vol1', 'a b', 'a/b', 'v@snap', 'x?y#z', '%41', 'caf\u00e9', '~._-', 42])
def test_quote_is_urllib_quote_keeping_at(ref):
    assert rest.quote(ref) == urllib.parse.quote(str(ref), safe='@')


def test_paths_are_quoted_once():
    assert rest.volume('a b/c').path == '/volumes/a%20b%2Fc'
    assert rest.snapshot('v 1@s/1').path == '/snapshots/v%201@s%2F1'
    assert rest.attachment('v/1', 'host 1').path == \
        '/volumes/v%2F1/attachments/host%201'
    assert rest.fence_host('h/1').path == '/hosts/h%2F1/fence'
    assert rest.drop_replica('v 1', 3, 2, 5).path == \
        '/volumes/v%201/chunks/3/drop'
    assert rest.heartbeat(4, {}).path == '/chunkservers/4/heartbeat'


def test_bodies_params_and_results():
    assert rest.create_volume('v', 10, replicas=None, qos={}) == (
        'POST', '/volumes', {'name': 'v', 'size': 10, 'qos': {}}, None,
        'volume', None)
    assert rest.clone('v@s', 'c', 20, replicas=2).body == {
        'name': 'c', 'snapshot': 'v@s', 'replicas': 2, 'size': 20}
    assert rest.clone('v@s', 'c').body == {'name': 'c', 'snapshot': 'v@s'}
    assert rest.resize('v', 5).body == {'size': 5}
    assert rest.resize('v', 5, force=0).body == {'size': 5, 'force': False}
    assert rest.update_volume('v', qos={}, multiattach=True) == (
        'PATCH', '/volumes/v', {'qos': {}, 'multiattach': True}, None,
        'volume', None)
    assert rest.acquire_lease('v', 'h', True).body == {'holder': 'h',
                                                       'force': True}
    assert rest.acquire_lease('v', 'h', ttl=9).body['ttl'] == 9
    assert rest.release_lease('v', 'h', 3) == (
        'DELETE', '/volumes/v/lease', None, {'holder': 'h',
                                             'generation': 3}, None, None)
    # A registration waits longer, by the replicas it lists.
    assert rest.register_server(chunks=[('v', 0, 1)]).timeout < 31
    assert rest.register_server(held={'v': [0, 1] * 10 ** 6}).timeout == 60
    assert rest.chunk_map('v', 8, 2, True).params == {
        'start': 8, 'count': 2, 'allocate': 1}
    assert rest.attachments().path == '/attachments'
    assert rest.attachments(host='h').params == {'host': 'h'}
    assert rest.attachments('v').params is None
    assert rest.snapshots().path == '/snapshots'
    assert rest.snapshots('v').path == '/volumes/v/snapshots'
    assert rest.update_attachment('v', 'h', 'error', error='x').body == {
        'status': 'error', 'path': None, 'error': 'x'}
    assert rest.revoke_lease('v').body is None
    assert rest.servers().result == 'chunkservers'
    assert rest.cluster_status().result is None


def test_error_bodies_become_the_masters_exceptions():
    e = rest.error_from_body(
        404, '{"error": {"code": "not_found", "message": "no volume x"}}')
    assert isinstance(e, exception.NotFound) and str(e) == 'no volume x'
    e = rest.error_from_body(
        409, '{"error": {"code": "what", "message": "m"}}')
    assert isinstance(e, exception.InternalError) and str(e) == 'm'
    for text in ('<html>bad gateway</html>', '{}', '[1]', '',
                 '{"error": "x"}'):
        e = rest.error_from_body(502, text)
        assert isinstance(e, exception.InternalError)
        assert 'HTTP 502 from the master' in str(e)


def test_qos_keys_are_defined_once():
    from cinder_ursa.client import qos
    from cinder_ursa.master.store import common
    assert qos.QOS_KEYS is common.QOS_KEYS is rest.QOS_KEYS


def test_chunk_info_from_a_chunk_map_entry():
    c = rest.ChunkInfo.from_json({'index': 3, 'epoch': 9, 'replicas': [
        {'id': 2, 'address': '10.0.0.2', 'port': 7000, 'state': 'up'},
        {'id': 5, 'address': '10.0.0.5', 'port': 7001}]})
    assert (c.index, c.epoch) == (3, 9)
    assert c.replicas == [(2, '10.0.0.2', 7000), (5, '10.0.0.5', 7001)]
