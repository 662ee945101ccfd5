#!/bin/bash
# DevStack plugin of cinder-ursa: the Ursa cluster (master, chunk servers,
# NBD gateway), its Cinder backend and volume type, and nova_ha (agent on
# computes, evacuator on the controller).  Phases: stack install,
# post-config, extra; unstack; clean.
#
# One master by default; with several URSA_MASTER_HOSTS (see
# devstack/README.md) every node running ursa-master joins one leader
# election over a shared database and tooz backend, and every client option
# lists all the master URLs.

# The master URLs, comma-separated: URSA_MASTER_URLS, else one per
# URSA_MASTER_HOSTS entry, else this node's SERVICE_HOST.
function ursa_master_urls {
    if [[ -n $URSA_MASTER_URLS ]]; then
        echo "$URSA_MASTER_URLS"
        return
    fi
    local host urls=""
    for host in ${URSA_MASTER_HOSTS//,/ }; do
        urls="$urls${urls:+,}http://$(ursa_url_host "$host"):$URSA_MASTER_PORT"
    done
    echo "${urls:-http://$SERVICE_HOST:$URSA_MASTER_PORT}"
}

# An address as the host part of a URL (an IPv6 address in brackets).
function ursa_url_host {
    if [[ $1 == *:* && $1 != \[* ]]; then
        echo "[$1]"
    else
        echo "$1"
    fi
}

# True when the layout has several masters.
function ursa_several_masters {
    [[ $(ursa_master_urls) == *,* ]]
}

# DevStack's run_process and stop_process act only on enabled services:
# where ursa-cs is enabled, so is each of ursa-cs1..URSA_CHUNKSERVERS.
function enable_ursa_chunkservers {
    local i
    if is_service_enabled ursa-cs; then
        for i in $(seq 1 "$URSA_CHUNKSERVERS"); do
            enable_service "ursa-cs$i"
        done
    fi
}

function install_ursa {
    install_package qemu-utils
    setup_develop "$URSA_DIR"
}

function configure_ursa {
    sudo install -d -o "$STACK_USER" "$URSA_CONF_DIR" "$URSA_DATA_DIR"
    if [[ ! -f $URSA_KEY_FILE ]]; then
        "$PYTHON" -c "from cinder_ursa.common import auth; auth.create_key_file('$URSA_KEY_FILE')"
    fi
    iniset "$URSA_CONF" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    iniset "$URSA_CONF" ursa cluster_key_file "$URSA_KEY_FILE"
    iniset "$URSA_CONF" ursa master_url "$(ursa_master_urls)"
    iniset "$URSA_CONF" ursa_master bind_host "$SERVICE_LISTEN_ADDRESS"
    iniset "$URSA_CONF" ursa_master bind_port "$URSA_MASTER_PORT"
    iniset "$URSA_CONF" ursa_master state_dir "$URSA_DATA_DIR/master"
    iniset "$URSA_CONF" ursa_master failure_domain "$URSA_FAILURE_DOMAIN"
    iniset "$URSA_CONF" ursa_chunkserver bind_host "$SERVICE_LISTEN_ADDRESS"
    configure_ursa_masters
    # NBD authenticates no client: the gateway serves this host's QEMU on
    # loopback (the Cinder driver's ursa_nbd_host default), and only
    # volumes attached to this host ([ursa_nbd] require_attachment).
    iniset "$URSA_CONF" ursa_nbd bind_host 127.0.0.1
    iniset "$URSA_CONF" ursa_nbd bind_port "$URSA_NBD_PORT"
    iniset "$URSA_CONF" ursa_nbd state_dir "$URSA_DATA_DIR/nbd"
    iniset "$URSA_CONF" ursa_attach host "$(hostname)"
    local i dirs=""
    if is_service_enabled ursa-cs; then
        for i in $(seq 1 "$URSA_CHUNKSERVERS"); do
            mkdir -p "$URSA_DATA_DIR/cs$i"
            iniset "$URSA_CONF_DIR/cs$i.conf" ursa_chunkserver data_dir "$URSA_DATA_DIR/cs$i"
            iniset "$URSA_CONF_DIR/cs$i.conf" ursa_chunkserver bind_port $((URSA_CS_BASE_PORT + i))
            dirs="$dirs${dirs:+,}$URSA_DATA_DIR/cs$i"
        done
    fi
    # The gateway reads the replicas of this host's chunk servers directly.
    iniset "$URSA_CONF" ursa_nbd local_chunkserver_dirs "$dirs"
}

# Several masters: the database and tooz backend they share, and the
# address other nodes reach this node's master and chunk servers at.  With
# one master nothing is written unless set in local.conf: SQLite and a
# file:// backend under the master's state_dir, the bind addresses.
function configure_ursa_masters {
    local db=$URSA_DATABASE_CONNECTION coord=$URSA_COORDINATION_URL
    local ip=$URSA_HOST_IP
    if ursa_several_masters; then
        if [[ -z $db ]]; then
            if [[ -z ${DATABASE_TYPE:-} ]]; then
                die $LINENO "Several Ursa masters need one database: set" \
                    "DATABASE_TYPE and MYSQL_HOST as on any DevStack subnode," \
                    "or URSA_DATABASE_CONNECTION"
            fi
            db=$(database_connection_url ursa)
            # Created once, where DevStack runs the database server.
            if is_service_enabled "$DATABASE_TYPE"; then
                recreate_database ursa
            fi
        fi
        coord=${coord:-etcd3+http://$SERVICE_HOST:${ETCD_PORT:-2379}?api_version=v3}
        ip=${ip:-${HOST_IP:-}}
    fi
    if [[ -n $db ]]; then
        iniset "$URSA_CONF" ursa_master database_connection "$db"
    fi
    if [[ -n $coord ]]; then
        iniset "$URSA_CONF" ursa_master coordination_url "$coord"
    fi
    if [[ -n $ip ]]; then
        iniset "$URSA_CONF" ursa_master advertise_url "http://$(ursa_url_host "$ip"):$URSA_MASTER_PORT"
        iniset "$URSA_CONF" ursa_chunkserver advertise_host "$ip"
    fi
}

function start_ursa {
    local bin
    bin=$(get_python_exec_prefix)
    if is_service_enabled ursa-master; then
        run_process ursa-master "$bin/ursa-master --config-file $URSA_CONF"
    fi
    local i
    if is_service_enabled ursa-cs; then
        for i in $(seq 1 "$URSA_CHUNKSERVERS"); do
            run_process "ursa-cs$i" "$bin/ursa-chunkserver --config-file $URSA_CONF --config-file $URSA_CONF_DIR/cs$i.conf"
        done
    fi
    if is_service_enabled ursa-nbd; then
        run_process ursa-nbd "$bin/ursa-nbd --config-file $URSA_CONF"
    fi
}

function configure_cinder_ursa {
    iniset "$CINDER_CONF" ursa volume_driver cinder_ursa.volume.driver.UrsaDriver
    iniset "$CINDER_CONF" ursa volume_backend_name ursa
    iniset "$CINDER_CONF" ursa ursa_master_urls "$(ursa_master_urls)"
    iniset "$CINDER_CONF" ursa ursa_cluster_key_file "$URSA_KEY_FILE"
    iniset "$CINDER_CONF" ursa ursa_replicas "$URSA_REPLICAS"
    # cinder-backup keeps its backups in the cluster, incrementals from
    # the chunk servers' changed blocks (URSA_CINDER_BACKUP=False: Cinder's
    # own choice of backup driver).
    if is_service_enabled c-bak && [[ "$URSA_CINDER_BACKUP" == "True" ]]; then
        iniset "$CINDER_CONF" DEFAULT backup_driver cinder_ursa.backup.driver.UrsaBackupDriver
        iniset "$CINDER_CONF" DEFAULT backup_ursa_master_urls "$(ursa_master_urls)"
        iniset "$CINDER_CONF" DEFAULT backup_ursa_cluster_key_file "$URSA_KEY_FILE"
    fi
}

function configure_nova_ha {
    sudo install -d -o "$STACK_USER" "$NOVA_HA_CONF_DIR" "$NOVA_HA_STATE_DIR"
    iniset "$NOVA_HA_CONF" DEFAULT state_path "$NOVA_HA_STATE_DIR"
    iniset "$NOVA_HA_CONF" coordination backend_url "$NOVA_HA_COORDINATION_URL"
    iniset "$NOVA_HA_CONF" agent host "$(hostname)"
    iniset "$NOVA_HA_CONF" evacuator grace_period "$NOVA_HA_GRACE_PERIOD"
    iniset "$NOVA_HA_CONF" ursa master_url "$(ursa_master_urls)"
    iniset "$NOVA_HA_CONF" ursa cluster_key_file "$URSA_KEY_FILE"
    iniset "$NOVA_HA_CONF" nova auth_type password
    iniset "$NOVA_HA_CONF" nova auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$NOVA_HA_CONF" nova username "$NOVA_HA_USER"
    iniset "$NOVA_HA_CONF" nova password "$SERVICE_PASSWORD"
    iniset "$NOVA_HA_CONF" nova project_name "$SERVICE_PROJECT_NAME"
    iniset "$NOVA_HA_CONF" nova user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$NOVA_HA_CONF" nova project_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$NOVA_HA_CONF" nova region_name "$REGION_NAME"
}

function create_nova_ha_accounts {
    local user
    user=$(get_or_create_user "$NOVA_HA_USER" "$SERVICE_PASSWORD" "$SERVICE_DOMAIN_NAME")
    get_or_add_user_project_role admin "$user" "$SERVICE_PROJECT_NAME"
}

function create_ursa_volume_type {
    openstack volume type show "$URSA_VOLUME_TYPE" >/dev/null 2>&1 ||
        openstack volume type create --property volume_backend_name=ursa "$URSA_VOLUME_TYPE"
}

function start_nova_ha {
    local bin
    bin=$(get_python_exec_prefix)
    if is_service_enabled nova-ha-agent; then
        run_process nova-ha-agent "$bin/nova-ha-agent --config-file $NOVA_HA_CONF"
    fi
    if is_service_enabled nova-ha-evacuator; then
        run_process nova-ha-evacuator "$bin/nova-ha-evacuator --config-file $NOVA_HA_CONF"
    fi
}

function stop_ursa {
    local i
    stop_process nova-ha-evacuator
    stop_process nova-ha-agent
    stop_process ursa-nbd
    for i in $(seq 1 "$URSA_CHUNKSERVERS"); do
        stop_process "ursa-cs$i"
    done
    stop_process ursa-master
}

function cleanup_ursa {
    sudo rm -rf "$URSA_DATA_DIR" "$URSA_CONF_DIR" "$NOVA_HA_STATE_DIR" "$NOVA_HA_CONF_DIR"
}

if is_service_enabled ursa-master ursa-cs nova-ha-agent nova-ha-evacuator; then
    enable_ursa_chunkservers
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing cinder-ursa"
        install_ursa
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring and starting Ursa"
        configure_ursa
        start_ursa
        if is_service_enabled cinder; then
            configure_cinder_ursa
        fi
        configure_nova_ha
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if is_service_enabled cinder; then
            create_ursa_volume_type
        fi
        create_nova_ha_accounts
        start_nova_ha
    fi
    if [[ "$1" == "unstack" ]]; then
        stop_ursa
    fi
    if [[ "$1" == "clean" ]]; then
        cleanup_ursa
    fi
fi
