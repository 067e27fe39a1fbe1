#!/usr/bin/env bash
# Empties a Valkey (FLUSHALL) without restarting it: every key goes, every client's connection
# stays. The `tasks` scenario's valkey-restart row runs it for the BullMQ peer (agentwire's side
# sends the same command from the load tool).
#   valkey-flushall.sh HOST PORT
# Uses valkey-cli or redis-cli when found, else bash's /dev/tcp.
set -euo pipefail
host=${1:?usage: valkey-flushall.sh HOST PORT}
port=${2:?usage: valkey-flushall.sh HOST PORT}
for cli in valkey-cli redis-cli; do
  if command -v "$cli" >/dev/null; then
    answer=$("$cli" -h "$host" -p "$port" FLUSHALL)
    [[ $answer == OK* ]] || { echo "FLUSHALL answered: $answer" >&2; exit 1; }
    exit 0
  fi
done
exec 3<>"/dev/tcp/$host/$port"
printf '*1\r\n$8\r\nFLUSHALL\r\n' >&3
IFS= read -r -t 10 line <&3 || { echo "no answer to FLUSHALL from $host:$port" >&2; exit 1; }
exec 3<&-
[[ $line == +OK* ]] || { echo "FLUSHALL answered: $line" >&2; exit 1; }
