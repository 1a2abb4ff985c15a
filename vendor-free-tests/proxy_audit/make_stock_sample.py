#!/usr/bin/env python3
"""Writes stock.log: an audit log in the stock proxy's format, computed
independently of the Rust code (Python's json + hashlib), following
cmd/pulse-sensor-proxy/audit.go at cf52b5f51:

  hash input = prev raw digest (32 bytes; nothing for seq 1)
               || json.Marshal(AuditEvent{..., EventHash: ""})
  json.Marshal: struct field order, omitempty, Go escaping of < > & U+2028 U+2029
  on disk: zerolog {"level":"info", <fields sorted by key>, "time": <unix s>}
           (zerolog does not escape < > &)

Run: python3 make_stock_sample.py > stock.log
"""
import datetime, hashlib, json

ORDER = ["seq", "ts", "event_type", "correlation_id", "peer_uid", "peer_gid",
         "peer_pid", "remote_addr", "command", "args", "target", "decision",
         "reason", "limiter", "exit_code", "duration_ms", "stdout_sha256",
         "stderr_sha256", "error", "prev_hash", "event_hash"]
ALWAYS = {"seq", "ts", "event_type", "prev_hash", "event_hash"}  # no omitempty
ON_DISK_ALWAYS = ALWAYS | {"decision", "correlation_id"}


def go_marshal(ev):
    parts = []
    for k in ORDER:
        v = ev.get(k)
        if k not in ALWAYS and (v is None or v == "" or v == []):
            continue
        parts.append(json.dumps(k) + ":" + json.dumps(v, ensure_ascii=False, separators=(",", ":")))
    s = "{" + ",".join(parts) + "}"
    for c, e in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(c, e)
    return s.encode()


def zerolog_line(ev, unix):
    m = {k: v for k, v in ev.items()
         if k in ON_DISK_ALWAYS or not (v is None or v == "" or v == [])}
    body = ",".join(json.dumps(k) + ":" + json.dumps(m[k], ensure_ascii=False, separators=(",", ":"))
                    for k in sorted(m))
    return '{"level":"info",' + body + ',"time":' + str(unix) + "}"


RUNS = [
    [  # first process lifetime
        dict(ts="2025-11-03T10:15:42.123456789Z", event_type="connection.accepted",
             peer_uid=100000, peer_gid=100000, peer_pid=4242, decision="allowed"),
        dict(ts="2025-11-03T10:15:42.1234567Z", event_type="command.start",
             correlation_id="3f2c0f6e-5b1a-4c4e-9a51-0d7e0d1c2b3a", peer_uid=100000,
             peer_gid=100000, peer_pid=4242, command="get_temperature", decision="allowed"),
        dict(ts="2025-11-03T10:15:43.5Z", event_type="command.finish",
             correlation_id="3f2c0f6e-5b1a-4c4e-9a51-0d7e0d1c2b3a", peer_uid=100000,
             peer_gid=100000, peer_pid=4242, command="get_temperature", decision="failed",
             exit_code=1, duration_ms=1377,
             error='failed to get temperatures: exit status 255 (stderr: ssh <pve2> & "x"\n\tdone)'),
        dict(ts="2025-11-03T10:15:44Z", event_type="connection.denied", decision="denied",
             reason="peer_credentials_unavailable"),
    ],
    [  # restart: seq and chain begin again
        dict(ts="2025-11-03T11:00:00.000000001Z", event_type="limiter.rejection",
             peer_uid=0, peer_gid=0, peer_pid=1, decision="denied", limiter="rate"),
        dict(ts="2025-11-03T11:00:01.25Z", event_type="http_request",
             remote_addr="192.0.2.7:51234", command="GET", target="/temps?node=a&b<c>",
             exit_code=200, reason="temperature_success", decision=""),
        dict(ts="2025-11-03T11:00:02.75Z", event_type="command.validation_failed",
             peer_uid=1000, peer_gid=1000, peer_pid=77, command="", args=["x<y", "\u2028"],
             decision="denied", reason="invalid_json", stdout_sha256="ab" * 32),
        dict(ts="2025-11-03T11:00:03.9Z", event_type="command.finish",
             correlation_id="c0ffee00-0000-4000-8000-000000000001", peer_uid=1000, peer_gid=1000,
             peer_pid=77, command="get_status", decision="completed", exit_code=0),
    ],
]

for run in RUNS:
    prev = b""
    for seq, ev in enumerate(run, 1):
        ev = dict(ev, seq=seq, prev_hash=prev.hex(), event_hash="")
        ev.setdefault("decision", "")
        ev.setdefault("correlation_id", "")
        digest = hashlib.sha256(prev + go_marshal(ev)).digest()
        ev["event_hash"] = digest.hex()
        prev = digest
        unix = int(datetime.datetime.fromisoformat(ev["ts"][:19] + "+00:00").timestamp())
        print(zerolog_line(ev, unix))
