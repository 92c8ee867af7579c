#!/usr/bin/env bash
# Instructions per request in ringway's own code (user space), counted by callgrind: a figure
# that moves by under 1% between runs, where CPU time on this machine moves by 10% between
# rounds, so a change to the request path of a few hundred instructions shows. It says nothing
# of the kernel's share (three quarters of a 100 B request's CPU): `ab.sh` measures the whole.
#
# Each binary runs as a one-worker reverse proxy (quick mode, --upstream) under
# `valgrind --tool=callgrind`, pinned to CPU 0; nginx serves /100b on CPU 1, where wrk sends
# SECS seconds of requests from CONNS connections. The instructions of a run with no request
# (start and stop) are counted apart and taken off.
#
#   loadtest/instructions.sh BIN [BIN ...]
#   MODES="ka close" SECS=6 CONNS=16 TOP=25 loadtest/instructions.sh old new
#       (MODES: ka = keep-alive, close = a connection per request; TOP: also print the
#        functions with the most instructions of their own, per request)
#   URL=/chunked/262144/4096 MODES=ka loadtest/instructions.sh old new
#       (URL: /100b from nginx by default; /chunked/N/C and /close/N from `ringway-loadtest
#        origin`, which needs its release build: LOADTEST=path, by default
#        target/release/ringway-loadtest)
#
# Needs valgrind, nginx, wrk and taskset. Loopback only; every process it starts is stopped by
# PID when it ends. The callgrind files stay in OUT (default: a temporary directory, removed).
set -euo pipefail
[ $# -ge 1 ] || { sed -n "2,18p" "$0"; exit 2; }
MODES=${MODES:-ka close} SECS=${SECS:-6} CONNS=${CONNS:-16} TOP=${TOP:-0} URL=${URL:-/100b}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADTEST=${LOADTEST:-$ROOT/target/release/ringway-loadtest}
DIR=$(mktemp -d /tmp/ringway-instr.XXXXXX)
OUT=${OUT:-}
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"
chmod 755 "$DIR" # nginx workers run as nobody
mkdir -p "$DIR/www"
head -c 100 /dev/zero | tr '\0' x >"$DIR/www/100b"
ORIGIN=$(free_port) PROXY=$(free_port)
sed -e "s#{{DIR}}#$DIR#g; s#{{LISTEN}}#127.0.0.1:$ORIGIN#; s#{{WORKERS}}#1#" \
  "$ROOT/loadtest/nginx-origin.conf" >"$DIR/origin.conf"
taskset -c 1 nginx -c "$DIR/origin.conf" -p "$DIR"
wait_port "$ORIGIN"
case $URL in
/chunked/* | /close/*)
  ORIGIN=$(free_port)
  taskset -c 1 "$LOADTEST" origin --listen "127.0.0.1:$ORIGIN" &
  PIDS+=($!)
  wait_port "$ORIGIN"
  ;;
esac

# BIN NAME LOAD [wrk args...] -> total instructions and requests (LOAD 0: none sent)
count() {
  local bin=$1 name=$2 load=$3 pid n=0
  shift 3
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$DIR/$name.cg" "$bin" \
    --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$ORIGIN" --workers 1 --log-level warn \
    >"$DIR/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PROXY" 400 # valgrind starts slowly
  if [ "$load" = 1 ]; then
    n=$(taskset -c 1 wrk "$@" -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$PROXY$URL" |
      awk '/requests in/{print $1}')
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # The next run binds the same port: wait until this one has let it go.
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PROXY") 2>/dev/null || break; sleep 0.1; done
  echo "$(awk '/^(summary|totals):/{print $2; exit}' "$DIR/$name.cg") $n"
}

echo "$URL, $CONNS connections"
echo
echo "| binary | mode | instructions per request | requests counted |"
echo "|---|---|---|---|"
i=0
for bin in "$@"; do
  i=$((i + 1))
  read -r base _ <<<"$(count "$bin" "b$i-idle" 0)"
  for mode in $MODES; do
    args=(--latency)
    [ "$mode" = close ] && args+=(-H "Connection: close")
    read -r total n <<<"$(count "$bin" "b$i-$mode" 1 "${args[@]}")"
    printf '| %s | %s | %d | %d |\n' "$bin" "$mode" $(((total - base) / n)) "$n"
    if [ "$TOP" -gt 0 ]; then
      callgrind_annotate --inclusive=no "$DIR/b$i-$mode.cg" 2>/dev/null |
        awk -v n="$n" -v top="$TOP" '/file:function/ { f = 1; getline; next }
          f && /\(/ && k < top { c = $1; gsub(",", "", c); sub(/^[^)]*\) +/, "")
          printf "    %6d  %s\n", c / n, $0; k++ }' |
        sed -E -e 's#/rustc/[0-9a-f]+/library/##; s#[^ ]*/registry/src/[^/]+/##; s# \[[^]]*\]$##' -e "s#$ROOT/##"
    fi
  done
done
if [ -n "$OUT" ]; then
  mkdir -p "$OUT" && cp "$DIR"/*.cg "$OUT"/
fi
