#!/usr/bin/env bash
# ringway's forward proxy against Squid, and against ringway's own reverse proxy, for the same
# request: GET of a 128-byte file, absolute form through the forward proxies (a one-line wrk Lua
# script sets the full URL), origin form through the reverse proxy. 16 connections, keep-alive,
# ROUNDS rounds of SECS seconds, proxies on CPU 0, nginx origin and wrk on CPU 1. Prints req/s
# and CPU time per request of each proxy process (utime + stime from /proc); then CPU per MiB
# of 1 MiB downloads through CONNECT tunnels (TUNNELS of them with curl -p), against Squid.
# Needs: a release build (cargo build --release), nginx, squid, wrk, taskset, bc.
# Usage: loadtest/forward_vs_squid.sh [ROUNDS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
BIN=${RINGWAY:-target/release/ringway}
DIR=$(mktemp -d /tmp/ringway-squid-XXXXXX)
ORIGIN=127.0.0.1:18190 FWD=18191 SQUID=18192 REV=18193
mkdir -p "$DIR/www"
chmod 755 "$DIR"   # nginx workers (and squid) run as another user
head -c 128 /dev/zero | tr '\0' x > "$DIR/www/128b"
head -c 1048576 /dev/zero | tr '\0' y > "$DIR/www/1m"
sed -e 's/{{WORKERS}}/1/' -e "s#{{DIR}}#$DIR#g" -e "s/{{LISTEN}}/$ORIGIN/" loadtest/nginx-origin.conf > "$DIR/origin.conf"
sed -e "s#{{DIR}}#$DIR#g" -e "s/{{LISTEN}}/127.0.0.1:$SQUID/" loadtest/squid.conf > "$DIR/squid.conf"
echo "wrk.path = \"http://$ORIGIN/128b\"" > "$DIR/path.lua"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$DIR/origin-nginx.pid" ] && kill "$(cat "$DIR/origin-nginx.pid")" 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
taskset -c 1 nginx -c "$DIR/origin.conf" -p "$DIR"
taskset -c 0 "$BIN" --listen 127.0.0.1:$FWD --forward --connect-ports "${ORIGIN##*:}" --workers 1 --log-level warn & pids+=($!); FP=$!
taskset -c 0 squid -N -f "$DIR/squid.conf" 2>/dev/null & pids+=($!); SP=$!
taskset -c 0 "$BIN" --listen 127.0.0.1:$REV --upstream $ORIGIN --workers 1 --log-level warn & pids+=($!); RP=$!
sleep 3
TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
measure() { # name pid port [lua]
  local b a out n rps
  b=$(ticks "$2")
  if [ -n "${4:-}" ]; then out=$(taskset -c 1 wrk -t1 -c16 -d"$SECS" -s "$4" "http://127.0.0.1:$3/" 2>&1)
  else out=$(taskset -c 1 wrk -t1 -c16 -d"$SECS" "http://127.0.0.1:$3/128b" 2>&1); fi
  a=$(ticks "$2")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  printf '%-16s req/s %9s  CPU µs/req %6.1f  non-2xx %s\n' "$1" "$rps" \
    "$(echo "($a-$b)*1000000/$TCK/$n" | bc -l)" "$(echo "$out" | awk '/Non-2xx/ {print $5}' | grep . || echo 0)"
}
# 1 MiB through a CONNECT tunnel: TUNNELS sequential downloads with curl -p (a new tunnel each).
TUNNELS=${TUNNELS:-100}
tunnel() { # name pid port
  local b a t0 t1
  b=$(ticks "$2"); t0=$(date +%s.%N)
  for _ in $(seq 1 "$TUNNELS"); do
    taskset -c 1 curl -s -o /dev/null --noproxy '' -p -x "http://127.0.0.1:$3" "http://$ORIGIN/1m" || echo "curl failed"
  done
  a=$(ticks "$2"); t1=$(date +%s.%N)
  printf '%-16s CONNECT 1 MiB x %s: CPU µs/MiB %7.1f  (%.1f s)\n' "$1" "$TUNNELS" \
    "$(echo "($a-$b)*1000000/$TCK/$TUNNELS" | bc -l)" "$(echo "$t1-$t0" | bc -l)"
}
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  measure ringway-forward "$FP" $FWD "$DIR/path.lua"
  measure squid "$SP" $SQUID "$DIR/path.lua"
  measure ringway-reverse "$RP" $REV
  tunnel ringway-forward "$FP" $FWD
  tunnel squid "$SP" $SQUID
done
