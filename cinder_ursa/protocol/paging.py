"""Paginated listings of the master's REST API, without I/O: the next
page's marker in a reply's links, and :class:`Pages`, the walk over every
page of a listing that the blocking and the asyncio clients drive
(``client.master``).  The requests are ``rest.volumes`` and
``rest.snapshots``."""

import re

from cinder_ursa import exception
from cinder_ursa.protocol import rest

# Items a client asks for per page of a listing; the master lowers it to
# its [ursa_master] max_list_limit.
PAGE_SIZE = 1000


def next_marker(reply, field):
    """The marker of the next page a listing reply names in
    ``<field>_links`` (rel "next", as Cinder's), or None: the last page,
    or a master older than pagination (it ignores the paging parameters
    and sends every item, with no link)."""
    for link in reply.get(field + '_links') or ():
        if isinstance(link, dict) and link.get('rel') == 'next':
            query = str(link.get('href', '')).partition('?')[2]
            for part in query.partition('#')[0].split('&'):
                name, _, value = part.partition('=')
                if name == 'marker' and value:
                    return _unquote(value)
    return None


_PERCENT = re.compile(rb'%([0-9A-Fa-f]{2})')


def _unquote(value):
    """A query value percent-decoded ('+' a space), as
    urllib.parse.unquote_plus does (this layer imports no urllib)."""
    raw = value.replace('+', ' ').encode('utf-8')
    return _PERCENT.sub(lambda m: bytes.fromhex(m.group(1).decode()),
                        raw).decode('utf-8', 'replace')


class Pages:
    """A walk over the pages of a listing, without I/O: send
    :meth:`request` while it is not None, feed each reply to
    :meth:`answer` (the new items, to hand on), and a MarkerNotFound
    to :meth:`marker_lost`.

    Every item is handed on once, however items are created and deleted
    between two pages: the master pages by key (a volume's name), so
    neither shifts the others; a marker deleted or renamed meanwhile
    (MarkerNotFound) makes the walk step back to an earlier item it has
    seen (1, 2, 4, 8 ... items further back, then the start), and the
    items seen again are skipped.  A master older than pagination sends
    every item and no link: one request.  The walk never asks twice from
    the same marker in a row, whatever a master answers.

    ``limit``: hand on at most that many, then stop; :attr:`next_marker`
    then names where a later walk goes on (None: nothing more).
    ``make_request(limit, marker)``: the request of one page; ``key``:
    the field (or a function of an item) that names an item, as the
    master's markers do."""

    def __init__(self, make_request, field, key='name', limit=None,
                 marker=None, page_size=PAGE_SIZE):
        if limit is not None and limit < 1:
            raise exception.InvalidArgument(
                reason='a listing\'s limit must be 1 or more, not %r'
                % (limit,))
        if page_size < 1:
            raise exception.InvalidArgument(
                reason='a listing\'s page size must be 1 or more, not %r'
                % (page_size,))
        self._make = make_request
        self.field = field
        # What names an item (and is the marker of the page after it).
        self.key = key if callable(key) else (lambda item: item[key])
        self.limit = limit
        self.page_size = page_size
        self._start = marker
        self._marker = marker
        self._seen = set()
        self._order = []        # the keys handed on, in order
        self._back = 0          # steps back since the last answer
        self.count = 0
        self.done = False
        self.next_marker = None

    def request(self):
        """The next page's request, or None when the walk is over."""
        if self.done:
            return None
        size = self.page_size
        if self.limit is not None:
            size = min(size, self.limit - self.count)
        return self._make(size, self._marker)

    def answer(self, reply):
        """The items of ``reply`` not handed on before (up to the
        limit); moves on to the page its link names."""
        self._back = 0
        new = [i for i in reply[self.field] if self.key(i) not in self._seen]
        taken = new
        if self.limit is not None:
            taken = new[:self.limit - self.count]
        for item in taken:
            self._seen.add(self.key(item))
            self._order.append(self.key(item))
        self.count += len(taken)
        following = next_marker(reply, self.field)
        if self.limit is not None and self.count >= self.limit:
            self.done = True
            if len(taken) < len(new) or following is not None:
                self.next_marker = self._order[-1]
        elif following is None or following == self._marker:
            self.done = True
        else:
            self._marker = following
        return taken

    def marker_lost(self):
        """The master answered MarkerNotFound to the last request: True
        if :meth:`request` now asks from an earlier item, False if there
        is none to step back to (the caller's own marker names nothing:
        the caller raises the error)."""
        if self._marker == self._start:
            return False
        self._back += 1
        i = len(self._order) - 1 - 2 ** (self._back - 1)
        self._marker = self._order[i] if i >= 0 else self._start
        return True


def volume_pages(limit=None, marker=None, page_size=None, **filters):
    """:class:`Pages` over the volumes (``filters``: those of
    ``rest.volumes``)."""
    return Pages(lambda n, m: rest.volumes(n, m, **filters), 'volumes',
                 limit=limit, marker=marker,
                 page_size=page_size or PAGE_SIZE)


def snapshot_key(snap):
    """What names a snapshot in a listing's marker: ``volume@name``."""
    return '%s@%s' % (snap['volume_name'], snap['name'])


def snapshot_pages(volume=None, limit=None, marker=None, page_size=None,
                   **filters):
    """:class:`Pages` over the snapshots (of ``volume``, or all)."""
    return Pages(lambda n, m: rest.snapshots(volume, n, m, **filters),
                 'snapshots', key=snapshot_key, limit=limit, marker=marker,
                 page_size=page_size or PAGE_SIZE)
