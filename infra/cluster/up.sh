#!/usr/bin/env bash
# Start the test cluster: secrets (certs.sh), images (build.sh with OFFLOAD_BUILD_CLUSTER=1;
# OFFLOAD_SKIP_IMAGES=1 skips it), then `docker-compose up -d`. Settings: env.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$HERE/certs.sh"
[ "${OFFLOAD_SKIP_IMAGES:-0}" = 1 ] || OFFLOAD_BUILD_CLUSTER=1 "$HERE/../images/build.sh"
mkdir -p "$OFFLOAD_CLUSTER_DIR"/node-{1,2,3}
timeout 180 "${compose[@]}" up -d
echo "cluster $OFFLOAD_CLUSTER_PROJECT up: redis rediss://127.0.0.1:$OFFLOAD_CLUSTER_REDIS_PORT" \
    "(CA $OFFLOAD_CLUSTER_SECRETS/ca.crt), s3 https://127.0.0.1:$OFFLOAD_CLUSTER_S3_PORT," \
    "flower http://127.0.0.1:$OFFLOAD_CLUSTER_FLOWER_PORT"
