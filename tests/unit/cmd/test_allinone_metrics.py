"""ursa-aio's /metrics endpoints (AllInOne(metrics=True)): a port of its
own for each service in the configuration it writes, kept when the
configuration is written again (a dynamic port learned, a process
started again), and none without ``metrics``."""

import configparser

from cinder_ursa.cmd.allinone import AllInOne


def sections(path):
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(path)
    return conf


def test_without_metrics_no_service_gets_an_endpoint(tmp_path):
    aio = AllInOne(str(tmp_path), 3, port_base=0)
    aio.write_config()
    conf = sections(aio.conf_file)
    for group in ('ursa_master', 'ursa_nbd', 'ursa_attach',
                  'ursa_chunkserver'):
        assert 'metrics_port' not in conf[group]
    assert aio.metrics_targets() == {}


def test_each_service_gets_a_port_of_its_own_kept_across_rewrites(tmp_path):
    aio = AllInOne(str(tmp_path), 3, port_base=0, metrics=True)
    aio.write_config()
    conf = sections(aio.conf_file)
    ports = {g: conf[g].getint('metrics_port')
             for g in ('ursa_master', 'ursa_nbd', 'ursa_attach')}
    assert all(ports.values()) and len(set(ports.values())) == 3, ports
    for g in ports:
        assert conf[g]['metrics_host'] == '127.0.0.1'
    # The chunk servers have theirs in their own files, not the shared one.
    assert 'metrics_port' not in conf['ursa_chunkserver']

    aio.master_ports[0] = 12345       # as when a dynamic port is learned
    aio.write_config()
    again = sections(aio.conf_file)
    assert {g: again[g].getint('metrics_port') for g in ports} == ports
    assert aio.metrics_ports['master'] == ports['ursa_master']


def test_chunk_servers_and_standby_masters_have_ports_of_their_own(
        tmp_path):
    """The lines start_chunkserver and start_master add to their own
    files (tests/functional/test_prometheus.py starts them)."""
    aio = AllInOne(str(tmp_path), 2, port_base=0, metrics=True, masters=2)
    aio.write_config()
    lines = aio._metrics_conf('cs1')
    assert lines == aio._metrics_conf('cs1')       # same port each time
    port = int(lines[1].split(' = ')[1])
    assert lines == ['metrics_host = 127.0.0.1', 'metrics_port = %d' % port]
    assert port not in (aio.metrics_ports['master'],
                        aio.metrics_ports['nbd'])
    assert aio._metrics_conf('master1') != aio._metrics_conf('master')
    # Nothing started yet: nothing to scrape.
    assert aio.metrics_targets() == {}
