#!/usr/bin/env bash
# A/B of two ringway binaries (or a binary and nginx) on the same origin, for a data-path change:
# each binary in turn as a one-worker reverse proxy pinned to CPU 0 (quick mode, --upstream),
# wrk and the origin on CPU 1, ROUNDS alternations per path; prints CPU µs per request (the
# proxy's utime+stime from /proc over the run) and req/s. The origin is nginx serving files
# (/100b, /8k, /24k, /40k, /48k, /64k, /1m) and `ringway-loadtest origin` for the other framings
# (/chunked/N/C, /close/N). `floor` as a binary is the copy floor (`ringway-loadtest floor
# --copy`; FLOOR=splice for the splice floor). SPLIT=1 adds the user and system parts of each
# CPU figure (µs per request), which tell the proxy's own code from the kernel's work.
#
#   loadtest/ab.sh OLD_BIN NEW_BIN [PATH ...]      (default paths: /100b /8k /64k /1m)
#   ROUNDS=3 SECS=3 CONNS=16 loadtest/ab.sh old new /64k /chunked/1048576/65536
#   loadtest/ab.sh nginx target/release/ringway /64k   (nginx tuned as in nginx-proxy.conf)
#   BODY=65536 loadtest/ab.sh old new /len/100          (uploads: POST with a BODY-byte body)
#   CLOSE=1 loadtest/ab.sh old new /100b                (a connection per request)
#   THREADS=8 ...                                         (wrk threads, all on CPU 1; default 1)
#   SPLIT=1 loadtest/ab.sh floor target/release/ringway /100b   (user/system against the floor)
#   OPS=1 loadtest/ab.sh old new /100b   (io_uring submissions and poll arms per request on
#                                          the proxy, `perf stat` on its tracepoints; needs perf)
#   EXTRA="--cache 64m" loadtest/ab.sh old new /cached/100b     (cache hits: /cached/ is fresh
#                                                                 for an hour at the origin)
#   GZIP=1 EXTRA=--compress loadtest/ab.sh nginx target/release/ringway /json64k
#       (compression: wrk sends Accept-Encoding: $ENC (default gzip); nginx runs `gzip on` at
#        gzip_comp_level ${GZIP_LEVEL:-1}; /json64k and /json1m are JSON documents; the bytes
#        each proxy sends per response are printed first)
#
# Needs nginx, wrk, taskset and a release build of ringway-loadtest. Loopback only; every
# process it starts is stopped by PID when it ends.
set -euo pipefail
[ $# -ge 2 ] || { sed -n "2,28p" "$0"; exit 2; }
A=$1 B=$2
shift 2
PATHS=("$@")
[ ${#PATHS[@]} -gt 0 ] || PATHS=(/100b /8k /64k /1m)
ROUNDS=${ROUNDS:-3} SECS=${SECS:-3} CONNS=${CONNS:-16} BODY=${BODY:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADTEST=${LOADTEST:-$ROOT/target/release/ringway-loadtest}
DIR=$(mktemp -d /tmp/ringway-ab.XXXXXX)
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"

chmod 755 "$DIR" # nginx workers run as nobody
mkdir -p "$DIR/www"
for f in 100b:100 8k:8192 24k:24576 40k:40960 48k:49152 64k:65536 1m:1048576; do
  head -c "${f#*:}" /dev/zero | tr '\0' x >"$DIR/www/${f%%:*}"
done
python3 - "$DIR/www" <<'PY'
import json, sys
rows = [{"id": i, "name": "item %d" % (i * 7919 % 1000), "email": "user%d@example.org" % i,
         "tags": ["alpha", "beta", "gamma"][: 1 + i % 3], "score": (i * 37) % 101 / 10,
         "active": i % 2 == 0} for i in range(20000)]
text = json.dumps(rows, separators=(",", ":")).encode()
for name, n in (("json64k", 65536), ("json1m", 1 << 20)):
    open(sys.argv[1] + "/" + name, "wb").write(text[:n])
PY
FILES=$(free_port) FRAMING=$(free_port) PROXY=$(free_port)
sed -e "s#{{DIR}}#$DIR#g; s#{{LISTEN}}#127.0.0.1:$FILES#; s#{{WORKERS}}#1#" \
  "$ROOT/loadtest/nginx-origin.conf" >"$DIR/origin.conf"
taskset -c 1 nginx -c "$DIR/origin.conf" -p "$DIR"
taskset -c 1 "$LOADTEST" origin --listen "127.0.0.1:$FRAMING" &
PIDS+=($!)
wait_port "$FILES" && wait_port "$FRAMING"
WRK_ARGS=()
[ "${CLOSE:-0}" = 1 ] && WRK_ARGS+=(-H "Connection: close")
GZIP_CONF=""
if [ "${GZIP:-0}" = 1 ]; then
  WRK_ARGS+=(-H "Accept-Encoding: ${ENC:-gzip}")
  GZIP_CONF="gzip on; gzip_proxied any; gzip_comp_level ${GZIP_LEVEL:-1}; gzip_min_length 256; gzip_types text/plain application/json;"
fi
if [ "$BODY" -gt 0 ]; then
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n' "$BODY" >"$DIR/post.lua"
  WRK_ARGS+=(-s "$DIR/post.lua")
fi

run() { # BIN PATH -> "cpu_us_per_req req/s"
  local bin=$1 path=$2 up=$FILES pid
  case $path in /chunked/* | /close/* | /len/*) up=$FRAMING ;; esac
  if [ "$bin" = nginx ]; then
    cat >"$DIR/proxy.conf" <<EOF
master_process off; daemon off; worker_processes 1; pid $DIR/proxy.pid; error_log $DIR/proxy.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; $GZIP_CONF
  upstream o { server 127.0.0.1:$up; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$PROXY reuseport;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffers 8 16k; proxy_buffer_size 16k; proxy_max_temp_file_size 0;
      client_max_body_size 0; client_body_buffer_size 1m; } } }
EOF
    taskset -c 0 nginx -c "$DIR/proxy.conf" -p "$DIR" &
  elif [ "$bin" = floor ]; then
    taskset -c 0 "$LOADTEST" floor --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$up" \
      "--${FLOOR:-copy}" &
  else
    # shellcheck disable=SC2086 # EXTRA is a list of flags
    taskset -c 0 "$bin" --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$up" --workers 1 \
      --log-level warn ${EXTRA:-} &
  fi
  pid=$!
  PIDS+=($pid)
  wait_port "$PROXY"
  if [ "${GZIP:-0}" = 1 ] && [ -z "${SIZES_SHOWN:-}" ]; then
    printf '%s %s: %s bytes per response\n' "$bin" "$path" \
      "$(curl -s -H "Accept-Encoding: ${ENC:-gzip}" "http://127.0.0.1:$PROXY$path" | wc -c)" >&2
  fi
  taskset -c 1 wrk "${WRK_ARGS[@]}" -t"${THREADS:-1}" -c"$CONNS" -d1s "http://127.0.0.1:$PROXY$path" >/dev/null
  local ua sa ub sb out reqs perf="" subm=0 arms=0
  if [ "${OPS:-0}" = 1 ]; then
    perf stat -x, -e io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm -p "$pid" \
      -o "$DIR/ops" &
    perf=$!
  fi
  read -r ua sa < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(taskset -c 1 wrk "${WRK_ARGS[@]}" -t"${THREADS:-1}" -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$PROXY$path")
  read -r ub sb < <(awk '{print $14, $15}' "/proc/$pid/stat")
  if [ -n "$perf" ]; then
    kill -INT "$perf"
    wait "$perf" 2>/dev/null || true
    subm=$(awk -F, '/io_uring_submit_req/{print $1}' "$DIR/ops")
    arms=$(awk -F, '/io_uring_poll_arm/{print $1}' "$DIR/ops")
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  # Clock ticks (1/100 s) to µs per request: total, req/s, user, system; then ring
  # submissions and poll arms per request (OPS=1; perf counts a little past wrk's end).
  awk -v u=$((ub - ua)) -v k=$((sb - sa)) -v r="$reqs" -v s="$SECS" -v o="${subm:-0}" -v a="${arms:-0}" \
    'BEGIN { printf "%.1f %.0f %.2f %.2f %.2f %.2f", (u + k) * 1e4 / r, r / s, u * 1e4 / r, k * 1e4 / r, o / r, a / r }'
  # The next binary binds the same port: wait until this one has let it go.
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PROXY") 2>/dev/null || break; sleep 0.05; done
}

if [ "${OPS:-0}" = 1 ]; then
  echo "| path | round | A CPU µs/req | B CPU µs/req | B/A | A req/s | B req/s | A ring submissions/req | A poll arms/req | B ring submissions/req | B poll arms/req |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
elif [ "${SPLIT:-0}" = 1 ]; then
  echo "| path | round | A CPU µs/req | B CPU µs/req | B/A | A req/s | B req/s | A user | A sys | B user | B sys |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
else
  echo "| path | round | A CPU µs/req | B CPU µs/req | B/A | A req/s | B req/s |"
  echo "|---|---|---|---|---|---|---|"
fi
for path in "${PATHS[@]}"; do
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
      read -r ca ra ua ka oa pa <<<"$(run "$A" "$path")"
      read -r cb rb ub kb ob pb <<<"$(run "$B" "$path")"
    else
      read -r cb rb ub kb ob pb <<<"$(run "$B" "$path")"
      read -r ca ra ua ka oa pa <<<"$(run "$A" "$path")"
    fi
    split=""
    [ "${SPLIT:-0}" = 1 ] && split=" $ua | $ka | $ub | $kb |"
    [ "${OPS:-0}" = 1 ] && split=" $oa | $pa | $ob | $pb |"
    awk -v p="$path" -v r="$r" -v ca="$ca" -v cb="$cb" -v ra="$ra" -v rb="$rb" -v x="$split" \
      'BEGIN { printf "| %s | %d | %s | %s | %.2f | %s | %s |%s\n", p, r, ca, cb, cb / ca, ra, rb, x }'
  done
done
