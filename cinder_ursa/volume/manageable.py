"""Manage and unmanage: existing Ursa volumes and snapshots taken under
Cinder (renamed to Cinder's names), and the lists of those that could be,
each with why it is not safe to manage when it is not."""

import json
import math

from cinder import exception as cinder_exc
from cinder.i18n import _
from cinder.volume import volume_utils

from cinder_ursa import exception
from cinder_ursa.backup import naming
from cinder_ursa.volume import images
from cinder_ursa.volume.common import DriverPart
from cinder_ursa.volume.common import gib
from cinder_ursa.volume.common import translated


def ref_name(existing_ref):
    """The Ursa name (or id) a manage reference gives, or None."""
    return existing_ref.get('source-name') or existing_ref.get('source-id')


class Manageable(DriverPart):
    """The manage calls of
    :class:`~cinder_ursa.volume.driver.UrsaDriver`."""

    def existing(self, existing_ref):
        name = ref_name(existing_ref)
        if not name:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('give source-name (or source-id): an Ursa volume '
                         'name or id'))
        try:
            return self._master.volume(name)
        except exception.NotFound:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('no Ursa volume %s') % name) from None

    def manage(self, volume, existing_ref):
        vol = self.existing(existing_ref)
        if (vol.get('lease') or {}).get('holder'):
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('Ursa volume %(name)s is open for writing by '
                         '%(holder)s') % {'name': vol['name'],
                                          'holder': vol['lease']['holder']})
        with translated('Managing %s' % vol['name']):
            self._master.rename_volume(vol['id'], volume.name)
            self.driver._apply_qos(volume)

    def size(self, volume, existing_ref):
        return int(math.ceil(gib(self.existing(existing_ref)['size'])))

    def existing_snapshot(self, snapshot, existing_ref):
        name = ref_name(existing_ref)
        if not name:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('give source-name: the Ursa snapshot name on the '
                         'volume'))
        try:
            return self._master.snapshot('%s@%s' % (snapshot.volume_name,
                                                    name))
        except exception.NotFound:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('volume %(vol)s has no Ursa snapshot %(name)s') % {
                    'vol': snapshot.volume_name, 'name': name}) from None

    def manage_snapshot(self, snapshot, existing_ref):
        snap = self.existing_snapshot(snapshot, existing_ref)
        with translated('Managing snapshot %s' % snap['name']):
            self._master.rename_snapshot(snap['id'], snapshot.name)

    def snapshot_size(self, snapshot, existing_ref):
        snap = self.existing_snapshot(snapshot, existing_ref)
        return int(math.ceil(gib(snap['size'])))

    def volumes(self, cinder_volumes, marker, limit, offset, sort_keys,
                sort_dirs):
        """Cinder's manageable-volume listing, with the semantics of
        ``volume_utils.paginate_entries_list``: sorted by ``sort_keys``
        (``reference``: the name; ``size``), the entries after the one
        whose reference is ``marker`` (a dict or its JSON; InvalidInput
        when it is not listed), ``offset`` of them skipped, ``limit``
        returned.

        Sorted by reference first (Cinder's default, descending), the
        cluster pages by name itself: only the ``offset + limit`` volumes
        past the marker are asked for, a page at a time, however many
        the cluster holds.  The names are ordered as the master's
        database orders them (byte order on SQLite; Cinder's and Ursa's
        own names sort alike everywhere).  Sorted by size first, every
        volume is read, page after page, and sorted here as Cinder
        does."""
        managed = {v.name: v.id for v in cinder_volumes}
        keys = [k.strip() for k in sort_keys or ()]
        if keys[:1] != ['reference'] or not sort_dirs:
            with translated('Listing Ursa volumes'):
                entries = [self._volume_entry(v, managed)
                           for v in self._master.iter_volumes()]
            return volume_utils.paginate_entries_list(
                entries, marker, limit, offset, sort_keys, sort_dirs)
        name = self._marker_name(marker)
        offset = offset or 0
        if limit <= 0:
            return []
        with translated('Listing Ursa volumes'):
            # A marker deleted or renamed meanwhile: InvalidInput, as
            # Cinder's own listing says of a marker it does not find.
            vols, _ = self._master.volumes_page(
                offset + limit, name, descending=sort_dirs[0] != 'asc')
        return [self._volume_entry(v, managed) for v in vols[offset:]]

    @staticmethod
    def _marker_name(marker):
        """The Ursa volume name a manageable listing's marker names
        (None without one), or InvalidInput as Cinder's own
        paginate_entries_list says it."""
        if not marker:
            return None
        if not isinstance(marker, dict):
            try:
                marker = json.loads(marker)
            except ValueError:
                raise cinder_exc.InvalidInput(
                    reason=_('marker %s can not be analysed, please use '
                             'json like format') % marker) from None
        name = marker.get('source-name') if isinstance(marker, dict) \
            else None
        if not isinstance(name, str) or len(marker) != 1:
            # No entry has another reference (paginate_entries_list
            # compares whole references).
            raise cinder_exc.InvalidInput(
                reason=_('marker not found: %s') % marker)
        return name

    @staticmethod
    def _volume_entry(v, managed):
        """The manageable-volume entry of Ursa volume ``v``, with why it
        is not safe to manage when it is not."""
        reason = None
        if v['name'] in managed:
            reason = _('already managed')
        elif v['name'].startswith(images.IMAGE_CACHE_PREFIX):
            reason = _('Ursa image cache of this backend')
        elif naming.kept_by_backups(v['name']):
            reason = _('kept by the Ursa backup driver')
        elif (v.get('lease') or {}).get('holder'):
            reason = _('open for writing by %s') % v['lease']['holder']
        return {
            'reference': {'source-name': v['name']},
            'size': int(math.ceil(gib(v['size']))),
            'safe_to_manage': reason is None,
            'reason_not_safe': reason,
            'cinder_id': managed.get(v['name']),
            'extra_info': 'allocated %d bytes' % v.get(
                'allocated_bytes', 0)}

    def snapshots(self, cinder_snapshots, marker, limit, offset, sort_keys,
                  sort_dirs):
        managed = {(s.volume_name, s.name): s.id for s in cinder_snapshots}
        entries = []
        with translated('Listing Ursa snapshots'):
            snaps = self._master.snapshots()
        for s in snaps:
            key = (s['volume_name'], s['name'])
            reason = None
            if key in managed:
                reason = _('already managed')
            elif s['name'].startswith('clone-') or \
                    s['volume_name'].startswith(images.IMAGE_CACHE_PREFIX):
                reason = _('used by this driver')
            elif naming.kept_by_backups(s['volume_name'], s['name']):
                reason = _('kept by the Ursa backup driver')
            entries.append({
                'reference': {'source-name': s['name']},
                'size': int(math.ceil(gib(s['size']))),
                'safe_to_manage': reason is None,
                'reason_not_safe': reason,
                'cinder_id': managed.get(key),
                'extra_info': None,
                'source_reference': {'source-name': s['volume_name']}})
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)
