"""Roles: what each kind of principal may ask the masters (least
rights), without I/O.

A principal (see ``common.auth``) has one role.  ``admin`` may call every
route; each other role a list of (method, route pattern under
``rest.PREFIX``) read from the code of the callers that sign with it:
the master refuses the others with 403 (Forbidden), except the few
routes ``SAME_AS`` lets whoever may call another.  A test checks that
every pattern here is a route of the master.
"""

# Route patterns under rest.PREFIX, as the master registers them.
_VOLUME = '/volumes/{ref}'
_ATTACHMENT = _VOLUME + '/attachments/{host}'

# What the client library's data path asks the master (client/volume.py,
# chunkmap.py, cluster.py, clone.py, flush.py): leases (their replies
# carry a ticket for the data protocol), read-only tickets, the chunk
# maps and the servers, dropping a failed replica, the snapshot a clone
# reads.  Both the Cinder driver (image copies) and the hypervisors'
# ursa-nbd and ursa-attach use it; a host principal gets a ticket only
# for a volume attached to its host (the master checks).
_DATA_PATH = frozenset({
    ('GET', '/chunkservers'),
    ('GET', _VOLUME),
    ('GET', _VOLUME + '/chunks'),
    ('POST', _VOLUME + '/chunks/{idx}/drop'),
    ('POST', _VOLUME + '/lease'),
    ('PUT', _VOLUME + '/lease'),
    ('DELETE', _VOLUME + '/lease'),
    ('POST', _VOLUME + '/tickets'),
    ('GET', '/snapshots/{ref}'),
})

# Role -> the (method, route) it may call; admin may call every route.
# Each list is what that role's code calls (least rights), read from
# it: a route missing here is refused with 403 (Forbidden).
ROLES = {
    'admin': None,
    # ursa-chunkserver (chunkserver/controlplane.py, authority.py,
    # rebuild.py, replication.py): register, heartbeat, the servers, a
    # volume and a chunk's members, and the membership changes of
    # rebuilds and dropped replicas.
    'chunkserver': frozenset({
        ('POST', '/chunkservers'),
        ('PUT', '/chunkservers/{id}/heartbeat'),
        ('GET', '/chunkservers'),
        ('GET', _VOLUME),
        ('GET', _VOLUME + '/chunks'),
        ('POST', _VOLUME + '/chunks/{idx}/join'),
        ('POST', _VOLUME + '/chunks/{idx}/promote'),
        ('POST', _VOLUME + '/chunks/{idx}/abandon'),
        ('POST', _VOLUME + '/chunks/{idx}/drop'),
    }),
    # The Cinder driver (volume/driver.py, images.py and the client
    # library): volumes, snapshots, clones, attachments, the cluster's
    # capacity, revoking a lease (force detach).
    'volume': _DATA_PATH | frozenset({
        ('GET', '/cluster'),
        ('GET', '/volumes'),
        ('POST', '/volumes'),
        ('PATCH', _VOLUME),
        ('DELETE', _VOLUME),
        ('PUT', _VOLUME + '/size'),
        ('POST', _VOLUME + '/revert'),
        ('POST', _VOLUME + '/detach-parent'),
        ('POST', _VOLUME + '/lease/revoke'),
        ('GET', _VOLUME + '/snapshots'),
        ('POST', _VOLUME + '/snapshots'),
        ('GET', '/snapshots'),
        ('PATCH', '/snapshots/{ref}'),
        ('DELETE', '/snapshots/{ref}'),
        ('GET', '/attachments'),
        ('GET', _VOLUME + '/attachments'),
        ('POST', _VOLUME + '/attachments'),
        ('GET', _ATTACHMENT),
        ('PUT', _ATTACHMENT),
        ('DELETE', _ATTACHMENT),
    }),
    # ursa-nbd and ursa-attach on a hypervisor (nbd/server.py,
    # attach/agent.py and the client library): its own attachments,
    # leases and tickets (the master checks the host: the principal's
    # name), the volumes it may export.
    'host': _DATA_PATH | frozenset({
        ('GET', '/volumes'),
        ('GET', '/attachments'),
        ('GET', _VOLUME + '/attachments'),
        # ursa-nbd's list of a volume's qemu:dirty-bitmap: contexts.
        ('GET', _VOLUME + '/snapshots'),
        ('GET', _ATTACHMENT),
        ('PUT', _ATTACHMENT),
        ('DELETE', _ATTACHMENT),
        # nova-ha-agent signing as its host: its storage heartbeat.
        ('PUT', '/hosts/{host}/heartbeat'),
    }),
    # nova_ha (nova_ha/fence.py, evacuator.py, agent.py): fencing, the
    # hosts' storage heartbeats and the status it checks.
    'nova_ha': frozenset({
        ('GET', '/cluster'),
        ('GET', '/hosts/{host}'),
        ('POST', '/hosts/{host}/fence'),
        ('DELETE', '/hosts/{host}/fence'),
        ('PUT', '/hosts/{host}/heartbeat'),
        ('GET', '/host-heartbeats'),
    }),
}


# Routes any role may call that may call another: reading a volume's
# lease history takes the rights to read the volume (its current holder
# is there too), whether or not the role's code reads the history.
SAME_AS = {
    ('GET', _VOLUME + '/lease-history'): ('GET', _VOLUME),
}


def allows(role, method, route):
    """Whether ``role`` may call ``method`` on ``route`` (a pattern
    under PREFIX, e.g. '/volumes/{ref}')."""
    routes = ROLES.get(role, frozenset())
    if routes is None:
        return True
    method, route = SAME_AS.get((method, route), (method, route))
    return (method, route) in routes
