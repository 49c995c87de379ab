#!/bin/sh
# Start one Redis process of the test cluster, its configuration written from the secrets in
# /secrets (certs.sh) into an owner-only file, so no password is on a command line:
#   redis.sh master   HOST   the broker: TLS only, ACL users (default user off), AOF
#   redis.sh replica  HOST   the same, replicating the master `redis` over TLS
#   redis.sh sentinel HOST   a Sentinel on 26379 (TLS, requirepass) watching `mymaster`
# HOST is the name others reach this process by (announced to the Sentinels and clients).
set -eu
role=$1
host=$2
umask 077
admin=$(cat /secrets/admin.password)
tls() {
    printf 'port 0\ntls-port %s\n' "$1"
    printf 'tls-cert-file /secrets/redis.crt\ntls-key-file /secrets/redis.key\n'
    printf 'tls-ca-cert-file /secrets/ca.crt\ntls-auth-clients no\ntls-replication yes\n'
}
case "$role" in
master | replica)
    mkdir -p /data
    conf=/data/redis.conf
    {
        tls 6379
        printf 'aclfile /secrets/users.acl\ndir /data\nappendonly yes\nappendfsync always\n'
        printf 'maxmemory 256mb\nmaxmemory-policy noeviction\n'
        printf 'masteruser offload-admin\nmasterauth %s\n' "$admin"
        printf 'replica-announce-ip %s\n' "$host"
        if [ "$role" = replica ]; then printf 'replicaof redis 6379\n'; fi
    } >"$conf"
    exec redis-server "$conf"
    ;;
sentinel)
    conf=/tmp/sentinel.conf # Sentinels rewrite their file: it must be writable
    {
        tls 26379
        printf 'requirepass %s\n' "$(cat /secrets/sentinel.password)"
        printf 'sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n'
        printf 'sentinel announce-ip %s\n' "$host"
        printf 'sentinel monitor mymaster redis 6379 2\n'
        printf 'sentinel auth-user mymaster offload-admin\nsentinel auth-pass mymaster %s\n' "$admin"
        printf 'sentinel down-after-milliseconds mymaster 1000\n'
        printf 'sentinel failover-timeout mymaster 5000\n'
    } >"$conf"
    exec redis-server "$conf" --sentinel
    ;;
*)
    echo "redis.sh: master, replica or sentinel, not $role" >&2
    exit 2
    ;;
esac
