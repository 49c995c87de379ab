#!/usr/bin/env bash
# Make the test cluster's secrets, once, into infra/cluster/.secrets (gitignored, 0700):
#   ca.crt ca.key            a private CA (10 years)
#   redis.crt/.key s3.crt/.key  server certificates signed by it, for the service names,
#                            localhost and 127.0.0.1 (the host reaches them on loopback);
#                            redis.crt also names the replica and the Sentinels
#   users.acl                Redis ACL file: the default user off, one user per role
#                            (`offload acl`) and offload-admin (all rights)
#   sentinel.password/.env   the Sentinels' password (their requirepass; redis.sh)
#   <role>.env               OFFLOAD_REDIS_USER / OFFLOAD_REDIS_PASSWORD for each role
#   admin.password flower.env key (the cluster key, `offload key init`)
# Existing files are kept: delete the folder to start over. OFFLOAD_CLUSTER_SECRETS moves it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OFFLOAD_CLUSTER_SECRETS:-$HERE/.secrets}
OFFLOAD=${OFFLOAD_BIN:-$ROOT/.venv/bin/offload}
command -v openssl >/dev/null || { echo "certs: openssl not found" >&2; exit 1; }
mkdir -p "$OUT" && chmod 0700 "$OUT"
cd "$OUT"
umask 077

if [ ! -f ca.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=offload cluster CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
fi
for svc in redis s3; do
    [ -f "$svc.crt" ] && continue
    names="DNS:$svc"
    [ "$svc" = redis ] && names="$names,DNS:redis-replica,DNS:sentinel-1,DNS:sentinel-2,DNS:sentinel-3"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$svc" -keyout "$svc.key" -out "$svc.csr" 2>/dev/null
    printf 'subjectAltName=%s,DNS:localhost,IP:127.0.0.1\n' "$names" >"$svc.ext"
    openssl x509 -req -in "$svc.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -extfile "$svc.ext" -out "$svc.crt" 2>/dev/null
    rm -f "$svc.csr" "$svc.ext"
done
chmod 0644 ./*.crt  # keys stay 0600: every service runs as root in its container

if [ ! -f users.acl ]; then
    admin=$(openssl rand -hex 24)
    printf '%s\n' "$admin" >admin.password
    {
        # off, no password: nobody logs in as it; its rights stay, as Redis 7.0 replays the
        # AOF's MULTI/EXEC blocks as the default user (without them the replay is refused)
        printf 'user default off resetpass ~* &* +@all\n'
        printf 'user offload-admin reset on >%s ~* &* +@all\n' "$admin"
        # `ACL SETUSER u rules` -> `user u rules`; patterns unquoted (no spaces in them)
        OFFLOAD_REDIS_URL=redis://redis:6379/0 "$OFFLOAD" acl --passwords |
            sed -n 's/^ACL SETUSER /user /p' | tr -d '"'
    } >users.acl
    # the passwords printed above are in the users lines (>password): write each role's env
    while read -r _ user _ _ pw _; do
        case "$user" in offload-*) ;; *) continue ;; esac
        printf 'OFFLOAD_REDIS_USER=%s\nOFFLOAD_REDIS_PASSWORD=%s\n' "$user" "${pw#>}" \
            >"${user#offload-}.env"
    done <users.acl
fi
[ -f sentinel.password ] || openssl rand -hex 24 >sentinel.password
[ -f sentinel.env ] || printf 'OFFLOAD_REDIS_SENTINEL_PASSWORD=%s\n' "$(cat sentinel.password)" >sentinel.env
[ -f flower.env ] || printf "OFFLOAD_FLOWER_AUTH=admin:%s\n" "$(openssl rand -hex 16)" >flower.env
[ -f key ] || OFFLOAD_KEY_FILE="$OUT/key" "$OFFLOAD" key init >/dev/null
echo "certs: secrets in $OUT"
