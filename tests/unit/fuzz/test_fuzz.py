"""The fuzz targets of tests/fuzz, run briefly: a fixed number of
examples per target, derandomized (the same examples every run, so CI is
deterministic).  ``tools/fuzz`` runs the same properties for longer with
fresh seeds; an input it finds that fails goes into an ``@example`` here
with the fix that makes it pass."""

import pytest
from hypothesis import given

from tests.fuzz import rest_targets
from tests.fuzz import runner

T = runner.BY_NAME


def brief(name):
    """``@given`` the target's strategy, with its CI settings."""
    target = T[name]
    return lambda fn: runner.ci_settings(target)(given(target.strategy)(fn))


@brief('codec-decode')
def test_codec_decoders_raise_only_ursa_errors(case):
    T['codec-decode'].check(case)


@brief('codec-roundtrip')
def test_codec_messages_round_trip(message):
    T['codec-roundtrip'].check(message)


@brief('frames')
def test_frame_reader_agrees_with_the_decoder_however_split(case):
    T['frames'].check(case)


@brief('nbd-handshake')
def test_nbd_negotiation_raises_only_protocol_errors(case):
    T['nbd-handshake'].check(case)


@brief('nbd-requests')
def test_nbd_request_parsing_and_checks(case):
    T['nbd-requests'].check(case)


@brief('nbd-gateway')
def test_nbd_gateway_session_ends_cleanly(stream):
    T['nbd-gateway'].check(stream)


@pytest.fixture(scope='module')
def master():
    with rest_targets.MasterServer() as server:
        yield server


@brief('rest-signed')
def test_signed_rest_requests_are_never_500(master, case):
    T['rest-signed'].check(master, case)


@brief('rest-unsigned')
def test_unsigned_rest_requests_are_401(master, case):
    T['rest-unsigned'].check(master, case)
