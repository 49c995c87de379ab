#!/usr/bin/env bash
# Start the test cluster: secrets (certs.sh), images (build.sh with OFFLOAD_BUILD_CLUSTER=1),
# then `docker-compose up -d`. Environment: OFFLOAD_CLUSTER_PROJECT (default offload-cluster),
# OFFLOAD_CLUSTER_DIR (node homes; default /tmp/<project>), OFFLOAD_CLUSTER_REDIS_PORT (16379),
# OFFLOAD_CLUSTER_S3_PORT (14566), OFFLOAD_CLUSTER_FLOWER_PORT (15555).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OFFLOAD_CLUSTER_PROJECT=${OFFLOAD_CLUSTER_PROJECT:-offload-cluster}
export OFFLOAD_CLUSTER_SECRETS=${OFFLOAD_CLUSTER_SECRETS:-$HERE/.secrets}
export OFFLOAD_CLUSTER_DIR=${OFFLOAD_CLUSTER_DIR:-/tmp/$OFFLOAD_CLUSTER_PROJECT}
export OFFLOAD_CLUSTER_REDIS_PORT=${OFFLOAD_CLUSTER_REDIS_PORT:-16379}
export OFFLOAD_CLUSTER_S3_PORT=${OFFLOAD_CLUSTER_S3_PORT:-14566}
export OFFLOAD_CLUSTER_FLOWER_PORT=${OFFLOAD_CLUSTER_FLOWER_PORT:-15555}
"$HERE/certs.sh"
[ "${OFFLOAD_SKIP_IMAGES:-0}" = 1 ] || OFFLOAD_BUILD_CLUSTER=1 "$HERE/../images/build.sh"
mkdir -p "$OFFLOAD_CLUSTER_DIR"/node-{1,2,3}
timeout 180 docker-compose -p "$OFFLOAD_CLUSTER_PROJECT" -f "$HERE/docker-compose.yml" up -d
echo "cluster $OFFLOAD_CLUSTER_PROJECT up: redis rediss://127.0.0.1:$OFFLOAD_CLUSTER_REDIS_PORT" \
    "(CA $OFFLOAD_CLUSTER_SECRETS/ca.crt), s3 https://127.0.0.1:$OFFLOAD_CLUSTER_S3_PORT," \
    "flower http://127.0.0.1:$OFFLOAD_CLUSTER_FLOWER_PORT"
