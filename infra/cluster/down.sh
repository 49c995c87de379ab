#!/usr/bin/env bash
# Stop the test cluster and remove its containers, networks and volumes (secrets are kept),
# and the job containers its nodes left (a node killed mid-job leaves its sibling container).
# Settings: env.sh (the same as up.sh was given).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# this cluster's id (offload:cluster), which its job containers carry as offload.cluster
auth="REDISCLI_AUTH=$(cat "$OFFLOAD_CLUSTER_SECRETS/admin.password" 2>/dev/null || true)"
id=""
for svc in redis redis-replica; do # after a failover the master may be either, or gone
    [ -z "$id" ] || break
    id=$(timeout 20 "${compose[@]}" exec -T -e "$auth" "$svc" redis-cli --tls --cacert /secrets/ca.crt \
        --user offload-admin --no-auth-warning GET offload:cluster 2>/dev/null | tr -d '\r') || id=""
done
if [ -n "$id" ]; then
    jobs=$(docker ps -aq --filter "label=offload.cluster=$id")
    [ -z "$jobs" ] || docker rm -f $jobs >/dev/null
fi
timeout 120 "${compose[@]}" down -v -t 10
rm -rf "$OFFLOAD_CLUSTER_DIR"
