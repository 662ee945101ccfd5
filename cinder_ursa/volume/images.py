"""Image data copies of the driver: an image written into a volume (fetched
as a raw file, zero blocks skipped), a volume uploaded as an image, and the
image cache: every image kept as a read-only Ursa volume
(``image-<image id>``) that later volumes are O(1) clones of."""

import contextlib
import os
import tempfile
import time

from cinder import coordination
from cinder import exception as cinder_exc
from cinder.i18n import _
from cinder.image import image_utils
from cinder.volume import volume_utils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder_ursa import exception
from cinder_ursa.client import transfer
from cinder_ursa.volume.common import DriverPart
from cinder_ursa.volume.common import translated

LOG = logging.getLogger(__name__)

CONF = cfg.CONF

IMAGE_CACHE_PREFIX = 'image-'

IMAGE_CACHE_SNAPSHOT = 'base'



class ImageCopies(DriverPart):
    """The image calls of :class:`~cinder_ursa.volume.driver.UrsaDriver`,
    on the driver's master client and data-path client."""

    def copy_to_volume(self, context, volume, image_service, image_id):
        with self.fetched(context, image_service, image_id,
                          volume.size) as path:
            self.import_image(path, volume.name)

    @contextlib.contextmanager
    def fetched(self, context, image_service, image_id, size_gb):
        """The image as a raw file (qemu-img converts qcow2 and others)."""
        conv = CONF.image_conversion_dir or None
        if conv:
            os.makedirs(conv, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix='ursa-image-', dir=conv)
        os.close(fd)
        try:
            image_utils.fetch_to_raw(
                context, image_service, image_id, path,
                self.configuration.volume_dd_blocksize, size=size_gb,
                run_as_root=False)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def import_image(self, path, name):
        size = os.path.getsize(path)
        started = time.monotonic()
        progress = Progress('Writing image into %s' % name, size)
        with translated('Writing image into %s' % name):
            with self.driver._data() as cluster, \
                    cluster.open_volume(name) as vol, open(path, 'rb') as f:
                if size > vol.size:
                    raise cinder_exc.ImageUnacceptable(
                        image_id=os.path.basename(path),
                        reason=_('the image (%(img)d bytes) is larger than '
                                 'volume %(name)s (%(vol)d bytes)') % {
                            'img': size, 'name': name, 'vol': vol.size})
                cluster.call(transfer.import_file, vol.volume, f.fileno(),
                             size, progress)
        LOG.info('Wrote %(size)d bytes of image data into %(name)s in '
                 '%(t).1f s (zero blocks skipped)',
                 {'size': size, 'name': name,
                  't': time.monotonic() - started})

    def copy_to_image(self, context, volume, image_service, image_meta):
        conv = CONF.image_conversion_dir or None
        fd, path = tempfile.mkstemp(prefix='ursa-upload-', dir=conv)
        try:
            progress = Progress('Reading %s for image %s'
                                % (volume.name, image_meta['id']),
                                volume.size * units.Gi)
            with translated('Reading %s' % volume.name, volume=volume):
                with self.driver._data() as cluster, cluster.open_volume(
                        volume.name, writable=False) as vol:
                    cluster.call(transfer.export_file, vol.volume, fd,
                                 progress)
            os.close(fd)
            fd = None
            volume_utils.upload_volume(context, image_service, image_meta,
                                       path, volume, run_as_root=False)
        finally:
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def clone(self, context, volume, image_location, image_meta,
              image_service):
        """O(1) clone of the image's cached Ursa volume (made the first
        time an image is used); (None, False) lets Cinder copy instead.
        The driver calls it only with ``ursa_image_cache`` on."""
        image_id = image_meta['id']
        try:
            base = self.cached_image(context, image_service, image_id,
                                     volume.size)
        except (exception.UrsaError, cinder_exc.CinderException,
                OSError) as e:
            LOG.warning('Ursa image cache: image %(id)s not cached (%(e)s); '
                        'copying it instead', {'id': image_id, 'e': e})
            return None, False
        if base['size'] > volume.size * units.Gi:
            return None, False
        with translated('Cloning image %s into %s' % (image_id,
                                                       volume.name)):
            self._master.clone('%s@%s' % (base['name'], IMAGE_CACHE_SNAPSHOT),
                               volume.name, volume.size * units.Gi,
                               qos=self.driver._qos(volume) or None,
                               multiattach=self.driver._multiattach(volume))
        return {'provider_location': None}, True

    @coordination.synchronized('ursa-image-{image_id}')
    def cached_image(self, context, image_service, image_id, size_gb):
        name = IMAGE_CACHE_PREFIX + image_id
        try:
            self._master.snapshot('%s@%s' % (name, IMAGE_CACHE_SNAPSHOT))
            return self._master.volume(name)
        except exception.NotFound:
            pass
        with contextlib.suppress(exception.NotFound):
            self._master.delete_volume(name)  # a half-made earlier try
        with self.fetched(context, image_service, image_id,
                          size_gb) as path:
            size = os.path.getsize(path)
            size = -(-size // 4096) * 4096
            self._master.create_volume(name, size,
                                       **self.driver._create_args())
            self.import_image(path, name)
        self._master.create_snapshot(name, IMAGE_CACHE_SNAPSHOT)
        LOG.info('Cached image %(id)s as Ursa volume %(name)s',
                 {'id': image_id, 'name': name})
        return self._master.volume(name)


class Progress:
    """Bytes-done callback that logs a line every 10 s (and at the end)."""

    def __init__(self, what, total):
        self.what, self.total, self.done = what, total, 0
        self.last = time.monotonic()

    def __call__(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last >= 10 or self.done >= self.total:
            self.last = now
            LOG.info('%(what)s: %(pct)d%%', {
                'what': self.what,
                'pct': 100 * self.done // max(self.total, 1)})
