#!/usr/bin/env bash
# How ringway scales with its worker count on a many-core machine, with nothing but its own
# binaries (no nginx or wrk needed): the origin is a ringway answering a fixed 100-byte response
# (cacheable), the load is one `ringway-loadtest gen` per load CPU (64 keep-alive connections
# each, closed loop), and the proxy under test runs 1, 2, 4, ... workers pinned to CPUs 0..N-1,
# first as a plain reverse proxy, then with its cache on (every request a hit).
# Layout on C CPUs: proxies on the first half, load on the third quarter, origin on the last.
# Prints per step: req/s summed over the generators, the proxy's CPU µs per request (utime +
# stime from /proc), and req/s per worker.
# Usage: BIN=target/release loadtest/scale.sh [SECS]
set -u
BIN=${BIN:-target/release}
SECS=${1:-5}
C=$(nproc)
Q=$(( C / 4 > 0 ? C / 4 : 1 ))
PMAX=$(( C / 2 > 0 ? C / 2 : 1 ))
LOAD_FIRST=$(( C >= 4 ? C / 2 : C - 1 ))
ORIGIN_FIRST=$(( C >= 4 ? C - Q : C - 1 ))
DIR=$(mktemp -d /tmp/ringway-scale-XXXXXX)
TCK=$(getconf CLK_TCK)
# Without taskset the generators float (the proxies pin themselves with --cpus).
command -v taskset >/dev/null 2>&1 || taskset() { shift 2; "$@"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$DIR"; }
trap cleanup EXIT
body=$(head -c 100 /dev/zero | tr '\0' x)
cat > "$DIR/origin.toml" <<EOF
[server]
listen = ["127.0.0.1:19001"]
workers = $(( C - ORIGIN_FIRST ))
cpus = "$ORIGIN_FIRST-$(( C - 1 ))"
[[routes]]
path = "/"
respond = { status = 200, body = "$body", headers = { "Cache-Control" = "max-age=3600" } }
EOF
"$BIN/ringway" --config "$DIR/origin.toml" --log-level warn & pids+=($!)
sleep 1
echo "$C CPUs ($(uname -r)): proxy on 0..N-1, load from CPU $LOAD_FIRST, origin on $ORIGIN_FIRST-$(( C - 1 )); $SECS s per step"
echo
echo "| mode | workers | req/s | proxy CPU µs/req | req/s per worker | errors |"
echo "|---|---|---|---|---|---|"
PORT=19002
for mode in proxy cache; do
  N=1
  while [ "$N" -le "$PMAX" ]; do
    extra=""
    [ "$mode" = cache ] && extra="--cache 256m"
    # shellcheck disable=SC2086
    PORT=$(( PORT + 1 ))
    "$BIN/ringway" --listen 127.0.0.1:$PORT --upstream 127.0.0.1:19001 --workers "$N" \
      --cpus "0-$(( N - 1 ))" --log-level warn $extra & P=$!
    sleep 1
    curl -s -o /dev/null http://127.0.0.1:$PORT/ 2>/dev/null || true
    for cpu in $(seq "$LOAD_FIRST" $(( ORIGIN_FIRST > LOAD_FIRST ? ORIGIN_FIRST - 1 : LOAD_FIRST ))); do
      taskset -c "$cpu" "$BIN/ringway-loadtest" gen --url http://127.0.0.1:$PORT/ -c 64 -d 1 >/dev/null 2>&1 &
    done
    wait_gens() { for j in $(jobs -p); do [ "$j" = "$P" ] || [[ " ${pids[*]} " == *" $j "* ]] || wait "$j"; done; }
    wait_gens
    b=$(awk '{print $14+$15}' "/proc/$P/stat")
    i=0
    for cpu in $(seq "$LOAD_FIRST" $(( ORIGIN_FIRST > LOAD_FIRST ? ORIGIN_FIRST - 1 : LOAD_FIRST ))); do
      taskset -c "$cpu" "$BIN/ringway-loadtest" gen --url http://127.0.0.1:$PORT/ -c 64 -d "$SECS" > "$DIR/g$i" 2>&1 &
      i=$(( i + 1 ))
    done
    wait_gens
    a=$(awk '{print $14+$15}' "/proc/$P/stat")
    reqs=$(cat "$DIR"/g* | awk '/^requests/ {s+=$2} END {print s+0}')
    errs=$(cat "$DIR"/g* | awk '/^errors/ {s+=$2} END {print s+0}')
    rm -f "$DIR"/g*
    kill "$P"; wait "$P" 2>/dev/null
    rps=$(( reqs / SECS ))
    cpu=$(awk -v a="$a" -v b="$b" -v t="$TCK" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", (a - b) * 1e6 / t / n; else print "-" }')
    echo "| $mode | $N | $rps | $cpu | $(( rps / N )) | $errs |"
    N=$(( N * 2 ))
  done
done
