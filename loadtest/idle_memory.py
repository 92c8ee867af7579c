#!/usr/bin/env python3
"""Memory per idle keep-alive connection, and RSS after repeated rounds, for ringway and nginx.

Usage: python3 loadtest/idle_memory.py [--conns N] [--rounds R] [--park-wait S] [--burst]
                                        [--ringway PATH ...]

For each proxy (one worker, pinned to CPU 0): a loopback origin answers `ok`; N clients each
send one proxied GET on a keep-alive connection, read the answer and stay connected. Memory
per idle connection is the proxy's RSS with the N connections open minus its RSS before, over
N: once just after the last answer, and again after S seconds more (ringway parks connections
quiet for `timeouts.park`, 1 s by default). With --burst every held connection then sends one
more request before any answer is read, and the answers are counted. Then R rounds of N
connections are opened, used once and closed, and the RSS after each round (once the proxy has
gone idle) shows whether memory comes back. Beyond 20,000 connections the clients bind to
127.0.0.2, 127.0.0.3 ... (the ephemeral ports of one address run out), and the open-files
limit is raised (as root). Loopback only; every loop is bounded.
"""

import argparse
import atexit
import os
import resource
import shutil
import ssl
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # One write: a head and body in two small writes meet Nagle and delayed ACK (40 ms).
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def log_message(self, *args):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pids, field="VmRSS:"):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def one_request(s):
    s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("closed")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise OSError(data[:40])


# Set by --tls: clients speak TLS (no verification: a throwaway self-signed certificate).
TLS = None


def open_clients(port, n):
    socks = []
    for i in range(n):
        s = socket.socket()
        s.settimeout(10)
        # The port is chosen at connect (IP_BIND_ADDRESS_NO_PORT), unique per 4-tuple.
        s.setsockopt(socket.IPPROTO_IP, 24, 1)
        s.bind((f"127.0.0.{1 + i // 20000}", 0))
        s.connect(("127.0.0.1", port))
        if TLS:
            s = TLS.wrap_socket(s, server_hostname="localhost")
        one_request(s)
        socks.append(s)
    return socks


def burst(socks):
    """One more request on every connection, all sent before any answer is read."""
    start = time.time()
    for s in socks:
        s.sendall(b"GET /burst HTTP/1.1\r\nHost: t\r\n\r\n")
    ok = 0
    for s in socks:
        data = b""
        try:
            while not data.endswith(b"ok"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        ok += data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")
    return ok, time.time() - start


def settle(pids, limit=5.0):
    """RSS once it stops moving (the proxy has finished with closed connections)."""
    last, end = rss_kib(pids), time.time() + limit
    while time.time() < end:
        time.sleep(0.3)
        now = rss_kib(pids)
        if now == last:
            return now
        last = now
    return last


def measure(name, start, conns, rounds, park_wait, with_burst):
    port = free_port()
    proc, pids_of = start(port)
    try:
        wait_port(port)
        warm = open_clients(port, 16)
        for s in warm:
            s.close()
        pids = pids_of()
        base = settle(pids)
        socks = open_clients(port, conns)
        busy = settle(pids)
        time.sleep(park_wait)
        held = settle(pids)
        per_busy = (busy - base) * 1024 / conns
        per_conn = (held - base) * 1024 / conns
        burst_line = ""
        if with_burst:
            ok, secs = burst(socks)
            burst_line = (f"; burst: {ok}/{conns} answered in {secs:.1f} s, "
                          f"RSS then {rss_kib(pids)} KiB")
        for s in socks:
            s.close()
        after = [settle(pids)]
        for _ in range(rounds):
            socks = open_clients(port, conns)
            for s in socks:
                s.close()
            after.append(settle(pids))
        print(
            f"{name}: RSS idle {base} KiB, with {conns} idle keep-alive connections "
            f"{busy} KiB = {per_busy:.0f} B/connection just after their answers, "
            f"{held} KiB = {per_conn:.0f} B/connection {park_wait} s later{burst_line}; "
            f"RSS after each round of {conns}: "
            + ", ".join(f"{a} KiB" for a in after)
            + f"; peak RSS {rss_kib(pids, 'VmHWM:')} KiB"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ringway", nargs="+", default=["target/release/ringway"])
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--park-wait", type=float, default=2.0)
    ap.add_argument("--burst", action="store_true")
    ap.add_argument("--tls", action="store_true", help="TLS listeners (TLS 1.3, ECDSA P-256)")
    a = ap.parse_args()

    # Each connection is a descriptor here and one in the proxy (which inherits the limit).
    need = a.conns + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        except (ValueError, OSError):
            sys.exit(f"{a.conns} connections need {need} open files; the hard limit is {hard} "
                     "and cannot be raised here (raising it needs CAP_SYS_RESOURCE)")

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    up = f"127.0.0.1:{origin.server_address[1]}"
    tmp = tempfile.mkdtemp(prefix="ringway-idle-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    if a.tls:
        global TLS
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        TLS.check_hostname = False
        TLS.verify_mode = ssl.CERT_NONE

    # The burst is answered by the proxies themselves (`/burst`): 100k requests at once through
    # to this Python origin would measure the origin.
    for path in a.ringway:
        def start(port, path=path):
            conf = os.path.join(tmp, "ringway.toml")
            with open(conf, "w") as f:
                f.write(
                    (f'[server]\nlisten = [{{ addr = "127.0.0.1:{port}", tls = true }}]\n'
                     f'workers = 1\npin = false\n[tls]\n'
                     f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
                     if a.tls else
                     f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\npin = false\n')
                    + f'[upstreams.o]\nservers = ["{up}"]\n'
                    f'[[routes]]\npath = "/burst"\nrespond = {{ status = 200, body = "ok" }}\n'
                    f'[[routes]]\npath = "/"\nupstream = "o"\n'
                )
            p = subprocess.Popen(
                ["taskset", "-c", "0", path, "--config", conf, "--log-level", "error"],
                stderr=subprocess.DEVNULL,
            )
            return p, lambda: [p.pid]
        measure(f"ringway {path}", start, a.conns, a.rounds, a.park_wait, a.burst)

    if not a.no_nginx:
        def start(port):
            conf = os.path.join(tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    f"worker_processes 1; worker_rlimit_nofile {a.conns * 3 + 1024};\n"
                    f"pid {tmp}/nginx.pid; error_log {tmp}/err warn;\n"
                    f"daemon off; events {{ worker_connections {a.conns * 3}; }}\n"
                    f"http {{ access_log off; keepalive_timeout 75s; keepalive_requests 1000000;\n"
                    f"  upstream o {{ server {up}; keepalive 1024; }}\n"
                    f"  server {{ listen 127.0.0.1:{port}{' ssl' if a.tls else ''};\n"
                    + (f"    ssl_certificate {cert}; ssl_certificate_key {key};\n"
                       f"    ssl_session_cache shared:S:10m;\n" if a.tls else "")
                    + f"    location /burst {{ return 200 ok; }}\n"
                    f"    location / {{ proxy_pass http://o;\n"
                    f"    proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n"
                )
            p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf, "-p", tmp],
                                 stderr=subprocess.DEVNULL)
            return p, lambda: [p.pid] + children(p.pid)
        measure("nginx", start, a.conns, a.rounds, a.park_wait, a.burst)


if __name__ == "__main__":
    main()
