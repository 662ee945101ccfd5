"""The fuzz targets, and the long run of ``tools/fuzz``.

Each target is a hypothesis strategy and a check.  ``tests/unit/fuzz``
runs every one for a fixed, small number of examples with a derandomized
seed (the same examples each run: CI stays deterministic);
``tools/fuzz`` runs them with fresh random seeds for a time budget per
target and reports the examples run and the failures found, each
shrunk to a minimal input to paste into an ``@example`` of the target's
regression test.
"""

import argparse
import contextlib
import sys
import time
import traceback
import warnings

from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import reporting
from hypothesis import settings

from tests.fuzz import codec_targets
from tests.fuzz import nbd_targets
from tests.fuzz import rest_targets


class Target:
    """A named property: ``check(example)`` for every ``strategy``
    example; ``context`` (optional) makes what the check needs (a
    server) and ``bind(thing, check)`` gives the check it."""

    def __init__(self, name, doc, strategy, check, context=None,
                 ci_examples=100):
        self.name, self.doc = name, doc
        self.strategy, self.check = strategy, check
        self.context = context
        self.ci_examples = ci_examples

    @contextlib.contextmanager
    def checker(self):
        """The check, bound to its context while the block runs."""
        if self.context is None:
            yield self.check
            return
        with self.context() as thing:
            yield lambda example: self.check(thing, example)


TARGETS = [
    Target('codec-decode', 'every decode_* of protocol/codec.py and '
           'protocol/control.py on arbitrary and mutated bodies',
           codec_targets.DECODE, codec_targets.check_decode,
           ci_examples=400),
    Target('codec-roundtrip', 'encode -> frame -> decode of every message',
           codec_targets.MESSAGES, codec_targets.check_roundtrip,
           ci_examples=300),
    Target('frames', 'byte streams split anywhere through FrameReader '
           '(transport/buffers.py) against FrameDecoder',
           codec_targets.STREAMS, codec_targets.check_stream,
           ci_examples=150),
    Target('nbd-handshake', 'nbd/handshake.py Negotiation on arbitrary '
           'option streams', nbd_targets.HANDSHAKE,
           nbd_targets.check_handshake, ci_examples=150),
    Target('nbd-requests', 'NBD request parsing (ReceiveBuffer) and '
           'validate_request', nbd_targets.REQUESTS,
           nbd_targets.check_requests, ci_examples=300),
    Target('nbd-gateway', 'a whole NbdServer session over a socket pair',
           nbd_targets.NBD_SESSIONS, nbd_targets.check_gateway,
           ci_examples=150),
    Target('rest-signed', 'signed requests to every master route with '
           'arbitrary path segments, queries and bodies',
           rest_targets.SIGNED, rest_targets.check_signed,
           rest_targets.MasterServer, ci_examples=200),
    Target('rest-unsigned', 'unsigned and badly signed requests to every '
           'master route', rest_targets.UNSIGNED,
           rest_targets.check_unsigned, rest_targets.MasterServer,
           ci_examples=150),
]
BY_NAME = {t.name: t for t in TARGETS}

_QUIET = dict(deadline=None, suppress_health_check=list(HealthCheck),
              database=None)


def ci_settings(target):
    """What the unit tests run: few examples, always the same ones."""
    return settings(max_examples=target.ci_examples, derandomize=True,
                    print_blob=True, **_QUIET)


class _TimeUp(BaseException):
    """Ends a run whose budget is spent (a BaseException, so hypothesis
    does not take it for a failure of the property)."""


def run(target, seconds=None, examples=None, out=sys.stdout):
    """Run ``target`` until ``seconds`` have passed or ``examples`` were
    tried; return (examples run, failure text or None)."""
    count = 0
    failing = False
    deadline = None if seconds is None else time.monotonic() + seconds
    with target.checker() as check:
        def counted(example):
            nonlocal count, failing
            if not failing and (
                    deadline is not None and time.monotonic() > deadline
                    or examples is not None and count >= examples):
                raise _TimeUp()
            count += 1
            try:
                check(example)
            except Exception:
                failing = True  # let hypothesis shrink it, then report
                raise

        test = settings(max_examples=10 ** 9, phases=[
            Phase.generate, Phase.target, Phase.shrink], **_QUIET)(
            given(target.strategy)(counted))
        lines = []
        try:
            with reporting.with_reporter(lines.append):
                test()
        except _TimeUp:
            return count, None  # (what hypothesis said is about _TimeUp)
        except Exception:  # noqa: BLE001 - the failure is the report
            return count, '\n'.join([traceback.format_exc()] + lines)
    return count, None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/fuzz', description=__doc__.split('\n\n')[0],
        epilog='targets: ' + ', '.join(BY_NAME))
    parser.add_argument('--seconds', type=float, default=60.0,
                        help='time budget per target (default 60)')
    parser.add_argument('--examples', type=int,
                        help='stop a target after this many examples')
    parser.add_argument('--target', action='append', choices=list(BY_NAME),
                        help='run only this target (repeatable)')
    parser.add_argument('--list', action='store_true',
                        help='list the targets and exit')
    args = parser.parse_args(argv)
    warnings.simplefilter('ignore', DeprecationWarning)
    if args.list:
        for t in TARGETS:
            print('%-16s %s' % (t.name, t.doc))
        return 0
    chosen = [BY_NAME[n] for n in args.target] if args.target else TARGETS
    results = []
    for t in chosen:
        print('fuzz: %s (%s) for %s' % (
            t.name, t.doc, '%g s' % args.seconds if args.examples is None
            else 'at most %g s or %d examples' % (args.seconds,
                                                   args.examples)),
              flush=True)
        start = time.monotonic()
        count, failure = run(t, args.seconds, args.examples)
        took = time.monotonic() - start
        results.append((t.name, count, took, failure))
        print('fuzz: %s: %d examples in %.1f s, %s' % (
            t.name, count, took, 'FAILED' if failure else 'ok'), flush=True)
        if failure:
            print(failure, flush=True)
    print('\n%-16s %10s %8s  %s' % ('target', 'examples', 'seconds',
                                    'result'))
    for name, count, took, failure in results:
        print('%-16s %10d %8.1f  %s' % (name, count, took,
                                        'FAILED' if failure else 'ok'))
    failed = [r[0] for r in results if r[3]]
    if failed:
        print('\nfuzz: %d target(s) failed: %s.  Each failure above ends '
              'with the minimal input ("Failing test case"); make it an '
              '@example of the target\'s test in tests/unit/fuzz, fix the '
              'code, and run the target again.' % (len(failed),
                                                   ', '.join(failed)))
        return 1
    return 0
