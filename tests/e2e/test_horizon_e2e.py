"""An operator and a user manage Ursa volumes in the Horizon dashboard,
through headless Chromium: every step checks what the page shows against
what the Cinder API and the ``ursa`` CLI say (the same size, state and
count everywhere), and the bytes through the NBD gateway where data
moves (backup, clone).  Screenshots of the main pages are saved in
``$URSA_ARTIFACTS/horizon`` (default: ``test-artifacts/horizon`` in the
source tree)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.e2e import glance_harness
from tests.e2e import harness
from tests.e2e import horizon
from tests.e2e.test_cinder_e2e import pattern_is
from tests.e2e.test_cinder_e2e import qemu_io
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.timeout(1200)

GiB = 1024 ** 3
VOLUMES = '/project/volumes/'
SNAPSHOTS = '/project/snapshots/'
BACKUPS = '/project/backups/'


def artifacts():
    return os.path.join(os.environ.get('URSA_ARTIFACTS') or os.path.join(
        horizon.ROOT, 'test-artifacts'), 'horizon')


@pytest.fixture
def dashboard(stack):
    if not os.path.exists(horizon.CHROMIUM) or not os.path.exists(
            horizon.CHROMEDRIVER):
        harness.need(('chromium', 'chromedriver'))
    driver = horizon.chromium()
    try:
        yield horizon.Dashboard(driver, stack.horizon.url, artifacts())
    except Exception:
        print(stack.horizon.errors())
        raise
    finally:
        horizon.quit_chromium(driver)


def test_a_user_and_an_operator_manage_ursa_volumes_in_horizon(
        stack, dashboard, say):
    t0 = time.monotonic()
    story = Story(stack, dashboard)
    try:
        story.run()
    except Exception:
        dashboard.shot('failure')
        print('page %s; messages %s' % (dashboard.driver.current_url,
                                         dashboard.alerts()))
        print(stack.horizon.errors())
        raise
    finally:
        story.clean_up()
    say('e2e: Horizon story (%d steps in Chromium) took %.0f s (%s); '
        'screenshots in %s' % (story.steps, time.monotonic() - t0, ', '.join(
            '%s %.0f s' % t for t in story.times), artifacts()))


class Story:
    def __init__(self, stack, dash):
        self.stack = stack
        self.dash = dash
        self.master = stack.ursa.client()
        self.member = stack.keystone.session(harness.MEMBER, harness.MEMBER)
        self.admin = stack.keystone.session()
        self.steps = 0
        self.server = None
        self.times = []     # (part of the story, seconds)
        self._t = time.monotonic()

    def mark(self, part):
        """The story's ``part`` ends now: note how long it took."""
        now = time.monotonic()
        self.times.append((part, now - self._t))
        self._t = now

    # The three views of the same thing.
    def cinder(self, path, method='GET', body=None, session=None):
        r = (session or self.admin).request(
            self.stack.cinder.endpoint + path, method, json=body,
            headers={'OpenStack-API-Version': 'volume ' +
                     harness.VOLUME_API})
        return r.json() if r.content else {}

    def cinder_volumes(self):
        """Every volume by name and by id."""
        out = {}
        for v in self.cinder('/volumes/detail?all_tenants=1')['volumes']:
            out[v['name']] = out[v['id']] = v
        return out

    def ursa(self, *args):
        """The ``ursa`` CLI, as an operator runs it, in JSON."""
        r = subprocess.run(
            [sys.executable, '-m', 'cinder_ursa.cmd.cli', '--config',
             self.stack.ursa.conf_file] + list(args) + ['-f', 'json'],
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def ursa_volumes(self):
        return {v['name']: v for v in self.ursa('volume', 'list')}

    def same_everywhere(self, name, status, size_gib, page=VOLUMES):
        """Horizon's row of volume ``name`` (or id), Cinder's volume and
        Ursa's agree: status, size, and Ursa holds it under Cinder's id.
        Returns the id."""
        row = self.dash.wait_row(page, 'volumes', name,
                                 status=status.capitalize()
                                 if status != 'in-use' else 'In-use',
                                 size='%dGiB' % size_gib)
        vol = self.cinder_volumes()[name]
        assert (vol['status'], vol['size']) == (status, size_gib), vol
        assert row['id'] == vol['id']
        ursa = self.ursa('volume', 'show', 'volume-' + vol['id'])
        assert ursa['size'] == size_gib * GiB, ursa
        self.steps += 1
        return vol['id']

    def run(self):
        self.as_member()
        self.as_admin()

    # -- a project member ------------------------------------------------
    def as_member(self):
        d = self.dash
        status = self.ursa('cluster', 'status')
        # What Ursa holds before (trash included), to compare at the end.
        self.before = (status['volumes'], status['chunks'])
        d.login(harness.MEMBER, harness.PASSWORD)
        self.mark('member login')
        self.boot('hz-server')    # for the attach, below
        d.go(VOLUMES)
        d.table_action('Create Volume')
        form = d.form()
        d.fill(form, name='hz-vol', size=1)
        d.choose(form, 'type', 'ursa')
        d.shot('create-volume')
        d.submit(form, 'Create Volume')
        d.message('Info: Creating volume "hz-vol"')
        d.shot('volumes')
        vol = self.same_everywhere('hz-vol', 'available', 1)
        assert self.cinder_volumes()['hz-vol']['volume_type'] == 'ursa'
        qemu_io(self.stack, vol, 'write -P 0x5a 0 1M')

        self.mark('create')
        # A snapshot; a larger volume from it.
        d.row_action('volumes', 'hz-vol', 'Create Snapshot')
        form = d.form()
        d.fill(form, name='hz-snap')
        d.submit(form)
        d.message('Info: Creating volume snapshot "hz-snap"')
        snap = d.wait_row(SNAPSHOTS, 'volume_snapshots', 'hz-snap',
                          status='Available', size='1GiB')
        assert self.cinder('/snapshots/%s' % snap['id'])['snapshot'][
            'status'] == 'available'
        ursa_snaps = {s['name'] for s in self.ursa(
            'snapshot', 'list', '--volume', 'volume-' + vol)}
        assert 'snapshot-' + snap['id'] in ursa_snaps, ursa_snaps
        d.shot('snapshots')
        self.steps += 1
        d.row_action('volume_snapshots', 'hz-snap', 'Create Volume')
        form = d.form()
        d.fill(form, name='hz-from-snap', size=2)
        d.submit(form, 'Create Volume')
        d.message('Info: Creating volume "hz-from-snap"')
        from_snap = self.same_everywhere('hz-from-snap', 'available', 2)
        pattern_is(self.stack, from_snap, 0x5a)

        self.mark('snapshot, volume from it')
        # A backup, restored into a new volume, bytes and all.
        d.row_action('volumes', 'hz-vol', 'Create Backup')
        form = d.form()
        d.fill(form, name='hz-backup')
        d.submit(form, 'Create Volume Backup')
        d.message('Info: Creating volume backup "hz-backup"')
        backup = d.wait_row(BACKUPS, 'volume_backups', 'hz-backup',
                            timeout=300, status='Available', size='1 GB')
        assert self.cinder('/backups/%s' % backup['id'])['backup'][
            'status'] == 'available'
        assert self.master.attachments('volume-' + vol) == []
        d.shot('backups')
        self.steps += 1
        d.row_action('volume_backups', 'hz-backup', 'Restore Backup')
        form = d.form()
        d.choose(form, 'volume_id', 'Create a New Volume')
        d.submit(form, 'Restore Backup to Volume')
        said = d.message('Info: Request for restoring backup hz-backup')
        restored = re.search('with id: ([0-9a-f-]{36})', said).group(1)
        self.same_everywhere(restored, 'available', 1)
        # Cinder restores the source's metadata, its name with it: the
        # user renames the copy (below).
        assert self.cinder_volumes()[restored]['name'] == 'hz-vol'
        pattern_is(self.stack, restored, 0x5a)
        d.row_action('volumes', restored, 'Edit Volume')
        form = d.form()
        d.fill(form, name='hz-restored')
        d.submit(form)
        d.message('Info: Updating volume "hz-restored"')
        self.same_everywhere('hz-restored', 'available', 1)

        self.mark('backup, restore')
        # Extend.
        d.row_action('volumes', 'hz-vol', 'Extend Volume')
        form = d.form()
        d.fill(form, new_size=2)
        d.submit(form, 'Extend Volume')
        d.message('Info: Extending volume: "hz-vol"')
        self.same_everywhere('hz-vol', 'available', 2)

        self.mark('extend')
        # Attached to an instance: In-use, on the compute host's agent.
        self.active()
        d.row_action('volumes', 'hz-vol', 'Manage Attachments')
        form = d.find("form#attach_volume_form")
        d.choose(form, 'instance', 'hz-server')
        d.submit(form, 'Attach Volume')
        d.message('Info: Attaching volume hz-vol to instance hz-server')
        self.same_everywhere('hz-vol', 'in-use', 2)
        row = d.rows('volumes')['hz-vol']
        assert 'hz-server' in row['attached to'], row
        [att] = self.cinder_volumes()['hz-vol']['attachments']
        assert att['server_id'] == self.server
        ursa_att = self.master.attachments('volume-' + vol)
        assert [a['host'] for a in ursa_att] == [att['host_name']], ursa_att
        d.shot('volume-in-use')
        d.row_action('volumes', 'hz-vol', 'Manage Attachments')
        d.row_action('attachments', 'Volume hz-vol on instance hz-server',
                     'Detach Volume')
        d.confirm()
        d.message('Success: Detaching Volume')
        self.same_everywhere('hz-vol', 'available', 2)
        assert self.master.attachments('volume-' + vol) == []

        self.mark('attach, detach')
        # A clone of the volume; then the sources go first: Ursa keeps
        # what the clones still read (its trash) until they go too.
        d.go(VOLUMES)
        d.table_action('Create Volume')
        form = d.form()
        d.fill(form, name='hz-clone')
        d.choose(form, 'volume_source_type', 'Volume')
        d.choose(form, 'volume_source', 'hz-vol')
        d.submit(form, 'Create Volume')
        d.message('Info: Creating volume "hz-clone"')
        clone = self.same_everywhere('hz-clone', 'available', 2)
        parents = {v: self.ursa('volume', 'show', 'volume-' + v)['parent']
                   for v in (clone, from_snap)}
        assert parents[clone].startswith('volume-%s@' % vol), parents
        assert parents[from_snap] == 'volume-%s@snapshot-%s' % (
            vol, snap['id']), parents
        self.delete('volume_snapshots', 'hz-snap', SNAPSHOTS,
                    'Delete Volume Snapshot')
        self.delete('volumes', 'hz-vol', VOLUMES, 'Delete Volume')
        assert 'volume-' + vol not in self.ursa_volumes()
        # Gone from every listing, and still read by the clones, from
        # Ursa's trash.
        for v in (clone, from_snap):
            assert self.ursa('volume', 'show', 'volume-' + v)['parent']
        pattern_is(self.stack, clone, 0x5a)
        pattern_is(self.stack, from_snap, 0x5a)
        self.delete('volume_backups', 'hz-backup', BACKUPS,
                    'Delete Volume Backup')
        self.delete('volumes', ['hz-clone', 'hz-from-snap', 'hz-restored'],
                    VOLUMES, 'Delete Volumes')
        # The clones gone, the trash goes with them: Ursa holds none of
        # the story's volumes (the stack's other tests may keep theirs).
        left = set(self.ursa_volumes()) & {
            'volume-' + v for v in (vol, from_snap, restored, clone)}
        assert not left, left
        status = self.ursa('cluster', 'status')
        assert (status['volumes'], status['chunks']) == self.before, status
        d.shot('volumes-empty')
        self.mark('clone, deletes')

    def boot(self, name):
        """Ask Nova for an instance of the member's, as ``openstack server
        create`` does (Horizon's launch wizard needs a network service);
        :meth:`active` waits for it."""
        self.server = self.member.request(
            self.stack.nova.endpoint + '/servers', 'POST', json={'server': {
                'name': name, 'flavorRef': '2', 'networks': 'none',
                'imageRef': glance_harness.IMAGE_ID}},
            headers={'OpenStack-API-Version': 'compute 2.79'}).json()[
            'server']['id']

    def active(self):
        def up():
            s = self.member.request(
                self.stack.nova.endpoint + '/servers/' + self.server,
                'GET').json()['server']
            assert s['status'] != 'ERROR', s
            return s['status'] == 'ACTIVE'
        wait_for(up, 120, 'the instance ACTIVE', interval=1)

    def delete(self, table, names, page, label):
        """Delete ``names`` (one, or several at once: ticked, then the
        table's action ``label``) and wait until the page lists none."""
        d = self.dash
        d.go(page)
        if isinstance(names, str):
            d.row_action(table, names, label)
            names = [names]
        else:
            d.select(table, names)
            d.table_action(label, table)
        d.confirm()
        d.message('')
        d.wait_gone(page, table, names)
        self.steps += 1

    # -- the operator ----------------------------------------------------
    def as_admin(self):
        d = self.dash
        d.login('admin', harness.PASSWORD)
        self.mark('admin login')
        types = '/admin/volume_types/'
        # QoS specs, one applied by Ursa (back-end), one by the hypervisor
        # (front-end); a volume type for each.
        for qos, consumer, key, value in (
                ('hz-qos-be', 'back-end', 'total_iops_sec', 400),
                ('hz-qos-fe', 'front-end', 'read_iops_sec', 300)):
            d.go(types)
            d.table_action('Create QoS Spec', 'qos_specs')
            form = d.form()
            d.fill(form, name=qos)
            d.choose(form, 'consumer', consumer)
            d.submit(form)
            d.message('Success: Successfully created QoS Spec: ' + qos)
            d.row_action('qos_specs', qos, 'Manage Specs')
            d.table_action('Create', 'specs')
            form = d.form()
            d.fill(form, key=key, value=value)
            d.submit(form)
            d.message('Success')
        for vtype, qos in (('hz-gold', 'hz-qos-be'),
                           ('hz-silver', 'hz-qos-fe')):
            d.go(types)
            d.table_action('Create Volume Type', 'volume_types')
            form = d.form()
            d.fill(form, name=vtype)
            d.submit(form)
            d.message('Success: Successfully created volume type: ' + vtype)
            d.row_action('volume_types', vtype, 'View Extra Specs')
            d.table_action('Create', 'extras')
            form = d.form()
            d.fill(form, key='volume_backend_name', value='ursa')
            d.submit(form)
            d.message('Success')
            d.go(types)
            d.row_action('volume_types', vtype, 'Manage QoS Spec Association')
            form = d.form()
            d.choose(form, 'qos_spec_choice', qos)
            d.submit(form)
            d.message('Success')
        d.go(types)
        shown = d.rows('volume_types')
        assert shown['hz-gold']['associated qos spec'] == 'hz-qos-be', shown
        assert shown['hz-silver']['associated qos spec'] == 'hz-qos-fe'
        specs = d.rows('qos_specs')
        assert 'total_iops_sec=400' in specs['hz-qos-be']['specs'], specs
        d.shot('admin-volume-types')
        self.steps += 1

        self.mark('QoS specs, types')
        # A volume of each type: Ursa enforces the back-end limits; the
        # front-end ones are the hypervisor's.
        for name, vtype, qos in (('hz-gold-vol', 'hz-gold',
                                  {'total_iops_sec': 400}),
                                 ('hz-silver-vol', 'hz-silver', {})):
            self.create_volume(name, 1, vtype=vtype)
            vid = self.same_everywhere(name, 'available', 1)
            assert self.master.volume('volume-' + vid)['qos'] == qos
            ursa = self.ursa('volume', 'show', 'volume-' + vid)
            assert ursa['qos'] == (', '.join(
                '%s=%s' % kv for kv in qos.items()) or '-'), ursa

        self.mark('volumes of the types')
        # The services: cinder-volume of the Ursa backend, up.
        d.go('/admin/info/')
        d.find("a[data-target='#system_info__cinder_services']").click()
        services = wait_for(lambda: d.records('cinder_services'), 30,
                            'the block storage services listed')
        volume = [r for r in services if r['name'] == 'cinder-volume']
        assert [(r['host'], r['status'], r['state']) for r in volume] == [
            (self.backend_host(), 'Enabled', 'Up')], services
        d.shot('admin-block-storage-services')
        # Every project's volumes, on the Ursa pool.
        d.go('/admin/volumes/')
        rows = d.records('volumes')
        pool = self.pool()
        assert {r['host'] for r in rows if r['name'].startswith(
            'hz-')} == {pool['name']}, rows
        self.steps += 1

        self.mark('services, pools')
        # A volume the backend cannot hold: in error, with the reason.
        self.create_volume('hz-too-big', 100000)
        bad = self.dash.wait_row(VOLUMES, 'volumes', 'hz-too-big',
                                 status='Error')
        messages = self.cinder('/messages?resource_uuid=%s' % bad['id'])[
            'messages']
        assert messages, 'Cinder has no message for %s' % bad['id']
        d.go('/project/volumes/%s/?tab=volume_details__messages_tab'
             % bad['id'])
        shown = d.find('table#volume_messages').text
        for m in messages:
            assert m['user_message'] in shown, (m, shown)
        d.shot('volume-error-message')
        self.steps += 1

        self.mark('error message')
        self.delete('volumes', ['hz-too-big', 'hz-gold-vol', 'hz-silver-vol'],
                    VOLUMES, 'Delete Volumes')
        self.delete('volume_types', ['hz-gold', 'hz-silver'], types,
                    'Delete Volume Types')
        self.delete('qos_specs', ['hz-qos-be', 'hz-qos-fe'], types,
                    'Delete QoS Specs')
        self.mark('admin deletes')

    def create_volume(self, name, size, vtype='ursa'):
        d = self.dash
        d.go(VOLUMES)
        d.table_action('Create Volume')
        form = d.form()
        d.fill(form, name=name, size=size)
        d.choose(form, 'type', vtype)
        d.submit(form, 'Create Volume')
        d.message('Info: Creating volume "%s"' % name)

    def pool(self):
        [pool] = self.cinder('/scheduler-stats/get_pools?detail=true')[
            'pools']
        return pool

    def backend_host(self):
        return self.pool()['name'].split('#')[0]

    def clean_up(self):
        """Whatever this story left (it fails at some step), through
        Cinder's API: the other end-to-end tests expect a clean cloud."""
        nova = self.stack.nova.endpoint
        if self.server:
            self.member.request(nova + '/servers/' + self.server, 'DELETE',
                                raise_exc=False)
            wait_for(lambda: self.member.request(
                nova + '/servers/' + self.server, 'GET',
                raise_exc=False).status_code == 404, 120,
                'instance hz-server deleted', interval=1)
        ours = ('hz-', 'restore_backup_')

        def delete_all(kind, key):
            """Delete what can be deleted (what is still being made is
            deleted once made) until none of ours is left."""
            def gone():
                left = [x for x in self.cinder(
                    '/%s/detail?all_tenants=1' % kind)[key]
                    if (x.get('name') or '').startswith(ours)]
                for x in left:
                    if x['status'] in ('available', 'error'):
                        self.admin.request(
                            self.stack.cinder.endpoint + '/%s/%s' % (
                                kind, x['id']), 'DELETE', raise_exc=False,
                            headers={'OpenStack-API-Version': 'volume ' +
                                     harness.VOLUME_API})
                return not left
            wait_for(gone, 300, 'our %s deleted' % kind, interval=2)
        for kind, key in (('backups', 'backups'),
                          ('snapshots', 'snapshots'),
                          ('volumes', 'volumes')):
            delete_all(kind, key)
        for t in self.cinder('/types')['volume_types']:
            if t['name'].startswith('hz-'):
                self.admin.request(self.stack.cinder.endpoint + '/types/' +
                                   t['id'], 'DELETE', raise_exc=False)
        for q in self.cinder('/qos-specs')['qos_specs']:
            if q['name'].startswith('hz-'):
                self.admin.request(
                    self.stack.cinder.endpoint + '/qos-specs/%s?force=True'
                    % q['id'], 'DELETE', raise_exc=False)
