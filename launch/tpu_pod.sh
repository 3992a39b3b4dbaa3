#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: the same command on every worker (one JAX process per
# host), cooperating through jax.distributed, which finds the other workers itself on Cloud TPU.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags for jax_cavs.main]
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/cmr.py /mnt/shared/runs/cmr \
#       --config.dataset.data_dir=/mnt/shared/data --config.train.batch_size=64
#
# Every worker must have this repository and its environment at REPO_DIR (default:
# ~/jax_cavs; e.g. `gcloud compute tpus tpu-vm scp --worker=all` or a startup script), and
# WORKDIR and the data dir must be on storage every worker mounts (Filestore/NFS or a
# gcsfuse bucket): orbax writes each checkpoint from all workers. Build the dataset before.
# config.train.batch_size and eval_batch_size are global and must be multiples of the number
# of TPU chips (devices). Environment: REPO_DIR, PYTHON (default: python3), PROJECT (gcloud
# project, default: gcloud's configured one).
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [extra flags]" >&2
  exit 2
fi
tpu_name=$1 zone=$2 config=$3 workdir=$4
shift 4

# The remote command is one string: quote every piece so that spaces survive the ssh hop.
remote="cd ${REPO_DIR:-~/jax_cavs} && ${PYTHON:-python3} -m jax_cavs.main"
for argument in --config "$config" --workdir "$workdir" --config.parallel.distributed=on "$@"; do
  remote+=" $(printf '%q' "$argument")"
done
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$remote"
