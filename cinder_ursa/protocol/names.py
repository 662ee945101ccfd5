"""Which volume and snapshot names the master accepts.

ASCII letters, digits, ".", "_" and "-", first a letter, a digit or "_",
1 to 255 characters.  A name becomes a file name in ursa-attach's mount
("/", ".", ".." and NUL cannot be one; a leading "." hides it and is the
trash's own prefix), an NBD export name ("@" separates the snapshot), an
argument of ursa, nbd-client and qemu-img (a leading "-" reads as an
option) and a word of log lines (no space, newline or control
character).  ASCII, so 255 characters are 255 bytes in any encoding.
Names kept from before this rule still work; only creating a volume or
snapshot with such a name, or renaming one to it, is refused.
"""

import re

NAME_MAX = 255
NAME_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]{0,%d}' % (NAME_MAX - 1))
NAME_RULE = ('1 to %d of the characters A-Z a-z 0-9 . _ - (no space, '
             '"@" or "/"), starting with a letter, a digit or "_"'
             % NAME_MAX)


def name_problem(what, name):
    """None if ``name`` is a valid volume or snapshot name, else a one-line
    message saying why and which characters are allowed."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return None
    if not isinstance(name, str):
        shown = 'a %s' % type(name).__name__
    elif len(name) > 64:
        shown = 'a name of %d characters' % len(name)
    else:
        shown = ascii(name)  # escaped: a reply or log line stays one line
    return '%s %s is not allowed: use %s' % (what, shown, NAME_RULE)
