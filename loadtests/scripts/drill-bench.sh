#!/usr/bin/env bash
# Replay drill figures (issue 16): `agentwire drill verify` throughput on RECORDS records next to
# a bare librdkafka read of the same records on the same broker, verify's peak RSS, and the time
# `drill rebuild` takes to rebuild SESSIONS sessions' windows after Valkey lost them all. The
# stack runs in the perf profile (no enricher, no demo, no traces) on a fresh .stack; the records
# go straight into agent.events and the relay carries them into Valkey first. Run with nothing
# else on the machine.
#   loadtests/scripts/drill-bench.sh [records] [sessions] [out-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentwire/target}"
records="${1:-1000000}"
sessions="${2:-100000}"
out="${3:-/tmp/drill-bench}"
mkdir -p "$out"
cargo build -q --profile perf -p agentwire-loadtests -p agentwire
load="$CARGO_TARGET_DIR/perf/agentwire-loadtests"
aw="$CARGO_TARGET_DIR/perf/agentwire"

rm -rf .stack
cargo xtask up --release --no-demo --no-enricher --no-traces > "$out/stack.log" 2>&1 &
stack=$!
trap 'kill -INT $stack 2> /dev/null; wait $stack || true' EXIT
for _ in $(seq 1 900); do
  curl -sf http://127.0.0.1:8080/readyz > /dev/null 2>&1 && break
  kill -0 "$stack" 2> /dev/null || { echo "the stack exited: $out/stack.log"; exit 1; }
  sleep 1
done

"$load" drill-log --fill "$records" --sessions "$sessions" --no-read | tee "$out/fill.txt"
# The relay has carried everything once its group's lag is 0 on every partition.
started=$(date +%s)
until curl -sf http://127.0.0.1:9464/metrics | awk '/^agentwire_kafka_consumer_lag\{group="agentwire-relay"/ { seen++; lag += $2 } END { exit !(seen > 0 && lag == 0) }'; do
  sleep 2
done
echo "relay caught up $(( $(date +%s) - started )) s after the fill" | tee "$out/relay.txt"

# The broker's read rate varies from run to run: the bare read runs before and after verify.
"$load" drill-log | tee "$out/raw-read.txt"
/usr/bin/time -v "$aw" drill verify --report "$out/verify" > "$out/verify.txt" 2> "$out/verify.time" || true
"$load" drill-log | tee -a "$out/raw-read.txt"
/usr/bin/time -v "$aw" drill verify --with-valkey --report "$out/verify-valkey" > "$out/verify-valkey.txt" 2> "$out/verify-valkey.time" || true
# Valkey loses everything (windows, producer states, marks): FLUSHALL over RESP.
exec 3<> /dev/tcp/127.0.0.1/6379
printf '*1\r\n$8\r\nFLUSHALL\r\n' >&3
read -r -t 30 answer <&3
exec 3>&-
echo "FLUSHALL: $answer"
/usr/bin/time -v "$aw" drill rebuild --report "$out/rebuild" > "$out/rebuild.txt" 2> "$out/rebuild.time" || true
"$aw" drill compare --report "$out/compare-after" > "$out/compare-after.txt" 2>&1 && echo "compare after the rebuild: clean" | tee "$out/compare-after.verdict"

for f in verify verify-valkey rebuild; do
  echo "== $f"; head -3 "$out/$f.txt"
  grep -E "Elapsed|Maximum resident" "$out/$f.time"
done
