"""The nova_ha database: every process creates the tables at start."""

import subprocess
import sys

from tests.fixtures.processes import Spawned

SCRIPT = '''
import sys
from nova_ha import db
db.Store(sys.argv[1])
'''


def test_processes_starting_together_all_get_the_tables(tmp_path):
    """Agents, evacuators and the CLI start at once on a fresh database:
    none of them fails on a table another one is creating."""
    for round_ in range(8):
        url = 'sqlite:///%s' % (tmp_path / ('r%d.sqlite' % round_))
        with Spawned() as spawned:
            procs = [spawned.spawn([sys.executable, '-c', SCRIPT, url],
                                   stderr=subprocess.PIPE, text=True)
                     for _ in range(7)]
            errors = [p.communicate(timeout=60)[1] for p in procs]
        failed = [e for p, e in zip(procs, errors, strict=True)
                  if p.returncode]
        assert not failed, failed[0]
