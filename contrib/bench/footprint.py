#!/usr/bin/env python3
"""pulse-agent's footprint beside node_exporter and collectd, on this machine.

    contrib/bench/footprint.py                       # builds, then about 5 minutes
    contrib/bench/footprint.py --agent glibc=/path/pulse-agent --agent "static musl=/path/b" \\
        [--proxy glibc=/path/pulse-sensor-proxy ...]  # already-built binaries

Prints a markdown table. Every measure is taken on --reps (3) independent
processes per contender, run at the same time, and shown as
"median (min-max)".

Contenders
  * each pulse-agent build: by default the ones built here (`cargo build
    --release --bins`, and the static musl build with `--target
    x86_64-unknown-linux-musl` when the target and musl-gcc are installed);
    with --agent, exactly the binaries given, nothing is built;
  * node_exporter (Debian's prometheus-node-exporter) unscraped, and scraped
    every 30 s (GET /metrics, the agent's reporting interval); the scrapes'
    CPU is node_exporter's, so it is counted;
  * collectd (Debian's collectd-core) in the foreground, Interval 30, with
    the plugins closest to what the agent reports (cpu, memory, load,
    interface, df, disk, swap, uptime) and the csv write plugin into a temp
    directory: the agent's interval work includes delivering its report, so
    collectd's includes writing its values somewhere.
  Missing packages are installed with apt-get (--no-install-recommends).

Pulse stand-in
  A loopback HTTPS server (a CA and a certificate for 127.0.0.1 made with
  openssl; HTTP/1.1 keep-alive, like Pulse's Go server). Each agent has its
  own token, in its own token file written before it starts; the stand-in
  answers 401 to a request without a known token (X-API-Token or
  Authorization: Bearer, as the agent sends both), 400 to a report whose body
  is not a JSON object, and counts host reports per token, so each agent is
  measured on its own deliveries.

Phases (one after the other; the processes of a phase run side by side)
  1. Memory: each agent build reports at a 1 s interval until it has
     delivered 100 reports, and is scraped 1,000 times on /metrics meanwhile
     (one every 0.1 s, so cycles and scrapes overlap in every run). Then,
     for each agent as soon as it is done, /proc/PID/status gives VmHWM
     (peak RSS), VmPeak (peak virtual size), RssAnon, RssFile and Threads,
     and each thread's stack is found (below).
  2. Idle: every contender starts at a 30 s interval, one after another,
     each after the previous one is up (the agent's first report delivered),
     so "start to first answer" (agent: /healthz; node_exporter: /) is timed
     alone. After all are up, CPU is read over a 2-minute window (agents and
     unscraped node_exporter untouched; scraped node_exporter 4 times). Then
     CPU per scrape: 1,000 sequential scrapes of /metrics, one connection
     each, per agent (started within 15 s after its latest report, so no
     cycle falls inside) and per scraped node_exporter. Memory of
     node_exporter and collectd is read at the end of this phase.

CPU is the process's CPU clock (clock_gettime on the clock id of its PID):
the scheduler's nanosecond total (what /proc/PID/task/*/schedstat shows),
of all its threads, exited ones included.

Thread stacks: for each thread, from its stack pointer (in
/proc/PID/task/TID/syscall: an idle thread is blocked in a system call) up
to its thread control block, which glibc and musl put at the top of the
block they map for a thread (see thread_stacks: the mapping holding the
stack pointer alone can be merged with the one above it). That size is what
the thread reserved; /proc/PID/pagemap gives how much of it is resident.
The main thread's [stack] grows on demand and is not counted as a thread
stack.

Everything stays on 127.0.0.1, temporary files in one temp directory, and
every process is stopped at the end. If a process dies or an agent stops
delivering, its log is printed and the script exits 1.
"""

import argparse
import collections
import gzip
import http.client
import http.server
import json
import os
import secrets
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MUSL = "x86_64-unknown-linux-musl"
HOST_REPORT = "/api/agents/agent/report"
DOCKER_REPORT = "/api/agents/docker/report"


class Failed(Exception):
    """The run cannot go on: a process died, stalled, or answered wrongly."""


def say(msg):
    print(msg, file=sys.stderr, flush=True)


# --- /proc ------------------------------------------------------------------


def cpu_ns(pid):
    """CPU time of the whole process in ns: the process CPU-time clock of
    clock_getcpuclockid(pid), which is MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)."""
    return time.clock_gettime_ns(((~pid) << 3) | 2)


def status(pid):
    """The kB and count fields of /proc/PID/status that are measured."""
    keys = ("VmHWM", "VmPeak", "RssAnon", "RssFile", "Threads")
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


def mappings(pid):
    """(start, end, perms, name) of each mapping, with Rss in kB from smaps."""
    out = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                out.append([lo, hi, head[1], head[5].strip() if len(head) > 5 else "", 0])
            elif head[0] == "Rss:":
                out[-1][4] = int(head[1])
    return out


PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_kib(pagemap, lo, hi):
    """KiB of [lo, hi) present in memory or swapped out, from /proc/PID/pagemap."""
    n = (hi - lo) // PAGE
    entries = os.pread(pagemap, 8 * n, 8 * (lo // PAGE))
    return sum(1 for (e,) in struct.iter_unpack("<Q", entries) if e >> 62) * PAGE // 1024


def self_pointers(mem, lo, hi, limit=8):
    """Up to `limit` (a, word at a+16, word at a+24) for the addresses a in
    [lo, hi), lowest first, that hold a itself: a thread control block
    starts with a pointer to itself, in glibc and musl."""
    found = []
    for base in range(lo, hi, 16384):
        chunk = os.pread(mem, min(16384, hi - base), base)
        for i in range(0, len(chunk) - 24, 8):
            (word,) = struct.unpack_from("<Q", chunk, i)
            if word == base + i:
                found.append((word, *struct.unpack_from("<QQ", chunk, i + 16)))
                if len(found) == limit:
                    return found
    return found


def thread_stacks(pid):
    """([(thread name, stack KiB, resident KiB)] for every thread but the
    main one, ("main", KiB, resident KiB) of the main thread's [stack]).

    A thread's stack runs from the start of the mapping holding its stack
    pointer (just above its guard page) to its thread pointer: glibc and
    musl put the thread control block, and the static TLS just below it, at
    the top of the block they map for the thread. The mapping alone is not
    enough: the kernel merges it with an anonymous mapping just above it
    (musl's malloc maps many). The thread pointer is the first word above
    the stack pointer that points to itself and is a control block: glibc's
    repeats the pointer at +16 (tcbhead_t.self), musl's links the threads
    (prev at +16, next at +24: another thread's block). Without it, the
    mapping's end is used and the name says so."""
    maps = sorted(mappings(pid))
    found, main = [], None
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memf, \
            open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pmf:
        mem, pagemap = memf.fileno(), pmf.fileno()
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/comm") as f:
                    name = f.read().strip()
                sp = None
                for _ in range(50):  # "running": try again; an idle thread is blocked
                    with open(f"{base}/syscall") as f:
                        fields = f.read().split()
                    if fields[0] != "running":
                        sp = int(fields[-2], 16)
                        break
                    time.sleep(0.002)
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            vma = next((m for m in maps if sp is not None and m[0] <= sp < m[1]), None)
            if int(tid) == pid:
                main = ("main", (vma[1] - vma[0]) // 1024, vma[4]) if vma else ("main", None, None)
            elif vma is None:
                found.append((name, None, None, []))
            else:
                hi = min(vma[1], vma[0] + 64 * 1024 * 1024)
                found.append((name, vma, sp, self_pointers(mem, sp & ~(PAGE - 1), hi)))
        blocks = {c[0] for *_, cs in found for c in cs}
        threads = []
        for name, vma, sp, candidates in found:
            if vma is None:
                threads.append((name, None, None))
                continue
            tp = next((a for a, prev, nxt in candidates if prev == a or prev in blocks or nxt in blocks), None)
            top = (tp + PAGE - 1) & ~(PAGE - 1) if tp else vma[1]
            threads.append((name if tp else name + " (mapping: no thread pointer found)",
                            (top - vma[0]) // 1024, resident_kib(pagemap, vma[0], top)))
    return threads, main


def elf_has_symbols(path):
    """True when an ELF64 file still has a symbol table or debug sections."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:5] != b"\x7fELF\x02":
        return False
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shnum == 0:
        return False

    def section(i):
        name, kind, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, kind, offset, size

    _, _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, kind, _, _ = section(i)
        label = data[stroff + name:data.index(b"\0", stroff + name)]
        if kind == 2 or label.startswith(b".debug_"):  # SHT_SYMTAB
            return True
    return False


def stripped_size(path, tmp):
    """Bytes of the file once stripped (the file's size when it already is)."""
    if not elf_has_symbols(path):
        return os.path.getsize(path)
    out = os.path.join(tmp, "stripped")
    subprocess.run(["strip", "-o", out, path], check=True)
    size = os.path.getsize(out)
    os.unlink(out)
    return size


# --- HTTP -------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=10):
    """Status of GET http://127.0.0.1:port/path on a new connection, body read."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


class StandIn:
    """The loopback Pulse server: a token per agent, host reports counted per token."""

    def __init__(self, tmp):
        self.lock = threading.Lock()
        self.tokens = {}  # token -> name of the agent holding it
        self.reports = collections.Counter()  # name -> host reports accepted
        self.last = {}  # name -> monotonic time of its latest host report
        self.refused = collections.Counter()  # (name or "?", status, path) -> count
        self.ca = self._certificates(tmp)
        self.port = free_port()
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        srv.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem"))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.port}"

    @staticmethod
    def _certificates(tmp):
        """A CA, and a certificate for 127.0.0.1 signed by it; returns the CA's path."""
        def p(name):
            return os.path.join(tmp, name)

        def run(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run("req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "1", "-subj", "/CN=bench CA")
        run("req", *ec, "-keyout", p("key.pem"), "-out", p("leaf.csr"), "-subj", "/CN=127.0.0.1")
        with open(p("ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
            "-out", p("cert.pem"), "-days", "1", "-extfile", p("ext"))
        return p("ca.pem")

    def self_check(self):
        """The stand-in refuses what Pulse refuses and counts what it accepts."""
        ctx = ssl.create_default_context(cafile=self.ca)
        good = self.new_token("self-check")

        def post(headers, body):
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
            try:
                c.request("POST", HOST_REPORT, body=body, headers=headers)
                r = c.getresponse()
                r.read()
                return r.status
            finally:
                c.close()

        cases = [
            ({}, b"{}", 401),
            ({"X-API-Token": "not-a-token"}, b"{}", 401),
            ({"X-API-Token": good, "Authorization": "Bearer not-a-token"}, b"{}", 401),
            ({"Authorization": f"Bearer {good}"}, b"not json", 400),
            ({"X-API-Token": good, "Authorization": f"Bearer {good}"}, b'{"agent": {}}', 200),
        ]
        for headers, body, want in cases:
            got = post(headers, body)
            if got != want:
                raise SystemExit(f"the stand-in answered {got}, not {want}, to {sorted(headers)} {body!r}")
        with self.lock:
            if self.reports["self-check"] != 1:
                raise SystemExit("the stand-in did not count the self-check's report")
            del self.tokens[good]
            self.reports.clear()
            self.refused.clear()

    def new_token(self, name):
        token = secrets.token_hex(32)
        with self.lock:
            self.tokens[token] = name
        return token

    def count(self, name):
        with self.lock:
            return self.reports[name]

    def last_report(self, name):
        with self.lock:
            return self.last.get(name)

    def _handler(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *args):
                pass

            def agent(self):
                """The agent whose token the request carries; None unless the
                token is known and both headers, when both are sent, agree."""
                given = set()
                if self.headers.get("X-API-Token"):
                    given.add(self.headers["X-API-Token"].strip())
                auth = self.headers.get("Authorization", "")
                if auth:
                    given.add(auth[7:].strip() if auth.startswith("Bearer ") else "")
                if len(given) != 1:
                    return None
                with standin.lock:
                    return standin.tokens.get(given.pop())

            def answer(self, code, doc, name=None, refusal=True):
                if code >= 400 and refusal:
                    with standin.lock:
                        standin.refused[(name or "?", code, self.path.split("?")[0])] += 1
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                name = self.agent()
                if name is None:
                    return self.answer(401, {"error": "Invalid or missing API token"})
                if self.path not in (HOST_REPORT, DOCKER_REPORT):
                    return self.answer(404, {"error": "not found"}, name)
                try:
                    if self.headers.get("Content-Encoding", "").lower() == "gzip":
                        body = gzip.decompress(body)
                    doc = json.loads(body)
                except (OSError, ValueError):
                    doc = None
                if not isinstance(doc, dict):
                    return self.answer(400, {"error": "body is not a JSON object"}, name)
                if self.path == HOST_REPORT:
                    with standin.lock:
                        standin.reports[name] += 1
                        standin.last[name] = time.monotonic()
                self.answer(200, {"success": True, "agentId": name, "lastSeen": "2026-01-01T00:00:00Z"})

            def do_GET(self):  # lookup and config: this host is unknown
                name = self.agent()
                if name is None:
                    return self.answer(401, {"error": "Invalid or missing API token"})
                self.answer(404, {"error": "agent not found", "code": "agent_not_found"}, name, refusal=False)

        return Handler


# --- contenders -------------------------------------------------------------


class Proc:
    """One contender process, its log in the temp directory."""

    def __init__(self, kind, label, rep, cmd, tmp, port=None, token=None):
        self.kind, self.label, self.rep, self.port, self.token = kind, label, rep, port, token
        self.name = f"{kind} ({label}) #{rep}" if label else f"{kind} #{rep}"
        self.log_path = os.path.join(tmp, "log-" + "".join(c if c.isalnum() else "-" for c in self.name))
        self.results = {}
        self.scrape_error = None
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid

    def check(self):
        if self.popen.poll() is not None:
            raise Failed(f"{self.name} exited with status {self.popen.returncode}", self)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_agent(tmp, standin, label, rep, exe, interval):
    """An agent with its own token file (written before it starts), state
    directory and health port."""
    name = f"pulse-agent ({label}) #{rep} {interval}"
    token = standin.new_token(name)
    d = tempfile.mkdtemp(prefix="agent-", dir=tmp)
    token_file = os.path.join(d, "token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    port = free_port()
    cmd = [exe, f"--url={standin.url}", f"--token-file={token_file}", f"--cacert={standin.ca}",
           f"--state-dir={os.path.join(d, 'state')}", f"--interval={interval}",
           f"--health-addr=127.0.0.1:{port}", "--hostname=bench"]
    p = Proc("pulse-agent", label, rep, cmd, tmp, port=port, token=name)
    p.interval = interval
    return p


def node_exporter_exe():
    return shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def start_node_exporter(tmp, label, rep):
    port = free_port()
    cmd = [node_exporter_exe(), f"--web.listen-address=127.0.0.1:{port}"]
    return Proc("node_exporter", label, rep, cmd, tmp, port=port)


COLLECTD_PLUGINS = ("cpu", "memory", "load", "interface", "df", "disk", "swap", "uptime", "csv")


def start_collectd(tmp, rep):
    d = tempfile.mkdtemp(prefix="collectd-", dir=tmp)
    conf = os.path.join(d, "collectd.conf")
    with open(conf, "w") as f:
        f.write(f"""Hostname "bench"
FQDNLookup false
BaseDir "{d}"
PIDFile "{d}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
Interval 30
""")
        for plugin in COLLECTD_PLUGINS:
            f.write(f"LoadPlugin {plugin}\n")
        # The file systems the agent leaves out too.
        f.write(f"""<Plugin df>
  FSType "tmpfs"
  FSType "devtmpfs"
  FSType "overlay"
  FSType "squashfs"
  FSType "proc"
  FSType "sysfs"
  FSType "cgroup2"
  IgnoreSelected true
</Plugin>
<Plugin csv>
  DataDir "{d}/csv"
  StoreRates false
</Plugin>
""")
    p = Proc("collectd", "", rep, [shutil.which("collectd") or "/usr/sbin/collectd", "-f", "-C", conf], tmp)
    p.csv = os.path.join(d, "csv")
    return p


def wait_answer(p, path, limit=30):
    """Seconds from p's start to its first 200 on path."""
    while time.monotonic() - p.started < limit:
        p.check()
        try:
            if get(p.port, path, timeout=1) == 200:
                return time.monotonic() - p.started
        except OSError:
            pass
        time.sleep(0.002)
    raise Failed(f"{p.name}: no answer on 127.0.0.1:{p.port}{path} within {limit} s", p)


def wait_reports(standin, procs, n, limit):
    """Until every agent in procs has delivered n host reports."""
    deadline = time.monotonic() + limit
    while True:
        short = [p for p in procs if standin.count(p.token) < n]
        if not short:
            return
        for p in procs:
            p.check()
        if time.monotonic() > deadline:
            p = short[0]
            raise Failed(f"{p.name} delivered {standin.count(p.token)} of {n} reports in {limit} s", p)
        time.sleep(0.2)


def scrapes(p, n):
    """(CPU seconds per scrape, wall seconds) over n sequential scrapes of /metrics."""
    c0, t0 = cpu_ns(p.pid), time.monotonic()
    for _ in range(n):
        try:
            code = get(p.port, "/metrics")
        except OSError as e:
            p.check()
            raise Failed(f"{p.name}: GET /metrics failed: {e}", p)
        if code != 200:
            raise Failed(f"{p.name}: GET /metrics answered {code}", p)
    wall = time.monotonic() - t0
    return (cpu_ns(p.pid) - c0) / 1e9 / n, wall


def paced_scrapes(p, n, period):
    """n scrapes of /metrics, one every period seconds (on a thread); the
    first failure is left in p.scrape_error."""
    t0 = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, t0 + i * period - time.monotonic()))
        try:
            code = get(p.port, "/metrics")
        except OSError as e:
            p.scrape_error = f"{p.name}: GET /metrics failed: {e}"
            return
        if code != 200:
            p.scrape_error = f"{p.name}: GET /metrics answered {code}"
            return


# --- phases -----------------------------------------------------------------


def memory_phase(o, tmp, standin, agents, procs):
    say(f"phase 1: {len(agents)} build(s) x {o.reps}, at a 1 s interval until {o.reports} reports "
        f"each, with {o.scrapes} scrapes of /metrics each spread over that time...")
    mine = []
    for label, exe in agents:
        for rep in range(1, o.reps + 1):
            p = start_agent(tmp, standin, label, rep, exe, "1s")
            procs.append(p)
            mine.append(p)
            wait_answer(p, "/healthz")
    # The scrapes spread over the reporting time (one every 0.1 s), so that
    # cycles and scrapes overlap in every run, not by chance.
    period = o.reports / o.scrapes
    for p in mine:
        p.scraper = threading.Thread(target=paced_scrapes, args=(p, o.scrapes, period), daemon=True)
        p.scraper.start()
    # Each agent is measured and stopped as soon as it has delivered its
    # reports and had its scrapes, whatever the others are doing.
    waiting, deadline = list(mine), time.monotonic() + o.reports * 3 + 60
    while waiting:
        for p in list(waiting):
            p.check()
            if p.scrape_error:
                raise Failed(p.scrape_error, p)
            if standin.count(p.token) < o.reports or p.scraper.is_alive():
                continue
            p.results.update(status(p.pid))
            p.stacks, p.main_stack = thread_stacks(p.pid)
            with open(f"/proc/{p.pid}/comm") as f:
                p.main_name = f.read().strip()
            p.results["stack"] = max((s[1] for s in p.stacks if s[1] is not None), default=None)
            p.results["reports"] = standin.count(p.token)
            p.stop()
            waiting.remove(p)
        if waiting and time.monotonic() > deadline:
            p = waiting[0]
            raise Failed(f"{p.name} delivered {standin.count(p.token)} of {o.reports} reports in time"
                         + (" (its scrapes are not finished)" if p.scraper.is_alive() else ""), p)
        time.sleep(0.1)
    return mine


def idle_phase(o, tmp, standin, agents, procs):
    say(f"phase 2: every contender x {o.reps} at a 30 s interval, started one by one...")
    ags, unscraped, scraped, collectds = [], [], [], []
    for label, exe in agents:
        for rep in range(1, o.reps + 1):
            p = start_agent(tmp, standin, label, rep, exe, "30s")
            procs.append(p)
            ags.append(p)
            p.results["start"] = wait_answer(p, "/healthz")
            wait_reports(standin, [p], 1, limit=30)
    for group, label in ((unscraped, "unscraped"), (scraped, "scraped every 30 s")):
        for rep in range(1, o.reps + 1):
            p = start_node_exporter(tmp, label, rep)
            procs.append(p)
            group.append(p)
            p.results["start"] = wait_answer(p, "/")
            time.sleep(0.5)
    for rep in range(1, o.reps + 1):
        p = start_collectd(tmp, rep)
        procs.append(p)
        collectds.append(p)
        while not (os.path.isdir(p.csv) and os.listdir(p.csv)):  # its first values written
            p.check()
            if time.monotonic() - p.started > 30:
                raise Failed(f"{p.name} wrote no values within 30 s", p)
            time.sleep(0.05)

    everyone = ags + unscraped + scraped + collectds
    time.sleep(2)
    say(f"  idle CPU over {o.idle:.0f} s; node_exporter scraped at +5 s and every 30 s...")
    c0, t0 = {p: cpu_ns(p.pid) for p in everyone}, time.monotonic()
    errors = []

    def prometheus():
        k = 0
        while True:
            at = t0 + 5 + 30 * k
            if at >= t0 + o.idle:
                return
            time.sleep(max(0.0, at - time.monotonic()))
            for p in scraped:
                try:
                    if get(p.port, "/metrics") != 200:
                        errors.append(f"{p.name}: a scrape failed")
                except OSError as e:
                    errors.append(f"{p.name}: a scrape failed: {e}")
            k += 1

    scraper = threading.Thread(target=prometheus, daemon=True)
    scraper.start()
    while time.monotonic() < t0 + o.idle:
        for p in everyone:
            p.check()
        time.sleep(min(1.0, max(0.0, t0 + o.idle - time.monotonic())))
    c1, t1 = {p: cpu_ns(p.pid) for p in everyone}, time.monotonic()
    scraper.join()
    if errors:
        raise Failed("; ".join(errors), scraped[0])
    for p in everyone:
        p.results["idle"] = (c1[p] - c0[p]) / 1e9 / ((t1 - t0) / 60)

    say(f"  CPU per scrape: {o.scrapes} scrapes of each agent and each scraped node_exporter...")
    for p in ags:
        # Between two cycles: from just after a report, with 15 s to spare.
        while True:
            p.check()
            last = standin.last_report(p.token)
            age = time.monotonic() - last
            if 0.3 < age < 15:
                break
            if age > 90:
                raise Failed(f"{p.name} has not reported for {age:.0f} s", p)
            time.sleep(0.1)
        p.results["scrape"], p.results["wall"] = scrapes(p, o.scrapes)
    for p in scraped:
        p.results["scrape"], p.results["wall"] = scrapes(p, o.scrapes)
    for p in unscraped + scraped + collectds:
        p.check()
        p.results.update(status(p.pid))
    for p in everyone:
        p.stop()
    return ags, unscraped, scraped, collectds


# --- inputs -----------------------------------------------------------------


def build():
    """(agents, proxies) built here: glibc, and static musl when possible."""
    agents, proxies = [], []
    cargo = ["cargo", "build", "--release", "--bins", "--quiet"]
    musl = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True).stdout
    if MUSL in musl.split() and shutil.which("musl-gcc"):
        say("building the static musl release binaries...")
        subprocess.run(cargo + ["--target", MUSL], cwd=ROOT, check=True)
        out = os.path.join(ROOT, "target", MUSL, "release")
        agents.append(("static musl", os.path.join(out, "pulse-agent")))
        proxies.append(("static musl", os.path.join(out, "pulse-sensor-proxy")))
    else:
        say(f"no {MUSL} target or no musl-gcc: the glibc build only")
    say("building the glibc release binaries...")
    subprocess.run(cargo, cwd=ROOT, check=True)
    out = os.path.join(ROOT, "target", "release")
    agents.append(("glibc", os.path.join(out, "pulse-agent")))
    proxies.append(("glibc", os.path.join(out, "pulse-sensor-proxy")))
    return agents, proxies


def labelled(values, what):
    out = []
    for v in values or []:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--{what} takes LABEL=PATH, not {v!r}")
        if not os.access(path, os.X_OK):
            raise SystemExit(f"--{what} {label}: {path} is not an executable file")
        out.append((label, os.path.abspath(path)))
    if len({label for label, _ in out}) != len(out):
        raise SystemExit(f"--{what}: each LABEL once")
    if {label for label, _ in out} & {"unscraped", "scraped", "collectd"}:
        raise SystemExit(f"--{what}: unscraped, scraped and collectd name other columns")
    return out


def install(exe, package):
    if shutil.which(exe) or os.access(f"/usr/sbin/{exe}", os.X_OK):
        return
    say(f"installing {package}...")
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


# --- the table --------------------------------------------------------------


def spread(values, fmt):
    """median (min-max) of the values, each through fmt."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return "?"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}-{fmt(values[-1])})"


def mib(kb):
    return f"{kb / 1024:.2f}"


def ms(s):
    v = s * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def table(o, tmp, agents, proxies, memory, idle):
    ags, unscraped, scraped, collectds = idle
    cols = [(f"pulse-agent ({label})", label) for label, _ in agents]
    cols += [("node_exporter unscraped", "unscraped"), ("node_exporter scraped every 30 s", "scraped"),
             ("collectd", "collectd")]

    def of(procs, label):
        return [p for p in procs if p.label == label]

    mem = {label: of(memory, label) for label, _ in agents}
    idl = {label: of(ags, label) for label, _ in agents}
    idl.update(unscraped=unscraped, scraped=scraped, collectd=collectds)
    # Memory: agents from phase 1; the others at the end of phase 2.
    memsrc = dict(mem, unscraped=unscraped, scraped=scraped, collectd=collectds)

    def row(title, cell):
        return f"| {title} | " + " | ".join(cell(label) for _, label in cols) + " |"

    def results(src, key):
        return lambda label: [p.results.get(key) for p in src.get(label, [])]

    def measured(src, key, fmt, unit, none="-"):
        def cell(label):
            if label not in src or all(v is None for v in results(src, key)(label)):
                return none
            return f"{spread(results(src, key)(label), fmt)} {unit}".rstrip()
        return cell

    sizes = {label: stripped_size(exe, tmp) for label, exe in agents}
    node_size = stripped_size(node_exporter_exe(), tmp)
    collectd_size = stripped_size(shutil.which("collectd") or "/usr/sbin/collectd", tmp) + sum(
        stripped_size(f"/usr/lib/collectd/{p}.so", tmp) for p in COLLECTD_PLUGINS)
    proxy_sizes = {label: stripped_size(exe, tmp) for label, exe in proxies}

    def size_cell(label):
        if label in sizes:
            return f"{sizes[label]:,} B ({sizes[label] / 1048576:.2f} MiB)"
        if label in ("unscraped", "scraped"):
            return f"{node_size:,} B"
        return f"{collectd_size:,} B (daemon + {len(COLLECTD_PLUGINS)} plugins)"

    node_scrape = statistics.median(p.results["scrape"] for p in scraped)

    def scrape_cell(label):
        if label not in idl or label in ("unscraped", "collectd"):
            return "-"
        vals = results(idl, "scrape")(label)
        cell = f"{spread(vals, ms)} ms"
        if label != "scraped":
            cell += f", 1/{node_scrape / max(statistics.median(vals), 1e-9):.0f}"
        return cell

    lines = [
        f"| measure (median (min-max) of {o.reps}) | " + " | ".join(c for c, _ in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
        row("binary, stripped", size_cell),
    ]
    if proxies:
        lines.append(row("pulse-sensor-proxy, stripped", lambda label: (
            f"{proxy_sizes[label]:,} B ({proxy_sizes[label] / 1048576:.2f} MiB)" if label in proxy_sizes else "-")))
    lines += [
        row("peak RSS (VmHWM) [1]", measured(memsrc, "VmHWM", mib, "MiB")),
        row("peak virtual size (VmPeak) [1]", measured(memsrc, "VmPeak", mib, "MiB")),
        row("RssAnon at the end [1]", measured(memsrc, "RssAnon", mib, "MiB")),
        row("RssFile at the end [1]", measured(memsrc, "RssFile", mib, "MiB")),
        row("threads [1]", measured(memsrc, "Threads", lambda v: f"{v:.0f}", "")),
        row("largest thread stack (main thread not counted) [1]", measured(mem, "stack", lambda v: f"{v:,.0f}", "KiB")),
        row(f"CPU per /metrics scrape ({o.scrapes:,} sequential) [2]", scrape_cell),
        row(f"wall time of {o.scrapes:,} scrapes", measured(
            {k: v for k, v in idl.items() if k not in ("unscraped", "collectd")}, "wall", lambda v: f"{v:.2f}", "s")),
        row("idle CPU per minute, 30 s interval [3]", measured(idl, "idle", ms, "ms")),
        row("start to first answer (agent /healthz, node_exporter /)", measured(
            {k: v for k, v in idl.items() if k != "collectd"}, "start", ms, "ms")),
    ]
    delivered = sum(p.results["reports"] for p in memory)
    notes = [
        "",
        f"The {o.reps} repetitions of each contender ran at the same time, as separate processes.",
        f"[1] pulse-agent: {o.reports} reports delivered over HTTPS at a 1 s interval and {o.scrapes:,} "
        f"scrapes of /metrics meanwhile, one every {o.reports / o.scrapes:g} s ({delivered:,} reports in all); "
        "node_exporter and collectd: at the end "
        f"of the idle run (scraped: after its {o.scrapes:,} scrapes too).",
        "[2] one new connection per scrape; an agent's burst starts just after one of its reports (30 s interval).",
        f"[3] over {o.idle:.0f} s, from the process CPU clock (all threads, exited ones included); "
        "node_exporter scraped: its scrapes counted; collectd: cpu, memory, load, interface, df, disk, swap, "
        "uptime, csv.",
    ]
    unmatched = [(label, size) for label, size in proxy_sizes.items() if label not in sizes]
    if unmatched:
        notes.append("pulse-sensor-proxy, stripped: " + ", ".join(f"{label} {s:,} B" for label, s in unmatched))
    lines += notes
    lines.append("")
    for label, _ in agents:
        first = mem[label][0]
        groups = {}
        for name, size, rss in first.stacks:
            # A thread nobody named has the process's name.
            name = "(unnamed)" if name == first.main_name else name
            groups.setdefault((name, size), []).append(rss)
        parts = [f"{name}{f' x{len(r)}' if len(r) > 1 else ''}: {size if size is not None else '?'} KiB "
                 f"({'/'.join(str(x) for x in r)} resident)"
                 for (name, size), r in sorted(groups.items(), key=lambda g: (-(g[0][1] or 0), g[0][0]))]
        main = first.main_stack
        main_text = f"main [stack] {main[1]} KiB ({main[2]} resident)" if main and main[1] else "main ?"
        lines.append(f"- {label}, thread stacks (#1, after phase 1): {main_text}; " + "; ".join(parts))
    return "\n".join(lines)


# --- main -------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", action="append", metavar="LABEL=PATH",
                    help="a pulse-agent binary to measure (repeatable); without it, builds them")
    ap.add_argument("--proxy", action="append", metavar="LABEL=PATH",
                    help="a pulse-sensor-proxy binary whose size to show in the column LABEL (repeatable)")
    ap.add_argument("--reps", type=int, default=3, help="processes per contender (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 10 reports, 100 scrapes, 35 s idle; the numbers mean little")
    o = ap.parse_args()
    o.reports, o.scrapes, o.idle = (10, 100, 35.0) if o.quick else (100, 1000, 120.0)
    agents, proxies = labelled(o.agent, "agent"), labelled(o.proxy, "proxy")
    for tool in ("openssl", "strip"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    install("prometheus-node-exporter", "prometheus-node-exporter")
    install("collectd", "collectd-core")
    if not agents:
        agents, built_proxies = build()
        proxies = proxies or built_proxies
    if not node_exporter_exe():
        raise SystemExit("no node_exporter after installing prometheus-node-exporter")

    began = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="pulse-footprint-")
    procs = []
    try:
        standin = StandIn(tmp)
        standin.self_check()
        memory = memory_phase(o, tmp, standin, agents, procs)
        idle = idle_phase(o, tmp, standin, agents, procs)
        out = table(o, tmp, agents, proxies, memory, idle)
        with standin.lock:
            refused = dict(standin.refused)
        print(flush=True)
        print(out)
        if refused:
            print("\nrefused by the stand-in: " + ", ".join(
                f"{n} x {code} {path} ({who})" for (who, code, path), n in sorted(refused.items())))
        print(f"\n(run took {(time.monotonic() - began) / 60:.1f} min)")
    except Failed as e:
        msg, p = e.args
        with open(p.log_path, errors="replace") as f:
            log = f.read()
        say(f"\nFAILED: {msg}\n--- log of {p.name} (last 60 lines) ---\n"
            + "\n".join(log.splitlines()[-60:]) + "\n---")
        return 1
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
