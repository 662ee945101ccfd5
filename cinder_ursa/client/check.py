"""Compare the replicas of a volume's chunks (``ursa volume check``).

For every allocated chunk, every replica in the current replica set is
asked for its epoch, the CRC32C of each block and a digest of its snapshot
layers; replicas must agree on all of them (and no epoch may be ahead of
the master's: replicas learn a new one with the next request).  Holes
compare equal to written zeros.

With ``deep`` every replica also reads every block and compares it with
its stored CRC: a block whose data and CRC disagree (torn by a power cut,
or rotten) is reported.  With ``repair`` the blocks found differing or torn are
repaired: the chunk's primary pushes its content to the other replicas
(after mending its own torn blocks from a replica that holds them valid),
with the chunk's writes held meanwhile, so a volume in use is repaired
safely.

``check_cluster`` (``ursa cluster check``) compares what every chunk
server holds with what the master knows; ``repair_cluster`` (``--repair``)
fixes what it safely can of what it found.
"""

import asyncio

from cinder_ursa import exception
from cinder_ursa.client.layout import Layout
from cinder_ursa.common import checksum
from cinder_ursa.common import units
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio


async def check_volume(cluster, ref, timeout=30.0, deep=False, repair=False,
                       progress=None):
    """Return a report dict: chunks checked, replicas compared, problems;
    with ``repair``, the blocks repaired, and the problems that remain
    (the volume is checked again).  ``progress(done, total)`` is called
    after each chunk."""
    vol = await cluster.master.volume(ref)
    report = await _check(cluster, vol, timeout, deep, repair, progress)
    if repair:
        if report['repaired']:
            await _flush(cluster, vol['id'], timeout)
        again = await _check(cluster, vol, timeout, deep, False, None)
        report['found'] = report['problems']
        report['problems'] = again['problems']
    return report


async def _check(cluster, vol, timeout, deep, repair, progress):
    nchunks = Layout.for_volume(vol).chunks
    problems = []
    checked = replicas = repaired = 0
    digests = {}
    for start in range(0, nchunks, 4096):
        count = min(4096, nchunks - start)
        reply = await cluster.master.chunk_map(vol['id'], start, count)
        for chunk in reply['chunks']:
            checked += 1
            infos = await asyncio.gather(*(
                _info(cluster, vol['id'], chunk['index'], r, timeout, deep)
                for r in chunk['replicas']), return_exceptions=True)
            good, epochs = {}, {}
            mend = set()
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
                epoch, _, digest, crcs = info[:4]
                if deep and info[4]:
                    mend.update(info[4])
                    problems.append({
                        'index': chunk['index'], 'server': r['id'],
                        'problem': '%d torn block(s) (data and CRC '
                                   'disagree), first at block %d' % (
                                       len(info[4]), info[4][0])})
                good[r['id']] = crcs
                if digest != digests.setdefault(chunk['index'], digest):
                    problems.append({
                        'index': chunk['index'], 'server': r['id'],
                        'problem': 'snapshot layers differ from the first '
                                   'replica'})
                epochs[r['id']] = epoch
            # A replica learns a new epoch with the next request that
            # carries it (reads too), so replicas may lag the master; none
            # may be ahead of it.
            for sid, epoch in epochs.items():
                if epoch > chunk['epoch']:
                    problems.append({
                        'index': chunk['index'], 'server': sid,
                        'problem': 'epoch %d is ahead of the master\'s %d'
                                   % (epoch, chunk['epoch'])})
            if len({tuple(c) for c in good.values()}) > 1:
                ref_id, ref_crcs = next(iter(good.items()))
                for sid, crcs in good.items():
                    if crcs != ref_crcs:
                        diff = [i for i in range(max(len(crcs),
                                                     len(ref_crcs)))
                                if _at(crcs, i) != _at(ref_crcs, i)]
                        mend.update(diff)
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
            if repair and mend:
                repaired += await _repair(cluster, vol['id'], chunk,
                                          sorted(mend), timeout)
            if progress is not None:
                progress(chunk['index'] + 1, nchunks)
    return {'volume': vol['name'], 'chunks': checked, 'replicas': replicas,
            'problems': problems, 'repaired': repaired}


async def _repair(cluster, vol_id, chunk, blocks, timeout):
    """REPAIR runs of ``blocks`` on the chunk's primary; returns how many
    blocks were pushed to the replicas."""
    primary = chunk['replicas'][0]
    conn = await cluster.pool.get(primary['address'], primary['port'])
    done = 0
    i = 0
    while i < len(blocks):
        j = i + 1
        while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and \
                j - i < control.MAX_REPAIR_BLOCKS:
            j += 1
        reply = await conn.call(control.encode_repair, vol_id, chunk['index'],
                                chunk['epoch'], blocks[i], j - i,
                                timeout=timeout)
        control.decode_count_ok(reply.body)
        done += j - i
        i = j
    return done


async def _flush(cluster, vol_id, timeout):
    """Make the repairs durable on every chunk server that is up."""
    for s in await cluster.master.servers():
        if s['state'] != 'up':
            continue
        conn = await cluster.pool.get(s['address'], s['port'])
        reply = await conn.call(codec.encode_flush, vol_id, timeout=timeout)
        codec.reply_status(reply.body)


def _at(crcs, i):
    return crcs[i] if i < len(crcs) else checksum.ZERO_CRC


async def _info(cluster, vol_id, index, replica, timeout, deep=False):
    try:
        conn = await cluster.pool.get(replica['address'], replica['port'])
        reply = await conn.call(control.encode_chunk_info, vol_id, index,
                                deep, timeout=timeout)
        return control.decode_chunk_info_ok(reply.body, deep)
    except exception.NotFound:
        # Allocated but never written on this replica: all holes.
        return None


async def check_cluster(cluster, timeout=60.0):
    """Compare what the chunk servers hold with what the master knows
    (``ursa cluster check``).

    Problems are space nobody can reach (replicas of unknown volumes or
    chunks, preserved blocks no live snapshot reads, layers of snapshot
    sequences never reached), snapshots left half-made, and replicas the
    master counts on that a server lacks.
    Returns a report: servers checked, replicas and bytes seen, problems.
    """
    inv = await cluster.master.inventory()
    vols = {v['id']: v for v in inv['volumes']}
    problems = []

    def problem(kind, detail, server=None, volume=None, index=None,
                nbytes=0, volume_id=None):
        problems.append({'problem': kind, 'detail': detail, 'server': server,
                         'volume': volume, 'index': index, 'bytes': nbytes,
                         'volume_id': volume_id})

    for line in inv.get('figures_drift', ()):
        # Older masters send none.
        problem('kept figures drifted', line)
    for v in vols.values():
        for s in v['snapshots']:
            age = inv['now'] - s['created_at']
            if s['status'] == 'creating' and age > inv['unfinished_after']:
                problem('half-made snapshot', '%s@%s has been creating for '
                        '%d s' % (v['name'], s['name'], age),
                        volume=v['name'])
        if v['status'] == 'trash' and not v['snapshots']:
            problem('trash not emptied', 'volume %s is in the trash with no '
                    'snapshot left' % v['name'], volume=v['name'])
    servers = [s for s in inv['chunkservers'] if s['state'] == 'up']
    for s in inv['chunkservers']:
        if s['state'] != 'up':
            problem('server not checked', 'chunk server %d is %s'
                    % (s['id'], s['state']), server=s['id'])
    replies = await asyncio.gather(*(_inventory(cluster, s, timeout)
                                     for s in servers),
                                   return_exceptions=True)
    held, layered, beyond = set(), set(), []
    replicas = allocated = 0
    for s, reply in zip(servers, replies, strict=True):
        if isinstance(reply, Exception):
            problem('server not checked', 'chunk server %d: %s'
                    % (s['id'], reply), server=s['id'])
            continue
        for vid, idx, _epoch, stale, nbytes, layers in reply:
            replicas += 1
            allocated += nbytes
            v = vols.get(vid)
            name = v['name'] if v else vid
            owners = v['chunks'].get(str(idx)) if v else None
            if owners is None:
                problem('orphan replica', 'chunk %d of %s, which the master '
                        'does not know' % (idx, 'volume ' + name if v else
                                           'unknown volume ' + vid),
                        s['id'], name, idx, nbytes, vid)
                continue
            if s['id'] not in owners:
                if s['id'] in v.get('joining', {}).get(str(idx), ()):
                    continue        # a copy being made: not yet a replica
                if not stale:
                    problem('orphan replica', 'server is not in the replica '
                            'set and the replica is not marked stale',
                            s['id'], name, idx, nbytes, vid)
                continue
            held.add((vid, idx, s['id']))
            if layers:
                layered.add((vid, s['id']))
            beyond.extend((vid, idx, s['id'], n) for n in layers
                          if n > v['snap_seq'])
    if beyond:
        # A snapshot taken since the inventory explains a newer layer.
        now = {v['id']: v['snap_seq']
               for v in (await cluster.master.inventory())['volumes']}
        for vid, idx, sid, n in beyond:
            if n > now.get(vid, 0):
                problem('leaked snapshot layer', 'layer of sequence %d, '
                        'beyond the volume\'s snapshot sequence %d'
                        % (n, now.get(vid, 0)), sid, vols[vid]['name'], idx)
    by_id = {s['id']: s for s in servers}
    for vid, sid in sorted(layered):
        # The server counts the preserved blocks no snapshot reads, by the
        # same rule its garbage collection frees them.
        v = vols[vid]
        try:
            n = await _unneeded(cluster, by_id[sid], v, timeout)
        except exception.UrsaError as e:
            problem('server not checked', 'chunk server %d: %s' % (sid, e),
                    server=sid, volume=v['name'])
            continue
        if n:
            problem('leaked snapshot blocks', '%d preserved block(s) no '
                    'snapshot reads' % n, sid, v['name'],
                    nbytes=n * checksum.BLOCK)
    checked = {s['id'] for s, r in zip(servers, replies, strict=True)
               if not isinstance(r, Exception)}
    for v in vols.values():
        for idx, owners in v['chunks'].items():
            present = [o for o in owners if (v['id'], int(idx), o) in held]
            if not present:
                continue  # allocated, never written: nothing to hold
            for o in owners:
                if o in checked and o not in present:
                    problem('missing replica', 'server has no replica of a '
                            'chunk its peers hold', o, v['name'], int(idx),
                            volume_id=v['id'])
    return {'servers': len(checked), 'replicas': replicas,
            'allocated_bytes': allocated, 'volumes': len(vols),
            'problems': problems}


async def repair_cluster(cluster, problems, timeout=60.0):
    """Fix what :func:`check_cluster` found that is safe to fix; return
    one line per problem saying what was done, or why not.

    * An orphan replica of a chunk the master knows, on a server that is
      neither a replica nor a joining copy of it (asked again now), is
      deleted, but only while a replica of the chunk's current set holds
      a copy: never the last copy of anything.  Replicas of volumes or
      chunks the master does not know are kept (the master's database may
      be older than the data): delete them by hand if sure.
    * A server in a chunk's replica set that lacks the copy its peers
      hold is dropped from the set (as a failed write would): the repair
      planner then copies the chunk to it again, or elsewhere.
    * The master's kept figures (chunk counts by state, per volume, per
      server, the cluster's totals), if they differ from a recount, are
      counted again.

    The rest (half-made snapshots, trash, leaked snapshot blocks) the
    master's own sweeps deal with.
    """
    by_id = {s['id']: s for s in await cluster.master.servers()}
    done = []
    if any(p['problem'] == 'kept figures drifted' for p in problems):
        drifted = (await cluster.master.recount_figures())['drifted']
        done.append('kept figures recounted (%d line(s) differed)'
                    % len(drifted))
    for p in problems:
        where = 'chunk %s/%s on server %s' % (p['volume'], p['index'],
                                               p['server'])
        try:
            if p['problem'] == 'orphan replica':
                done.append(await _delete_orphan(cluster, p, by_id, timeout))
            elif p['problem'] == 'missing replica':
                chunk = (await cluster.master.chunk_map(
                    p['volume_id'], p['index'], 1))['chunks'][0]
                after = await cluster.master.drop_replica(
                    p['volume_id'], p['index'], p['server'], chunk['epoch'])
                if p['server'] in [r['id'] for r in after['replicas']]:
                    done.append('%s: kept in the replica set (its last '
                                'replica)' % where)
                else:
                    done.append('%s: dropped from the replica set (epoch '
                                '%d); the repair planner copies it again'
                                % (where, after['epoch']))
        except exception.UrsaError as e:
            done.append('%s: %s not repaired: %s' % (where, p['problem'], e))
    return done


async def _delete_orphan(cluster, p, by_id, timeout):
    where = 'chunk %s/%s on server %s' % (p['volume'], p['index'],
                                           p['server'])
    if p['volume_id'] is None or p['server'] not in by_id:
        return '%s: kept (unknown volume or server)' % where
    try:
        chunk = (await cluster.master.chunk_map(
            p['volume_id'], p['index'], 1))['chunks']
    except exception.NotFound:
        chunk = []
    if not chunk:
        return ('%s: kept: the master knows no such chunk (delete it by '
                'hand if sure)' % where)
    chunk = chunk[0]
    if p['server'] in [r['id'] for r in chunk['replicas'] +
                       chunk.get('joining', [])]:
        return '%s: kept: the server is a member of the chunk again' % where
    held = False
    for r in chunk['replicas']:
        try:
            if await _info(cluster, p['volume_id'], p['index'], r,
                           timeout) is not None:
                held = True
                break
        except exception.UrsaError:
            continue
    if not held:
        return ('%s: kept: no replica of the chunk\'s set holds a copy, '
                'this one may be the last' % where)
    s = by_id[p['server']]
    conn = await _as_master(cluster, s, timeout)
    try:
        reply = await conn.call(control.encode_delete, p['volume_id'],
                                p['index'], timeout=timeout)
        codec.reply_status(reply.body)
    finally:
        conn.close()
    return '%s: orphan copy deleted (%s)' % (
        where, units.format_size(p['bytes'] or 0))


async def _as_master(cluster, server, timeout):
    """A connection to chunk server ``server`` that claimed the master
    term it follows, as a master's do: DELETE is taken on no other.  Not
    one of the pool: once a newer master is elected, the chunk server
    refuses every request of a connection that claimed an older term,
    reads and writes included.  (This tool holds the cluster key, as the
    master does: the check keeps clients from deleting by mistake, it
    does not stand between the key's holders.)"""
    conn = await aio.PeerConnection.connect(
        server['address'], server['port'], cluster.key, timeout)
    try:
        term = 0
        for _ in range(3):   # 0, then the term it follows (or a newer)
            reply = await conn.call(control.encode_term, term,
                                    timeout=timeout)
            newest = control.decode_count_ok(reply.body)
            if newest <= term:
                return conn
            term = newest
        raise exception.NotLeader(
            reason='chunk server %s:%d keeps following newer master terms '
                   '(%d); retry' % (server['address'], server['port'],
                                    term))
    except BaseException:
        conn.close()
        raise


async def _unneeded(cluster, server, vol, timeout):
    conn = await cluster.pool.get(server['address'], server['port'])
    reply = await conn.call(
        control.encode_snapshot, vol['id'], vol['snap_seq'],
        [s['seq'] for s in vol['snapshots']], dry_run=True, timeout=timeout)
    return control.decode_count_ok(reply.body)


async def _inventory(cluster, server, timeout):
    conn = await cluster.pool.get(server['address'], server['port'])
    reply = await conn.call(control.encode_inventory, timeout=timeout)
    return control.decode_inventory_ok(reply.body)
