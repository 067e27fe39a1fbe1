#!/usr/bin/env bash
# Publish->deliver latency at 1,000 events/s with tracing off, at 1 % sampling and at 100 %
# (issue 15). Each mode restarts the stack (perf profile, no enricher, no demo) with the same
# broker build, then runs the durable fanout scenario. Run with nothing else on the machine.
#   loadtests/scripts/trace-overhead.sh [out-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentwire/target}"
out="${1:-/tmp/trace-overhead}"
mkdir -p "$out"
cargo build -q --profile perf -p agentwire-loadtests
load="$CARGO_TARGET_DIR/perf/agentwire-loadtests"

run_mode() {
  local name="$1"; shift
  rm -rf .stack
  env "$@" cargo xtask up --release --no-demo --no-enricher $EXTRA > "$out/$name-stack.log" 2>&1 &
  local stack=$!
  # Ready when the gateway answers /readyz.
  for _ in $(seq 1 900); do
    curl -sf http://127.0.0.1:8080/readyz > /dev/null 2>&1 && break
    kill -0 "$stack" 2> /dev/null || { echo "the stack exited: $out/$name-stack.log"; exit 1; }
    sleep 1
  done
  "$load" fanout --rate 1000 --subscribers 200 --sessions 100 --seconds 30 --no-floors \
    --out "$out/$name.json" | tee "$out/$name.txt"
  kill -INT "$stack"
  wait "$stack" || true
}

EXTRA=--no-traces run_mode off
EXTRA= run_mode sampled-1pct OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
EXTRA= run_mode sampled-100pct OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0
grep -H "p50\|p99" "$out"/*.txt || true
