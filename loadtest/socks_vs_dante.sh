#!/usr/bin/env bash
# ringway's SOCKS5 server against Dante (danted), alternating, on the same origin: each proxy
# alone on CPU 0 (ringway with one worker; Dante's whole process tree), the client
# (`ringway-loadtest socks`: a new tunnel per transfer) and the origin (nginx serving files) on
# CPU 1. CPU per tunnel is CPU 0's busy time over the run (user, system and the network's
# softirq work that lands there, the same for both) divided by the tunnels done.
#
#   loadtest/socks_vs_dante.sh [PATH ...]        (default: /1m /100b)
#   ROUNDS=3 SECS=5 CONNS=8 loadtest/socks_vs_dante.sh /1m
#
# Needs danted (apt-get install dante-server), nginx, taskset and release builds of ringway
# and ringway-loadtest. Loopback only; every process it starts is stopped by PID.
set -euo pipefail
PATHS=("$@")
[ ${#PATHS[@]} -gt 0 ] || PATHS=(/1m /100b)
ROUNDS=${ROUNDS:-3} SECS=${SECS:-5} CONNS=${CONNS:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGWAY=${RINGWAY:-$ROOT/target/release/ringway}
LOADTEST=${LOADTEST:-$ROOT/target/release/ringway-loadtest}
DIR=$(mktemp -d /tmp/ringway-socks.XXXXXX)
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"
busy0() { awk '$1 == "cpu0" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

chmod 755 "$DIR"
mkdir -p "$DIR/www"
for f in 100b:100 64k:65536 1m:1048576; do
  head -c "${f#*:}" /dev/zero | tr '\0' x >"$DIR/www/${f%%:*}"
done
ORIGIN=$(free_port) PROXY=$(free_port)
sed -e "s#{{DIR}}#$DIR#g; s#{{LISTEN}}#127.0.0.1:$ORIGIN#; s#{{WORKERS}}#1#" \
  "$ROOT/loadtest/nginx-origin.conf" >"$DIR/origin.conf"
taskset -c 1 nginx -c "$DIR/origin.conf" -p "$DIR"
wait_port "$ORIGIN"
sed -e "s#{{PORT}}#$PROXY#" "$ROOT/loadtest/danted.conf" >"$DIR/danted.conf"

run() { # dante|ringway PATH -> "cpu_us_per_tunnel tunnels_per_s"
  local who=$1 path=$2 pid
  if [ "$who" = dante ]; then
    taskset -c 0 danted -f "$DIR/danted.conf" -p "$DIR/danted.pid" 2>"$DIR/danted.err" &
  else
    taskset -c 0 "$RINGWAY" --socks5 "127.0.0.1:$PROXY" --workers 1 --log-level warn &
  fi
  pid=$!
  PIDS+=($pid)
  wait_port "$PROXY"
  taskset -c 1 "$LOADTEST" socks --proxy "127.0.0.1:$PROXY" --target "127.0.0.1:$ORIGIN" \
    --path "$path" -c "$CONNS" -d 1 >/dev/null
  local before after out
  before=$(busy0)
  out=$(taskset -c 1 "$LOADTEST" socks --proxy "127.0.0.1:$PROXY" --target "127.0.0.1:$ORIGIN" \
    --path "$path" -c "$CONNS" -d "$SECS")
  after=$(busy0)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # Dante's children leave with their parent; wait for the port to be free.
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PROXY") 2>/dev/null || break; sleep 0.05; done
  awk -v b="$before" -v a="$after" -v s="$SECS" '
    { n = $2; e = $4 }
    END { printf "%.1f %.0f %d", (a - b) * 1e4 / n, n / s, e }' <<<"$out"
}

echo "| path | round | Dante CPU µs/tunnel | ringway CPU µs/tunnel | ringway/Dante | Dante tunnels/s | ringway tunnels/s | errors D/r |"
echo "|---|---|---|---|---|---|---|---|"
for path in "${PATHS[@]}"; do
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
      read -r cd td ed <<<"$(run dante "$path")"
      read -r cr tr er <<<"$(run ringway "$path")"
    else
      read -r cr tr er <<<"$(run ringway "$path")"
      read -r cd td ed <<<"$(run dante "$path")"
    fi
    awk -v p="$path" -v r="$r" -v cd="$cd" -v cr="$cr" -v td="$td" -v tr="$tr" -v ed="$ed" -v er="$er" \
      'BEGIN { printf "| %s | %d | %s | %s | %.2f | %s | %s | %s/%s |\n", p, r, cd, cr, cr / cd, td, tr, ed, er }'
  done
done
