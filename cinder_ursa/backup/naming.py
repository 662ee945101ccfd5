"""The names the backup driver gives what it keeps (see backup/driver.py);
here, apart, so that the volume driver finds the base snapshots it must
delete with a volume without importing cinder-backup's modules."""

import re

CHAIN = '%s.backups'                # on the backup cluster: volume.name
POINT = 'backup-%s'                 # the chain's snapshot: backup.id
BASE = 'backup-%s.base'             # the source volume's snapshot
META = '%s.backup-%s.meta'          # volume.name, backup.id
BASE_RE = re.compile(r'backup-[0-9a-f-]{36}\.base\Z')


def base_snapshots(snapshots):
    """The names of the backup base snapshots among a volume's
    snapshots (the master's records)."""
    return [s['name'] for s in snapshots if BASE_RE.match(s['name'])]
