"""The package layering, checked on the imports: ``protocol`` and
``common`` at the bottom (no I/O in ``protocol``), ``transport`` on them,
``master``, ``chunkserver`` and ``client`` side by side and never
importing one another, the gateway, driver, connector and commands on
top (the host attach agent beside the gateway).  The chunk servers reach
the master through the REST client, ``client.master``, and nothing else
of ``client``.  Neither ``protocol`` nor ``common`` does network I/O.
``nova_ha`` uses Ursa through the REST client only."""

import ast
import pathlib

import cinder_ursa

ROOT = pathlib.Path(cinder_ursa.__file__).parent

# package -> packages of ours it must never import
FORBIDDEN = {
    'protocol': {'transport', 'master', 'chunkserver', 'client', 'cmd',
                 'common', 'nbd', 'attach'},
    'common': {'transport', 'master', 'chunkserver', 'client', 'cmd', 'nbd',
               'attach'},
    'transport': {'master', 'chunkserver', 'client', 'cmd', 'nbd', 'attach'},
    'master': {'chunkserver', 'client', 'cmd', 'nbd', 'attach'},
    'chunkserver': {'master', 'client', 'cmd', 'nbd', 'attach'},
    'client': {'master', 'chunkserver', 'cmd', 'nbd', 'attach'},
    'nbd': {'master', 'chunkserver', 'cmd', 'attach'},
    'attach': {'master', 'chunkserver', 'cmd', 'nbd', 'volume', 'brick'},
    'volume': {'master', 'chunkserver', 'nbd', 'cmd', 'attach'},
    'brick': {'master', 'chunkserver', 'client', 'nbd', 'cmd', 'volume',
              'attach'},
}

# Modules of a forbidden package that a package may still import.
ALLOWED = {
    'chunkserver': {'cinder_ursa.client.master'},
}

# Modules the sans-I/O layer must never import.
IO_MODULES = {'asyncio', 'socket', 'ssl', 'os', 'aiohttp', 'urllib',
              'http', 'sqlalchemy', 'subprocess', 'threading'}

# Network I/O: never in the bottom layer (``common`` may still read files
# and build a database engine).
NETWORK_MODULES = {'socket', 'ssl', 'asyncio', 'aiohttp', 'urllib',
                   'http.client', 'http.server', 'requests'}

# What nova_ha may import of ours: the REST client and its exceptions,
# the [ursa] options that configure that client, and the SQLAlchemy engine
# helper (SQLite pragmas) for nova_ha's own state database, and the
# /metrics server every Ursa process uses.
NOVA_HA = pathlib.Path(cinder_ursa.__file__).parent.parent / 'nova_ha'
NOVA_HA_MAY_IMPORT = {'cinder_ursa.exception', 'cinder_ursa.client.master',
                      'cinder_ursa.common.opts', 'cinder_ursa.common.db',
                      'cinder_ursa.transport.metrics'}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            # ``from a.b import c``: a.b.c (c may be a module or a name).
            yield from ('%s.%s' % (node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def imported_packages(path):
    """(package, module) of each import of ours."""
    for name in imported_modules(path):
        parts = name.split('.')
        if parts[0] == 'cinder_ursa' and len(parts) > 1:
            yield parts[1], name


def _allowed(pkg, module):
    return _is(module, ALLOWED.get(pkg, ()))


def test_the_protocol_layer_does_no_io():
    bad = ['%s imports %s' % (path.relative_to(ROOT), name)
           for path in (ROOT / 'protocol').rglob('*.py')
           for name in imported_modules(path)
           if name.split('.')[0] in IO_MODULES]
    assert not bad, bad


def _is(module, names):
    return any(module == n or module.startswith(n + '.') for n in names)


def test_the_bottom_layer_does_no_network_io():
    bad = ['%s imports %s' % (path.relative_to(ROOT), name)
           for pkg in ('protocol', 'common')
           for path in (ROOT / pkg).rglob('*.py')
           for name in imported_modules(path)
           if _is(name, NETWORK_MODULES)]
    assert not bad, bad


def test_nova_ha_uses_ursa_through_the_rest_client_only():
    paths = list(NOVA_HA.rglob('*.py'))
    assert len(paths) > 5
    bad = ['%s imports %s' % (path.relative_to(NOVA_HA.parent), name)
           for path in paths for name in imported_modules(path)
           if name.split('.')[0] == 'cinder_ursa'
           and not _is(name, NOVA_HA_MAY_IMPORT)]
    assert not bad, bad


def test_layers():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (ROOT / pkg).rglob('*.py'):
            for dep, module in imported_packages(path):
                if dep in forbidden and not _allowed(pkg, module):
                    bad.append('%s imports %s' % (path.relative_to(ROOT),
                                                  module))
    assert not bad, bad


def test_library_layers_never_read_global_config():
    for pkg in ('protocol', 'common', 'transport', 'master', 'chunkserver',
                'client', 'nbd', 'attach'):
        for path in (ROOT / pkg).rglob('*.py'):
            assert 'cfg.CONF' not in path.read_text(), path
