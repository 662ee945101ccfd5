"""UrsaDriver against a real ursa-aio cluster: every operation, the bytes
checked through the client library."""

import json
import os
import subprocess
import sys
import uuid

import pytest
from cinder import context as cinder_context
from cinder import exception as cinder_exc
from cinder import objects
from cinder.volume import configuration as conf_mod
from cinder.volume import driver as base_driver
from cinder.volume import volume_utils
from oslo_config import cfg

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.common import auth
from cinder_ursa.volume import driver as ursa_driver
from cinder_ursa.volume import opts as ursa_opts
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster

GiB = 1024 ** 3
MiB = 1024 ** 2
objects.register_all()


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'drv')


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
    # cinder-volume starts Cinder's tooz coordinator; so do the tests.
    from cinder import coordination
    cfg.CONF([], project='cinder')
    cfg.CONF.set_override('backend_url', 'file://%s' % tmp_path_factory
                          .mktemp('coord'), group='coordination')
    coordination.COORDINATOR.start()
    yield cinder_context.get_admin_context()
    coordination.COORDINATOR.stop()


@pytest.fixture(scope='module', autouse=True)
def privsep_in_process():
    """Cinder's privileged helpers (qemu-img inspection) run through
    'sudo privsep-helper' in production; this machine has no sudo, and the
    tests run as root, so they run in the test process."""
    import cinder.privsep
    cinder.privsep.sys_admin_pctxt.set_client_mode(False)
    yield
    cinder.privsep.sys_admin_pctxt.set_client_mode(True)


_groups = []


def make_driver(cluster, tmp_path, **overrides):
    """A driver configured as an operator would, in its own backend
    section of the global configuration."""
    group = 'ursa%d' % len(_groups)
    _groups.append(group)
    conf = conf_mod.Configuration(base_driver.volume_opts,
                                  config_group=group)
    conf.append_config_values(ursa_opts.ursa_opts)
    values = {'ursa_master_urls': [cluster.master_url],
              'ursa_cluster_key_file': cluster.key_file,
              'volume_backend_name': 'ursa', 'ursa_chunk_size_mib': 4}
    values.update(overrides)
    for k, v in values.items():
        cfg.CONF.set_override(k, v, group=group)
    cfg.CONF.set_override('lock_path', str(tmp_path / 'locks'),
                          group='oslo_concurrency')
    cfg.CONF.set_override('image_conversion_dir', str(tmp_path / 'conv'))
    d = ursa_driver.UrsaDriver(configuration=conf, host='test@ursa')
    d.do_setup(None)
    d.check_for_setup_error()
    return d


@pytest.fixture
def drv(cluster, tmp_path, ctx):
    return make_driver(cluster, tmp_path)


def volume(ctx, size=1):
    vid = str(uuid.uuid4())
    return objects.Volume(context=ctx, id=vid, _name_id=None, size=size,
                          display_name='v', volume_type=objects.VolumeType(
                              context=ctx, extra_specs={}),
                          volume_glance_metadata=[])


def snapshot(ctx, vol):
    return objects.Snapshot(context=ctx, id=str(uuid.uuid4()),
                            volume_id=vol.id, volume=vol,
                            volume_size=vol.size)


def write(cluster, name, offset, data):
    with data_client(cluster) as cl, cl.open_volume(name) as v:
        v.write(offset, data)


def read(cluster, ref, offset, n):
    with data_client(cluster) as cl, cl.open_volume(ref,
                                                    writable=False) as v:
        return v.read(offset, n)


def test_stats_are_the_clusters(drv, cluster, ctx):
    before = drv.get_volume_stats(refresh=True)
    assert before['volume_backend_name'] == 'ursa'
    assert before['thin_provisioning_support'] is True
    assert before['total_capacity_gb'] > before['free_capacity_gb'] > 0
    st = cluster.client().cluster_status()
    assert before['free_capacity_gb'] == pytest.approx(
        st['free_bytes'] / 3 / GiB, rel=0.05)
    v = volume(ctx, size=5)
    drv.create_volume(v)
    after = drv.get_volume_stats(refresh=True)
    assert after['provisioned_capacity_gb'] == pytest.approx(
        before['provisioned_capacity_gb'] + 5)
    assert after['total_volumes'] == before['total_volumes'] + 1
    drv.delete_volume(v)


def test_volume_snapshot_clone_revert_extend_with_data(drv, cluster, ctx):
    a = volume(ctx)
    drv.create_volume(a)
    info = cluster.client().volume(a.name)
    assert info['size'] == GiB and info['replicas'] == 3
    first = os.urandom(MiB)
    write(cluster, a.name, 7 * MiB, first)

    snap = snapshot(ctx, a)
    drv.create_snapshot(snap)
    second = os.urandom(MiB)
    write(cluster, a.name, 7 * MiB, second)

    # From the snapshot, larger: the snapshot's bytes, the new size.
    b = volume(ctx, size=2)
    drv.create_volume_from_snapshot(b, snap)
    assert cluster.client().volume(b.name)['size'] == 2 * GiB
    assert read(cluster, b.name, 7 * MiB, MiB) == first
    # A clone of the volume: its current bytes; the hidden snapshot it
    # reads is in the trash, so the source lists only Cinder's snapshot.
    c = volume(ctx)
    drv.create_cloned_volume(c, a)
    assert read(cluster, c.name, 7 * MiB, MiB) == second
    names = [s['name'] for s in cluster.client().snapshots(a.name)]
    assert names == [snap.name]

    # Writes to clones are their own.
    write(cluster, c.name, 0, b'c' * 4096)
    assert read(cluster, a.name, 0, 4096) == bytes(4096)

    # Revert, extend.
    drv.revert_to_snapshot(ctx, a, snap)
    assert read(cluster, a.name, 7 * MiB, MiB) == first
    drv.extend_volume(a, 3)
    assert cluster.client().volume(a.name)['size'] == 3 * GiB
    assert read(cluster, a.name, 7 * MiB, MiB) == first

    # A volume with a snapshot is busy; the snapshot with a clone goes to
    # the trash and Cinder sees it deleted; then the source can go while
    # its clones still read it.
    with pytest.raises(cinder_exc.VolumeIsBusy):
        drv.delete_volume(a)
    drv.delete_snapshot(snap)
    drv.delete_snapshot(snap)  # gone already: still fine
    drv.delete_volume(a)
    drv.delete_volume(a)       # gone already: still fine
    assert read(cluster, b.name, 7 * MiB, MiB) == first
    assert read(cluster, c.name, 7 * MiB, MiB) == second
    for v in (b, c):
        drv.delete_volume(v)
    # Everything is gone: the trash emptied with the last clone.
    left = [v['name'] for v in cluster.client().volumes()]
    assert not {a.name, b.name, c.name} & set(left)


def test_clone_depth_limit_flattens(cluster, tmp_path, ctx):
    drv = make_driver(cluster, tmp_path, ursa_max_clone_depth=1)
    a = volume(ctx)
    drv.create_volume(a)
    write(cluster, a.name, MiB, b'x' * 8192)
    b = volume(ctx)
    drv.create_cloned_volume(b, a)
    assert cluster.client().volume(b.name)['parent']     # depth 1: kept
    c = volume(ctx)
    drv.create_cloned_volume(c, b)
    assert not cluster.client().volume(c.name)['parent']  # depth 2: flat
    assert read(cluster, c.name, MiB, 8192) == b'x' * 8192
    for v in (c, b, a):
        drv.delete_volume(v)


def test_errors_are_cinder_exceptions(drv, cluster, ctx):
    ghost = volume(ctx)
    with pytest.raises(cinder_exc.VolumeNotFound):
        drv.extend_volume(ghost, 2)
    s = snapshot(ctx, ghost)
    with pytest.raises(cinder_exc.VolumeNotFound):
        drv.create_snapshot(s)
    with pytest.raises(cinder_exc.SnapshotNotFound):
        drv.create_volume_from_snapshot(volume(ctx), s)
    a = volume(ctx)
    drv.create_volume(a)
    with pytest.raises(cinder_exc.VolumeBackendAPIException,
                       match='already exists'):
        drv.create_volume(a)
    drv.delete_volume(a)


def test_unreachable_master_says_what_to_check(cluster, tmp_path, ctx):
    drv = make_driver(cluster, tmp_path)
    drv._master = master_mod.MasterClient(['http://127.0.0.1:9'], drv._key)
    with pytest.raises(cinder_exc.VolumeBackendAPIException,
                       match='cannot reach the Ursa master'):
        drv.create_volume(volume(ctx))


def test_manageable_listing_pages_as_cinder_does(drv, cluster, ctx):
    """marker, limit and offset over a real cluster: what Cinder's
    paginate_entries_list makes of every volume, asked for page by page
    (sorted by reference) or all at once (by size)."""
    master = cluster.client()
    for i in range(7):
        master.create_volume('mlist-%d' % i, (i % 2 + 1) * GiB)
    every = drv.get_manageable_volumes([], None, 10 ** 6, 0, ['size'],
                                       ['asc'])
    assert {'mlist-%d' % i for i in range(7)} <= {
        e['reference']['source-name'] for e in every}
    for marker, limit, offset, sort_dir in [
            (None, 3, 0, 'desc'), ({'source-name': 'mlist-2'}, 3, 1, 'asc'),
            ('{"source-name": "mlist-5"}', 2, 0, 'desc'),
            ({'source-name': 'mlist-6'}, 1000, 0, 'asc')]:
        assert drv.get_manageable_volumes(
            [], marker, limit, offset, ['reference'], [sort_dir]) == \
            volume_utils.paginate_entries_list(
                every, marker, limit, offset, ['reference'], [sort_dir])
    with pytest.raises(cinder_exc.InvalidInput) as e:
        drv.get_manageable_volumes([], {'source-name': 'mlist-gone'}, 5, 0,
                                   ['reference'], ['desc'])
    assert 'mlist-gone' in str(e.value)
    for i in range(7):
        master.delete_volume('mlist-%d' % i)


def test_manage_and_list_manageable(drv, cluster, ctx):
    master = cluster.client()
    master.create_volume('legacy-disk', 3 * GiB - 4096)
    write(cluster, 'legacy-disk', 0, b'old' * 1000)
    master.create_snapshot('legacy-disk', 'nightly')
    entries = {e['reference']['source-name']: e
               for e in drv.get_manageable_volumes([], None, 1000, 0,
                                                   ['size'], ['asc'])}
    assert entries['legacy-disk']['safe_to_manage'] is True
    assert entries['legacy-disk']['size'] == 3
    ref = {'source-name': 'legacy-disk'}
    v = volume(ctx, size=3)
    assert drv.manage_existing_get_size(v, ref) == 3
    drv.manage_existing(v, ref)
    assert read(cluster, v.name, 0, 3000) == b'old' * 1000
    entries = {e['reference']['source-name']: e
               for e in drv.get_manageable_volumes([v], None, 1000, 0,
                                                   ['size'], ['asc'])}
    assert entries[v.name]['safe_to_manage'] is False
    assert entries[v.name]['cinder_id'] == v.id

    snaps = drv.get_manageable_snapshots([], None, 1000, 0, ['size'],
                                         ['asc'])
    mine = [e for e in snaps
            if e['source_reference']['source-name'] == v.name]
    assert [e['reference']['source-name'] for e in mine] == ['nightly']
    s = snapshot(ctx, v)
    assert drv.manage_existing_snapshot_get_size(
        s, {'source-name': 'nightly'}) == 3
    drv.manage_existing_snapshot(s, {'source-name': 'nightly'})
    assert master.snapshot('%s@%s' % (v.name, s.name))['size'] == \
        3 * GiB - 4096
    with pytest.raises(cinder_exc.ManageExistingInvalidReference):
        drv.manage_existing(volume(ctx), {'source-name': 'no-such'})
    with pytest.raises(cinder_exc.ManageExistingInvalidReference):
        drv.manage_existing(volume(ctx), {})
    drv.unmanage_snapshot(s)
    drv.unmanage(v)
    assert master.volume(v.name)['size'] == 3 * GiB - 4096


class _Images:
    """The image service calls fetch_to_raw and upload_volume make."""

    temp_images = None  # as GlanceImageService: image_utils sets it

    def __init__(self):
        self.images = {}

    def add(self, data, disk_format):
        image_id = str(uuid.uuid4())
        self.images[image_id] = {'data': data, 'disk_format': disk_format}
        return image_id

    def show(self, context, image_id):
        img = self.images[image_id]
        return {'id': image_id, 'disk_format': img['disk_format'],
                'container_format': 'bare', 'size': len(img['data']),
                'status': 'active', 'properties': {}}

    def download(self, context, image_id, data=None):
        data.write(self.images[image_id]['data'])

    def update(self, context, image_id, image_meta, data=None,
               purge_props=True, store_id=None, base_image_ref=None):
        self.images.setdefault(image_id, {})['data'] = data.read()
        return self.show(context, image_id)


def _qcow2(tmp_path, raw):
    src = tmp_path / 'img.raw'
    src.write_bytes(raw)
    dst = tmp_path / 'img.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(src), str(dst)], check=True)
    return dst.read_bytes()


def test_images_in_and_out_raw_and_qcow2(drv, cluster, ctx, tmp_path,
                                        formats=('raw', 'qcow2')):
    """Images of each of ``formats`` into volumes, and back out in each."""
    raw = bytearray(64 * MiB)
    raw[5 * MiB:5 * MiB + 4096] = os.urandom(4096)
    raw[40 * MiB:41 * MiB] = os.urandom(MiB)
    raw = bytes(raw)
    images = _Images()
    for fmt in formats:
        blob = raw if fmt == 'raw' else _qcow2(tmp_path, raw)
        v = volume(ctx)
        drv.create_volume(v)
        drv.copy_image_to_volume(ctx, v, images, images.add(blob, fmt))
        assert read(cluster, v.name, 0, len(raw)) == raw, fmt
        # Zero blocks were not written: the volume stays thin.
        info = cluster.client().volume(v.name)
        assert info['allocated_chunks'] <= 2, info
        # And back out, as raw and as qcow2.
        for out_fmt in formats:
            image_id = images.add(b'', out_fmt)
            drv.copy_volume_to_image(ctx, v, images, {
                'id': image_id, 'disk_format': out_fmt,
                'container_format': 'bare'})
            out = tmp_path / ('out.' + out_fmt)
            out.write_bytes(images.images[image_id]['data'])
            conv = tmp_path / 'out-conv.raw'
            subprocess.run(['qemu-img', 'convert', '-f', out_fmt, '-O',
                            'raw', str(out), str(conv)], check=True)
            # Its first len(raw) bytes (the whole volume's would be 1 GiB).
            with open(conv, 'rb') as f:
                assert f.read(len(raw)) == raw, (fmt, out_fmt)
        drv.delete_volume(v)


def test_clone_image_caches_once_then_clones(drv, cluster, ctx, tmp_path):
    raw = os.urandom(MiB) + bytes(7 * MiB)
    images = _Images()
    image_id = images.add(raw, 'raw')
    meta = images.show(ctx, image_id)
    vols = []
    for _ in range(2):
        v = volume(ctx)
        update, cloned = drv.clone_image(ctx, v, None, meta, images)
        assert cloned
        vols.append(v)
        assert read(cluster, v.name, 0, len(raw)) == raw
        assert cluster.client().volume(v.name)['parent']['volume_name'] \
            == 'image-' + image_id
    # The second volume did not download the image again.
    del images.images[image_id]
    v = volume(ctx)
    assert drv.clone_image(ctx, v, None, meta, images)[1]
    vols.append(v)
    for v in vols:
        drv.delete_volume(v)
    # Disabled: Cinder copies instead.
    off = make_driver(cluster, tmp_path, ursa_image_cache=False)
    assert off.clone_image(ctx, volume(ctx), None, meta, images) == (
        None, False)


def test_driver_loads_from_a_cinder_conf_backend_section(cluster, tmp_path):
    """The options an operator writes in cinder.conf reach the driver."""
    conf = tmp_path / 'cinder.conf'
    conf.write_text(
        '[DEFAULT]\nenabled_backends = ursa-x\n'
        '[ursa-x]\nvolume_driver = cinder_ursa.volume.driver.UrsaDriver\n'
        'volume_backend_name = ursa-x\nursa_master_urls = %s\n'
        'ursa_cluster_key_file = %s\nursa_replicas = 2\n'
        % (cluster.master_url, cluster.key_file))
    out = subprocess.run(
        [sys.executable, '-c', _LOAD, str(conf)],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, OS_CINDER_DISABLE_EVENTLET_PATCHING='1'))
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.splitlines()[-1])
    assert stats['volume_backend_name'] == 'ursa-x'
    assert stats['total_capacity_gb'] > 0


_LOAD = '''
import json, sys
from oslo_config import cfg
from oslo_utils import importutils
from cinder import objects
objects.register_all()
from cinder.volume import configuration
from cinder.volume import manager
cfg.CONF(['--config-file', sys.argv[1]], project='cinder')
# As cinder-volume's manager builds it for a backend section.
conf = configuration.Configuration(manager.volume_backend_opts,
                                   config_group='ursa-x')
drv = importutils.import_object(conf.volume_driver, configuration=conf,
                                host='h@ursa-x')
drv.do_setup(None)
drv.check_for_setup_error()
assert drv.configuration.ursa_replicas == 2
print(json.dumps(drv.get_volume_stats(refresh=True)))
'''


def test_runs_in_the_mode_tools_run_tests_asked_for():
    """tools/run-tests runs these tests twice: native threads, and under
    eventlet monkey patching as cinder-volume does by default."""
    import eventlet.patcher
    want = os.environ['OS_CINDER_DISABLE_EVENTLET_PATCHING'] in ('0', 'false',
                                                                 'no')
    assert eventlet.patcher.is_monkey_patched('socket') is want


@pytest.fixture(scope='module')
def attach_agent(cluster):
    """ursa-attach for the cluster's host (FUSE: root and /dev/fuse)."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    cluster.start_attach()
    return cluster.attach_host


def test_attach_is_a_local_path_os_brick_uses(drv, cluster, ctx,
                                              attach_agent, tmp_path):
    from os_brick.initiator import connector as brick
    v = volume(ctx)
    drv.create_volume(v)
    host = {'host': attach_agent, 'ip': '127.0.0.1'}
    conn = drv.initialize_connection(v, host)
    assert conn['driver_volume_type'] == 'local'
    data = conn['data']
    # ursa-nbd serves it over TCP under the attachment's export token.
    token = cluster.client().attachment(v.name, attach_agent)[
        'export_token']
    assert (data['nbd_export'], data['nbd_port']) == (
        '%s~%s' % (v.name, token), 10809)
    # os-brick's own connector for the protocol, as Cinder's attach-based
    # operations (backup, migration, image copy) use it.
    dev = brick.InitiatorConnector.factory('local', None).connect_volume(
        data)
    path = dev['path']
    assert path == data['device_path'] and os.path.getsize(path) == GiB
    # Our own connector agrees, and the NBD details serve the same bytes.
    from cinder_ursa.brick import connector as ursa_brick
    ours = ursa_brick.UrsaConnector()
    assert ours.connect_volume(data) == {'type': 'file', 'path': path}
    assert ours.get_volume_paths(data) == [path]
    assert ours.extend_volume(data) == GiB
    assert ours.check_valid_device(path)
    assert 'name="%s~%s"' % (v.name, token) in ursa_brick.libvirt_disk_xml(
        data)
    assert ursa_brick.nbd_uri(data) == 'nbd://127.0.0.1:10809/%s~%s' % (
        v.name, token)
    pattern = os.urandom(3 * 4096 + 100)
    with open(path, 'r+b') as f:
        f.seek(MiB + 7)
        f.write(pattern)
        f.flush()
        os.fsync(f.fileno())
    assert read(cluster, v.name, MiB + 7, len(pattern)) == pattern
    info = cluster.client().volume(v.name)
    assert info['lease']['holder'] == 'ursa-attach@' + attach_agent
    # Attaching again returns the same path; deleting is refused.
    assert drv.initialize_connection(v, host)['data']['device_path'] == path
    with pytest.raises(cinder_exc.VolumeIsBusy):
        drv.delete_volume(v)
    drv.terminate_connection(v, host)
    assert not os.path.exists(path)
    assert not cluster.client().volume(v.name)['lease']['holder']

    # A host with no ursa-attach: a clear error, then a forced detach
    # fences whoever might hold the volume there.
    impatient = make_driver(cluster, tmp_path, ursa_attach_timeout=1)
    with pytest.raises(cinder_exc.VolumeBackendAPIException,
                       match='run ursa-attach there'):
        impatient.initialize_connection(v, {'host': 'nowhere'})
    gen = cluster.client().volume(v.name)['lease']['generation']
    impatient.terminate_connection(v, None)
    assert cluster.client().volume(v.name)['lease']['generation'] == gen + 1
    assert cluster.client().attachments(v.name) == []
    with pytest.raises(cinder_exc.InvalidConnectorException):
        drv.initialize_connection(v, {})
    drv.delete_volume(v)


def test_a_volume_role_principal_is_all_the_driver_needs(cluster, tmp_path,
                                                         ctx):
    """The driver signing as a principal of the volume role (not the
    cluster key): every operation works, so the role's routes are all
    the driver calls (a missing one is a 403)."""
    key = auth.new_key()
    path = str(tmp_path / 'cinder.key')
    auth.write_key_file(path, key)
    cluster.client().create_principal('cinder-volume', 'volume', key)
    d = make_driver(cluster, tmp_path, ursa_principal='cinder-volume',
                    ursa_principal_key_file=path)
    assert d._master._http.principal == ('cinder-volume', key)
    test_stats_are_the_clusters(d, cluster, ctx)
    test_volume_snapshot_clone_revert_extend_with_data(d, cluster, ctx)
    # qcow2 in and out: the routes an image takes are the same for raw.
    test_images_in_and_out_raw_and_qcow2(d, cluster, ctx, tmp_path,
                                         formats=('qcow2',))
    # A right it does not have: fencing a host is nova_ha's.
    with pytest.raises(exception.Forbidden, match='role volume'):
        d._master.fence_host('compute-9')
    # Without its key file: a clear error at setup.
    with pytest.raises(cinder_exc.VolumeDriverException,
                       match='ursa_principal_key_file'):
        make_driver(cluster, tmp_path, ursa_principal='cinder-volume')
