#!/usr/bin/env bash
# Stop the test cluster and remove its containers, network and volumes (secrets are kept).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OFFLOAD_CLUSTER_PROJECT=${OFFLOAD_CLUSTER_PROJECT:-offload-cluster}
export OFFLOAD_CLUSTER_SECRETS=${OFFLOAD_CLUSTER_SECRETS:-$HERE/.secrets}
export OFFLOAD_CLUSTER_DIR=${OFFLOAD_CLUSTER_DIR:-/tmp/$OFFLOAD_CLUSTER_PROJECT}
export OFFLOAD_CLUSTER_REDIS_PORT=${OFFLOAD_CLUSTER_REDIS_PORT:-16379}
export OFFLOAD_CLUSTER_S3_PORT=${OFFLOAD_CLUSTER_S3_PORT:-14566}
export OFFLOAD_CLUSTER_FLOWER_PORT=${OFFLOAD_CLUSTER_FLOWER_PORT:-15555}
timeout 120 docker-compose -p "$OFFLOAD_CLUSTER_PROJECT" -f "$HERE/docker-compose.yml" down -v -t 10
rm -rf "$OFFLOAD_CLUSTER_DIR"
