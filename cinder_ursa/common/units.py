"""Size units and a parser for human sizes such as ``10G`` or ``512MiB``."""

import re
import time

from cinder_ursa import exception

Ki = 1024
Mi = Ki * Ki
Gi = Ki * Mi
Ti = Ki * Gi
Pi = Ki * Ti
Ei = Ki * Pi

_UNITS = {'': 1, 'b': 1, 'k': Ki, 'm': Mi, 'g': Gi, 't': Ti}
_SIZE_RE = re.compile(r'^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$', re.IGNORECASE)


def parse_size(text):
    """Parse ``4096``, ``64M``, ``10GiB`` (binary units) into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise exception.InvalidArgument(
            reason='%r is not a size; use a number with an optional K, M, '
                   'G or T suffix, for example 10G' % (text,))
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n):
    for unit, factor in (('EiB', Ei), ('PiB', Pi), ('TiB', Ti), ('GiB', Gi),
                         ('MiB', Mi), ('KiB', Ki)):
        if n >= factor:
            value = n / factor
            return ('%d %s' % (value, unit) if value == int(value)
                    else '%.1f %s' % (value, unit))
    return '%d B' % n


def format_time(ts):
    """A UNIX time as local 'YYYY-mm-dd HH:MM:SS' ('' for none)."""
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts)) if ts \
        else ''
