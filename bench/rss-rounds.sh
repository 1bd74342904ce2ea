#!/usr/bin/env bash
# Resident memory of one meterflow process over rounds of simulator traffic: does it
# grow without bound? Starts the release meterflow on free loopback ports with a
# temporary data directory, runs ROUNDS+1 rounds of `meterflow-sim` (METERS meters ×
# MSGS messages × 4 readings each, closed loop) and prints RSS after every round.
# STEP=0 reuses the same meters every round (only acks and uplinks accumulate);
# STEP=METERS brings new meters each round (connections accumulate too).
#
#   cargo build --release --bin meterflow --bin meterflow-sim
#   STEP=0 ROUNDS=9 bench/rss-rounds.sh
#   MF=/path/to/other/meterflow bench/rss-rounds.sh   # compare two builds
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
MF=${MF:-$BIN/meterflow}
METERS=${METERS:-1000} MSGS=${MSGS:-150} ROUNDS=${ROUNDS:-3} STEP=${STEP:-$METERS}
MQTT_PORT=${MQTT_PORT:-18830} HTTP_PORT=${HTTP_PORT:-18080}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$MF" run --mqtt "127.0.0.1:$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" --data "$DIR/data" \
    >"$DIR/log" 2>&1 &
PID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.2; done
rss() { awk '/VmRSS/{print int($2/1024)}' "/proc/$PID/status"; }
echo "meterflow $MF: idle rss $(rss) MiB"
for round in $(seq 0 "$ROUNDS"); do
    report=$("$BIN/meterflow-sim" --mqtt "127.0.0.1:$MQTT_PORT" --meters "$METERS" \
        --first-meter $((round * STEP)) --messages-per-meter "$MSGS" \
        --readings-per-message 4 --json 2>/dev/null)
    summary=$(python3 -c 'import json, sys
r = json.load(sys.stdin)
print("acked %d  %.0f msgs/s  ack p99 %.0f ms" % (r["acked"], r["msgs_per_s"], r["ack_latency_ms"]["p99"]))' <<<"$report")
    echo "round $round: $summary  rss $(rss) MiB"
done
