"""nova-compute with the end-to-end stack's hypervisor
(``compute_driver = ursa_guest.UrsaGuestDriver``, tests/e2e/virt): Nova
loads virt drivers from the ``nova.virt`` package only, so this adds
tests/e2e/virt to that package's path, then runs nova-compute.

    python -m tests.e2e.nova_compute --config-file nova.conf ...
"""

import os
import sys

import nova.virt  # noqa: I001 - first: nova's import patches eventlet in

nova.virt.__path__.append(os.path.join(os.path.dirname(
    os.path.abspath(__file__)), 'virt'))

from nova.cmd import compute  # noqa: E402

if __name__ == '__main__':
    sys.argv[0] = 'nova-compute'
    sys.exit(compute.main())
