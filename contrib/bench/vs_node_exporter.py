#!/usr/bin/env python3
"""Run pulse-agent and node_exporter side by side on this machine and print a
table: peak RSS after 100 report cycles and 1,000 scrapes, CPU per scrape,
idle CPU per minute at a 30 s interval, and time from start to the first
answer of the health endpoint.

    contrib/bench/vs_node_exporter.py            # about 7 minutes

pulse-agent is measured as two builds when the machine can make both: the
static musl binary (`cargo build --release --target x86_64-unknown-linux-musl`,
what devices run) and the default glibc one (`cargo build --release`).

pulse-agent reports over HTTPS (a self-signed CA made here) to a minimal
loopback Pulse stand-in that answers every report with 200, as a server
would, so the numbers include TLS and delivery. node_exporter is Debian's
prometheus-node-exporter (installed with apt-get when missing). Both run
with their defaults otherwise. CPU is user + system time from /proc/<pid>/stat
(including threads that have exited); memory is VmHWM from /proc/<pid>/status.
Everything stays on 127.0.0.1 and stops by itself.
"""

import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def cpu_ns_live(pid):
    """CPU time of each live thread from schedstat, in seconds by thread ID,
    for the idle measurement, where a 10 ms clock tick would be too coarse."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0]) / 1e9
        except OSError:
            pass
    return times


def cpu_delta(before, after):
    """CPU spent between two cpu_ns_live readings by the threads alive at the
    second (a thread that ended in between would otherwise take its whole
    past CPU time off the sum)."""
    return sum(t - before.get(tid, 0.0) for tid, t in after.items())


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_first_answer(port, path, started, limit=30):
    while time.monotonic() - started < limit:
        try:
            if get(port, path, timeout=1) == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"no answer on :{port}{path} within {limit}s")


def scrape_cpu(pid, port, path, n=1000):
    """CPU seconds per scrape over n sequential scrapes, one connection each."""
    before = cpu_seconds(pid)
    t0 = time.monotonic()
    for _ in range(n):
        assert get(port, path) == 200
    wall = time.monotonic() - t0
    return (cpu_seconds(pid) - before) / n, wall


class StandIn(http.server.BaseHTTPRequestHandler):
    # Keep-alive, like the Go HTTP server Pulse runs on.
    protocol_version = "HTTP/1.1"
    reports = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        StandIn.reports += 1
        body = json.dumps({"success": True, "agentId": "bench", "lastSeen": "2026-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # lookup and config: this host is unknown
        body = b'{"error":"agent not found","code":"agent_not_found"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_standin(tmp):
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    p = lambda n: os.path.join(tmp, n)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "1", "-subj", "/CN=bench CA")
    run("req", *ec, "-keyout", p("key.pem"), "-out", p("leaf.csr"), "-subj", "/CN=127.0.0.1")
    with open(p("ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
        "-out", p("cert.pem"), "-days", "1", "-extfile", p("ext"))
    key, cert = p("key.pem"), p("cert.pem")
    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), StandIn)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return port, p("ca.pem")


def start_agent(tmp, url, cert, port, interval, exe):
    token = os.path.join(tmp, "token")
    # Written once: rewriting it while another agent starts would hand that
    # agent an empty file, and a URL without a token is refused.
    if not os.path.exists(token):
        with open(token + ".new", "w") as f:
            f.write("0123456789abcdef" * 4)
        os.chmod(token + ".new", 0o600)
        os.rename(token + ".new", token)
    # One state directory and log per run: two agents must not share a spool.
    name = f"{interval}-{os.path.basename(os.path.dirname(os.path.dirname(exe)))}-{port}"
    state = os.path.join(tmp, f"state-{name}")
    cmd = [exe, f"--url={url}", f"--token-file={token}",
           f"--cacert={cert}", f"--state-dir={state}", f"--interval={interval}",
           f"--health-addr=127.0.0.1:{port}"]
    started = time.monotonic()
    log = open(os.path.join(tmp, f"agent-{name}.log"), "w")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    p.log_path = log.name
    return p, started


def start_node_exporter(port):
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    started = time.monotonic()
    p = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, started


def builds():
    """(label, path) of the builds to measure; the first is the release build."""
    out = []
    musl = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True).stdout
    if "x86_64-unknown-linux-musl" in musl and shutil.which("musl-gcc"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "x86_64-unknown-linux-musl"],
                       cwd=ROOT, check=True)
        out.append(("static musl", os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/pulse-agent")))
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out.append(("glibc", os.path.join(ROOT, "target/release/pulse-agent")))
    return out


def measure_agent(tmp, url, cert, exe):
    """Start-up time, CPU per scrape, and peak RSS after 100 cycles and 1,000 scrapes."""
    port = free_port()
    agent, t0 = start_agent(tmp, url, cert, port, "1s", exe)
    try:
        first = wait_first_answer(port, "/healthz", t0)
        delivered0 = StandIn.reports
        scrape, wall = scrape_cpu(agent.pid, port, "/metrics")
        deadline = time.monotonic() + 300
        while StandIn.reports - delivered0 < 100:
            time.sleep(0.5)
            if agent.poll() is not None or time.monotonic() > deadline:
                with open(agent.log_path) as f:
                    raise SystemExit(f"pulse-agent did not deliver 100 reports; its log:\n{f.read()}")
        return {"rss": status_kb(agent.pid, "VmHWM"), "scrape": scrape, "wall": wall, "start": first,
                "threads": status_kb(agent.pid, "Threads")}
    finally:
        agent.terminate()
        agent.wait(10)


def main():
    if not shutil.which("prometheus-node-exporter") and not shutil.which("node_exporter"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus-node-exporter"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    tmp = tempfile.mkdtemp(prefix="pulse-bench-")
    procs = []
    try:
        measured = builds()
        sport, cert = start_standin(tmp)
        url = f"https://127.0.0.1:{sport}"

        nport = free_port()
        node, n_t0 = start_node_exporter(nport)
        procs.append(node)
        n = {"start": wait_first_answer(nport, "/", n_t0)}
        n["scrape"], n["wall"] = scrape_cpu(node.pid, nport, "/metrics")

        results = []
        for label, exe in measured:
            print(f"{label}: 100 report cycles at 1 s with 1,000 scrapes...", file=sys.stderr)
            results.append((label, exe, measure_agent(tmp, url, cert, exe)))
        n["rss"], n["threads"] = status_kb(node.pid, "VmHWM"), status_kb(node.pid, "Threads")

        # Idle: a 30 s interval, no scrapes, two minutes, for each build at once.
        print("idle CPU at a 30 s interval, 2 minutes...", file=sys.stderr)
        idle = []
        for label, exe, _ in results:
            a, _ = start_agent(tmp, url, cert, free_port(), "30s", exe)
            procs.append(a)
            idle.append(a)
        time.sleep(2)  # past start-up and the first report
        c0 = [cpu_ns_live(a.pid) for a in idle] + [cpu_ns_live(node.pid)]
        t0 = time.monotonic()
        time.sleep(120)
        minutes = (time.monotonic() - t0) / 60
        c1 = [cpu_ns_live(a.pid) for a in idle] + [cpu_ns_live(node.pid)]
        for a in idle:
            if a.poll() is not None:
                sys.exit(f"an idle agent exited ({a.returncode}); see {a.log_path}")
        per_min = [cpu_delta(a, b) / minutes for a, b in zip(c0, c1)]
        for (label, exe, r), a in zip(results, idle):
            r["rss"] = max(r["rss"], status_kb(a.pid, "VmHWM"))
        n["idle"] = per_min[-1]

        def ms(x):
            return f"{x * 1e3:.2f} ms"

        head = " | ".join(f"pulse-agent ({label})" for label, _, _ in results)
        print()
        print(f"| measure (this machine) | {head} | node_exporter |")
        print("|---" * (len(results) + 2) + "|")
        row = lambda name, f, nv: print(f"| {name} | " + " | ".join(f(r) for _, _, r in results) + f" | {nv} |")  # noqa: E731
        row("peak RSS after 100 cycles and 1,000 scrapes", lambda r: f"{r['rss'] / 1024:.2f} MiB", f"{n['rss'] / 1024:.2f} MiB")
        row("CPU per /metrics scrape (1,000 scrapes)",
            lambda r: f"{ms(r['scrape'])} (1/{n['scrape'] / max(r['scrape'], 1e-9):.0f})", ms(n["scrape"]))
        row("wall time of 1,000 scrapes", lambda r: f"{r['wall']:.2f} s", f"{n['wall']:.2f} s")
        for i, (_, _, r) in enumerate(results):
            r["idle"] = per_min[i]
        row("idle CPU per minute, 30 s interval", lambda r: ms(r["idle"]), ms(n["idle"]))
        row("start to first health answer", lambda r: ms(r["start"]), ms(n["start"]))
        row("threads", lambda r: str(r["threads"]), str(n["threads"]))
        print()
        sizes = ", ".join(f"{label} {os.path.getsize(exe):,} bytes" for label, exe, _ in results)
        print(f"pulse-agent delivered {StandIn.reports} reports over HTTPS (TLS 1.3, keep-alive) during the run; "
              f"binaries: {sizes}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
