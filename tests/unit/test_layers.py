"""The package layering of DESIGN.md / STYLE.md, checked on the imports."""

import ast
import pathlib

import cinder_ursa

ROOT = pathlib.Path(cinder_ursa.__file__).parent

# package -> packages of ours it must never import
FORBIDDEN = {
    'protocol': {'transport', 'master', 'chunkserver', 'client', 'cmd',
                 'common', 'nbd'},
    'common': {'transport', 'master', 'chunkserver', 'client', 'cmd', 'nbd'},
    'transport': {'master', 'chunkserver', 'client', 'cmd', 'nbd'},
    'master': {'chunkserver', 'client', 'cmd', 'nbd'},
    'chunkserver': {'master', 'client', 'cmd', 'nbd'},
    'client': {'master', 'chunkserver', 'cmd', 'nbd'},
    'nbd': {'master', 'chunkserver', 'cmd'},
}


def imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[0] == 'cinder_ursa' and len(parts) > 1:
                yield parts[1]


def test_layers():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (ROOT / pkg).rglob('*.py'):
            for dep in imported_packages(path):
                if dep in forbidden:
                    bad.append('%s imports cinder_ursa.%s' % (
                        path.relative_to(ROOT), dep))
    assert not bad, bad


def test_library_layers_never_read_global_config():
    for pkg in ('protocol', 'common', 'transport', 'master', 'chunkserver',
                'client', 'nbd'):
        for path in (ROOT / pkg).rglob('*.py'):
            assert 'cfg.CONF' not in path.read_text(), path
