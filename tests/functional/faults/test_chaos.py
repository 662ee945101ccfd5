"""The chaos run's short configuration (tests/chaos.py, tools/chaos):
seventy-five seconds of seeded random faults of every kind against five
chunk servers in network namespaces (two on power-loss disks, one on a
disk that fails on demand), two masters and the NBD gateway, under model
writers and fio with verify; at the end no verify error, no divergent or
missing replica, every chunk at full copies.  The seed is in the failure's
message: ``tools/chaos --seed N --duration 75 --chunkservers 5 --hold 2,8``
replays the schedule; hours-long runs are ``tools/chaos`` with its
defaults."""

import json

import pytest

from tests import chaos
from tests.fixtures import netns
from tests.fixtures import powerloss
from tests.fixtures.services import unavailable
from tests.functional.nbd.test_nbd import need

pytestmark = pytest.mark.timeout(1500)


def test_the_short_chaos_run_keeps_every_promise(tmp_path):
    netns.require()
    why = powerloss.missing()
    if why:
        unavailable(why)
    need('fio')
    args = chaos.parse(['--duration', '75', '--chunkservers', '5',
                        '--scrub-interval', '30', '--quiet', '2,5',
                        '--hold', '2,8',
                        '--converge-timeout', '240',
                        '--workdir', str(tmp_path)])
    report = chaos.run(args)
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    assert report['failures'] == [], text
    assert report['verify_errors'] == 0, text
    assert report['divergent_replicas'] == 0, text
    assert report['chunks_below_full_copies'] == 0, text
    # The run did what it says: faults of several kinds, data verified.
    assert len(report['faults']) >= 4, text
    assert report['model_writer']['flushes'] > 0, text
    assert report['fio']['bytes_verified'] > 0, text
