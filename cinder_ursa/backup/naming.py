"""The names the backup driver gives what it keeps (see backup/driver.py);
here, apart, so that the volume driver finds the base snapshots it must
delete with a volume without importing cinder-backup's modules."""

import re

CHAIN = '%s.backups'                # on the backup cluster: volume.name
POINT = 'backup-%s'                 # the chain's snapshot: backup.id
BASE = 'backup-%s.base'             # the source volume's snapshot
META = '%s.backup-%s.meta'          # volume.name, backup.id
BASE_RE = re.compile(r'backup-[0-9a-f-]{36}\.base\Z')
# What the backup driver keeps in a cluster that is also the volumes'.
KEPT_VOLUME_RE = re.compile(
    r'.*\.backups\Z|.*\.backup-[0-9a-f-]{36}\.meta\Z')


def kept_by_backups(volume_name, snapshot_name=None):
    """Whether a volume (or one of its snapshots) is the backup
    driver's: a chain, a backup's metadata, or a base snapshot."""
    if KEPT_VOLUME_RE.match(volume_name):
        return True
    return snapshot_name is not None and bool(BASE_RE.match(snapshot_name))


def base_snapshots(snapshots):
    """The names of the backup base snapshots among a volume's
    snapshots (the master's records)."""
    return [s['name'] for s in snapshots if BASE_RE.match(s['name'])]
