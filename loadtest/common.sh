# Helpers the loadtest scripts share (sourced, after they set DIR to their temporary
# directory): the PIDs they start, stopped on exit with the nginx whose pid file is in DIR and
# DIR removed; a free loopback port; a wait until a port accepts.
# shellcheck shell=bash
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$DIR/origin-nginx.pid" ] && kill "$(cat "$DIR/origin-nginx.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT [TRIES]: TRIES of 50 ms (default 100).
wait_port() {
  for _ in $(seq "${2:-100}"); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
