#!/usr/bin/env bash
# Runs the BullMQ work-queue bench (bench.js) and prints one JSON line per scenario on stdout
# (progress on stderr).
#
#   run.sh [--valkey URL] [--restart-cmd CMD] [--tasks N] [--payload BYTES] [--workers W]
#          [--concurrency C] [--bulk-batch B] [SCENARIO...] [-- more bench.js options]
#
# SCENARIO: throughput (queue.add, one job per call), bulk (queue.addBulk in chunks of
# --bulk-batch, 100 by default), kill-worker, valkey-restart; all four when none is named.
# Without --valkey, a throwaway valkey-server (no persistence) is started on a free loopback
# port and stopped at the end; valkey-restart then restarts it empty through valkey.sh. With
# --valkey, valkey-restart runs only when --restart-cmd says how to restart that Valkey.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

valkey="" restart_cmd="" tasks=10000 payload=256 workers=4 concurrency=50 bulk_batch=100
scenarios=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --valkey) valkey=$2; shift 2 ;;
    --restart-cmd) restart_cmd=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --payload) payload=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --bulk-batch) bulk_batch=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    throughput | bulk | kill-worker | valkey-restart) scenarios+=("$1"); shift ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -eq 0 ] && scenarios=(throughput bulk kill-worker valkey-restart)

command -v node >/dev/null || { echo "run.sh: node is not installed (see install.sh)" >&2; exit 1; }
[ -d "$here/node_modules/bullmq" ] || "$here/install.sh" >&2

if [ -z "$valkey" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/bullmq-bench.XXXXXX")
  port=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  trap '"$here/valkey.sh" stop "$dir"; rm -rf "$dir"' EXIT
  "$here/valkey.sh" start "$dir" "$port"
  valkey="redis://127.0.0.1:$port"
  restart_cmd="'$here/valkey.sh' restart '$dir' $port"
  echo "run.sh: throwaway Valkey on 127.0.0.1:$port ($dir)" >&2
fi

common=(--valkey "$valkey" --tasks "$tasks" --payload "$payload" --workers "$workers" --concurrency "$concurrency")
for scenario in "${scenarios[@]}"; do
  case "$scenario" in
    throughput) node "$here/bench.js" "${common[@]}" --batch 1 --queue bench-throughput "${extra[@]}" ;;
    bulk) node "$here/bench.js" "${common[@]}" --batch "$bulk_batch" --queue bench-bulk "${extra[@]}" ;;
    kill-worker) node "$here/bench.js" "${common[@]}" --batch 1 --queue bench-kill --fault kill-worker "${extra[@]}" ;;
    valkey-restart)
      if [ -z "$restart_cmd" ]; then
        echo "run.sh: skipping valkey-restart: --valkey was given without --restart-cmd" >&2
        continue
      fi
      node "$here/bench.js" "${common[@]}" --batch 1 --queue bench-restart --fault valkey-restart \
        --restart-cmd "$restart_cmd" "${extra[@]}" ;;
  esac
done
