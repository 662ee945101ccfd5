"""The Monitoring guide (doc/source/monitoring.rst) and the metrics the
processes declare agree both ways: every family the guide names is one a
process exports (a renamed family fails here), and every family a process
exports is in the guide (a new one must be documented).  The registries
are built as the services build them, SMART included; nothing listens."""

import os
import re

import pytest

from cinder_ursa.chunkserver import server as cs_server
from cinder_ursa.chunkserver import smart
from tests.unit import test_dashboard

GUIDE = os.path.join(test_dashboard.ROOT, 'doc', 'source', 'monitoring.rst')
# ``<prefix>_operations_total{op}`` and the like stand for the families of
# these prefixes (the guide writes them once for the three services).
PREFIXES = ('ursa_chunkserver', 'ursa_nbd', 'ursa_attach_io')
TEMPLATE = ('_operations_total', '_operation_bytes_total',
            '_operation_errors_total', '_operation_latency_seconds')
NAME = re.compile(r'``((?:ursa|nova_ha)_[a-z0-9_]+)(?:\{[^}]*\})?``')


def documented():
    with open(GUIDE) as f:
        text = f.read()
    names = set(NAME.findall(text)) - set(PREFIXES)
    assert '<prefix>_operations_total{op}' in text
    names |= {p + t for p in PREFIXES for t in TEMPLATE}
    return names


@pytest.fixture(scope='module')
def families(tmp_path_factory):
    """Every Ursa family name (counters with their ``_total``), of every
    process's registry, the chunk server's with SMART on."""
    samples = test_dashboard.exported.__wrapped__(tmp_path_factory)
    tmp = tmp_path_factory.mktemp('smart')
    cs = cs_server.ChunkServer(str(tmp / 'cs'), b'k' * 32,
                               ['http://127.0.0.1:1'],
                               smart=smart.SmartPoller(str(tmp / 'cs')))
    for fam in cs.metrics.registry.collect():
        kind = fam.type
        name = fam.name + ('_total' if kind == 'counter' else '')
        samples[name] = kind
    out = set()
    for name, kind in samples.items():
        if kind == 'histogram':
            name = re.sub(r'_(bucket|sum|count)$', '', name)
        out.add(name)
    return {n for n in out if n.startswith('ursa_')}


def test_every_family_the_guide_names_is_exported(families):
    missing = {n for n in documented() if n.startswith('ursa_')} - families
    assert not missing, sorted(missing)


def test_every_exported_family_is_in_the_guide(families):
    undocumented = families - documented()
    assert not undocumented, sorted(undocumented)


def test_the_prefix_template_covers_real_families(families):
    for p in PREFIXES:
        assert p + '_operations_total' in families, p
