"""Compare the replicas of a volume's chunks (``ursa volume check``).

For every allocated chunk, every replica in the current replica set is
asked for its epoch, the CRC32C of each block and a digest of its snapshot
layers; replicas must agree on all of them.  Holes compare equal to
written zeros.
"""

import asyncio

from cinder_ursa import exception
from cinder_ursa.client.layout import Layout
from cinder_ursa.common import checksum
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio


async def check_volume(cluster, ref, timeout=30.0):
    """Return a report dict: chunks checked, replicas compared, problems."""
    vol = (await cluster.master.request('GET', '/volumes/%s' % ref))['volume']
    nchunks = Layout.for_volume(vol).chunks
    problems = []
    checked = replicas = 0
    digests = {}
    for start in range(0, nchunks, 4096):
        count = min(4096, nchunks - start)
        reply = await cluster.master.chunk_map(vol['id'], start, count)
        for chunk in reply['chunks']:
            checked += 1
            infos = await asyncio.gather(*(
                _info(cluster, vol['id'], chunk['index'], r, timeout)
                for r in chunk['replicas']), return_exceptions=True)
            good = {}
            for r, info in zip(chunk['replicas'], infos, strict=False):
                replicas += 1
                if isinstance(info, Exception):
                    problems.append({
                        'index': chunk['index'], 'server': r['id'],
                        'problem': 'unreadable: %s' % info})
                    continue
                if info is None:  # never written on this replica
                    good[r['id']] = []
                    if digests.setdefault(chunk['index'], 0) != 0:
                        problems.append({
                            'index': chunk['index'], 'server': r['id'],
                            'problem': 'snapshot layers missing'})
                    continue
                epoch, _, digest, crcs = info
                good[r['id']] = crcs
                if digest != digests.setdefault(chunk['index'], digest):
                    problems.append({
                        'index': chunk['index'], 'server': r['id'],
                        'problem': 'snapshot layers differ from the first '
                                   'replica'})
                if epoch != chunk['epoch']:
                    problems.append({
                        'index': chunk['index'], 'server': r['id'],
                        'problem': 'epoch %d, master has %d' % (
                            epoch, chunk['epoch'])})
            if len({tuple(c) for c in good.values()}) > 1:
                ref_id, ref_crcs = next(iter(good.items()))
                for sid, crcs in good.items():
                    if crcs != ref_crcs:
                        diff = [i for i in range(max(len(crcs),
                                                     len(ref_crcs)))
                                if _at(crcs, i) != _at(ref_crcs, i)]
                        problems.append({
                            'index': chunk['index'], 'server': sid,
                            'problem': '%d block(s) differ from server %d, '
                                       'first at block %d' % (
                                           len(diff), ref_id, diff[0])})
            if len(chunk['replicas']) < vol['replicas']:
                problems.append({
                    'index': chunk['index'], 'server': None,
                    'problem': 'degraded: %d of %d replicas' % (
                        len(chunk['replicas']), vol['replicas'])})
    return {'volume': vol['name'], 'chunks': checked, 'replicas': replicas,
            'problems': problems}


def _at(crcs, i):
    return crcs[i] if i < len(crcs) else checksum.ZERO_CRC


async def _info(cluster, vol_id, index, replica, timeout):
    try:
        conn = await cluster.pool.get(replica['address'], replica['port'])
        rid = aio.next_req_id()
        reply = await conn.request(rid, codec.encode_chunk_info(
            rid, vol_id, index), timeout)
        return codec.decode_chunk_info_ok(reply.body)
    except exception.NotFound:
        # Allocated but never written on this replica: all holes.
        return None
