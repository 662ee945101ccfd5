"""The names a master accepts signatures for (review finding 4): its
URL, its bind address with the port, every name and address of its host
when it binds a wildcard, and [ursa_master] signature_names."""

import types

import pytest

from cinder_ursa.cmd import master


def mc(bind_host, *extra):
    return types.SimpleNamespace(bind_host=bind_host,
                                 signature_names=list(extra))


def test_a_bound_address_and_the_url():
    names = master.signature_names(mc('10.0.0.11'), 'http://CTL1:9380',
                                   9380, False)
    assert names == {'ctl1:9380', '10.0.0.11:9380'}
    # Another master's names are not among them.
    assert '10.0.0.12:9380' not in names


def test_a_wildcard_is_every_name_of_this_host():
    names = master.signature_names(
        mc('0.0.0.0', 'ursa.example.com', 'vip:9443'), 'http://0.0.0.0:9380',
        9380, True, hosts=lambda: {'ctl1', '10.0.0.11', 'fd00::11'})
    # The URL names no host: nothing of it.
    assert names == {'ctl1:9380', '10.0.0.11:9380', '[fd00::11]:9380',
                     'ursa.example.com:443', 'vip:9443'}


def test_this_hosts_names_include_loopback_and_its_host_name():
    hosts = master.local_hosts()
    assert {'127.0.0.1', 'localhost'} <= hosts
    assert master.socket.gethostname() in hosts


@pytest.mark.parametrize('bad', ['a:b:c', 'host/path', 'h:99999999', ''])
def test_a_bad_signature_name_is_refused(bad):
    with pytest.raises(ValueError, match='signature_names'):
        master.signature_names(mc('127.0.0.1', bad), 'http://h:1', 1,
                               False)
