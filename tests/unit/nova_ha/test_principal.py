"""nova_ha needs no cluster key: with a nova_ha principal's key alone it
fences through the master, signing as that principal."""

from oslo_config import cfg

from cinder_ursa.common import auth
from cinder_ursa.protocol import rest
from nova_ha import fence
from nova_ha import opts


def test_a_nova_ha_principal_alone_fences(tmp_path):
    key_file = tmp_path / 'nova-ha.key'
    key = auth.new_key()
    auth.write_key_file(str(key_file), key)
    conf_file = tmp_path / 'nova-ha.conf'
    conf_file.write_text(
        '[ursa]\nmaster_url = http://ctl1:9380\nprincipal = nova-ha\n'
        'principal_key_file = %s\n' % key_file)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[str(conf_file)])
    fences = fence.fences_from_conf(conf)
    assert [f.name for f in fences] == ['ursa']
    http = fences[0].master._http
    assert http.principal == ('nova-ha', key)
    # No cluster key configured: the client was made all the same.
    # What it sends: a v3 signature of nova-ha for ctl1:9380.
    (_, _, _, headers), = http.attempts(rest.host('h1'), None)
    value = headers[auth.HEADER]
    assert auth.principal_of(value) == 'nova-ha'
    assert auth.verify(key, 'GET', '/v1/hosts/h1', '', value,
                       authority='ctl1:9380',
                       names=frozenset({'ctl1:9380'})).principal == 'nova-ha'
