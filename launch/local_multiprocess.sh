#!/usr/bin/env bash
# N JAX processes on this machine's CPU that cooperate through jax.distributed: the multi-host
# code paths (per-process data shards, global arrays, orbax from every process) on one machine.
#
#   bash launch/local_multiprocess.sh N CONFIG WORKDIR [extra flags for jax_cavs.main]
#   bash launch/local_multiprocess.sh 2 configs/finetune.py:runlocal /tmp/ft2
#
# Process 0 hosts the coordinator on 127.0.0.1 and prints to this terminal; the others log to
# WORKDIR/logs/process_<i>.log. Each process has one CPU device unless XLA_FLAGS says otherwise
# (e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4: 4 devices per process).
# Environment: PYTHON (default: python), COORDINATOR_PORT (default: a free port).
# If one process fails, the others are stopped and the script exits with its status.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [extra flags]" >&2
  exit 2
fi
num_processes=$1 config=$2 workdir=$3
shift 3
if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi
python=${PYTHON:-python}
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port=${COORDINATOR_PORT:-$("$python" -c "$free_port")}

export JAX_PLATFORMS=cpu
mkdir -p "$workdir/logs"
pids=()
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  command=("$python" -m jax_cavs.main --config "$config" --workdir "$workdir"
           --config.parallel.distributed=on
           --config.parallel.coordinator_address="127.0.0.1:$port"
           --config.parallel.num_processes="$num_processes"
           --config.parallel.process_id="$i" "$@")
  if [[ $i -eq 0 ]]; then
    "${command[@]}" &
  else
    "${command[@]}" > "$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for ((left = num_processes; left > 0; left--)); do
  wait -n && continue
  status=$?
  echo "$0: a process failed (status $status); stopping the others (logs: $workdir/logs)" >&2
  stop_all
  break
done
wait || true
exit "$status"
