# Sourced by up.sh and down.sh: the cluster's settings (each overridable from the
# environment) and `compose`, the docker-compose command line for it.
#   OFFLOAD_CLUSTER_PROJECT      compose project name (default offload-cluster)
#   OFFLOAD_CLUSTER_SECRETS      certs.sh's folder (default infra/cluster/.secrets)
#   OFFLOAD_CLUSTER_DIR          the node homes (default /tmp/<project>)
#   OFFLOAD_CLUSTER_REDIS_PORT   loopback port of Redis (16379), S3 (14566), Flower (15555):
#   OFFLOAD_CLUSTER_S3_PORT      each published on 127.0.0.1 only
#   OFFLOAD_CLUSTER_FLOWER_PORT
#   OFFLOAD_CLUSTER_SLOTS        jobs at once per node (2)
#   OFFLOAD_CLUSTER_SENTINEL=1   add a replica and three Sentinels (docker-compose.sentinel.yml)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OFFLOAD_CLUSTER_PROJECT=${OFFLOAD_CLUSTER_PROJECT:-offload-cluster}
export OFFLOAD_CLUSTER_SECRETS=${OFFLOAD_CLUSTER_SECRETS:-$HERE/.secrets}
export OFFLOAD_CLUSTER_DIR=${OFFLOAD_CLUSTER_DIR:-/tmp/$OFFLOAD_CLUSTER_PROJECT}
export OFFLOAD_CLUSTER_REDIS_PORT=${OFFLOAD_CLUSTER_REDIS_PORT:-16379}
export OFFLOAD_CLUSTER_S3_PORT=${OFFLOAD_CLUSTER_S3_PORT:-14566}
export OFFLOAD_CLUSTER_FLOWER_PORT=${OFFLOAD_CLUSTER_FLOWER_PORT:-15555}
export OFFLOAD_CLUSTER_SLOTS=${OFFLOAD_CLUSTER_SLOTS:-2}
compose=(docker-compose -p "$OFFLOAD_CLUSTER_PROJECT" -f "$HERE/docker-compose.yml")
if [ "${OFFLOAD_CLUSTER_SENTINEL:-0}" = 1 ]; then
    compose+=(-f "$HERE/docker-compose.sentinel.yml")
fi
