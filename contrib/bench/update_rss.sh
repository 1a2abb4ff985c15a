#!/bin/sh
# Peak resident memory of `pulse-agent update` installing a signed asset of
# 3 MB and of 90 MiB from a loopback channel (python3 -m http.server): the
# download and both checks stream, so the peak must not grow with the asset.
#
#   sh contrib/bench/update_rss.sh [AGENT]     # default target/release/pulse-agent
#
# Needs root (the agent trusts only a root-owned key file), python3,
# GNU time, rustc. The asset is a small program that answers --version and
# --self-test like a release build, padded with zeros to the size wanted (an
# ELF runs the same with data after its end). Everything happens in a temp
# directory; the agent measured is a copy.
set -eu
cd "$(dirname "$0")/../.."
agent=${1:-target/release/pulse-agent}
[ -x "$agent" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
cargo build --quiet --example pulse-release
release=target/debug/examples/pulse-release
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/channel"
FAKE_VERSION=99.0.0 FAKE_SELF_TEST=pass FAKE_RECORD="$work/record" \
	rustc --edition 2021 -O -o "$work/fake" vendor-free-tests/update/fake-release.rs
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/channel" "$port" >/dev/null 2>&1 &
server=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null; do
	sleep 0.1
done
"$release" keygen --out "$work/key" >"$work/update-keys"
chmod 0644 "$work/update-keys"
# `update` needs the server's URL and token as the service has them (the
# Pulse server is not contacted by an update).
(umask 077 && echo bench-token >"$work/token")
printf '%-9s %12s %14s %s\n' asset bytes "peak RSS KiB" result
for size in 3000000 94371840; do
	rm -rf "$work/channel"/* "$work/state" "$work/bin"
	cp "$work/fake" "$work/channel/pulse-agent-linux-amd64"
	truncate -s "$size" "$work/channel/pulse-agent-linux-amd64"
	"$release" index --key "$work/key" --version 99.0.0 "$work/channel" >/dev/null
	mkdir -p "$work/bin"
	cp "$agent" "$work/bin/pulse-agent"
	/usr/bin/time -f '%M' -o "$work/rss" "$work/bin/pulse-agent" update \
		--url "http://127.0.0.1:$port" --token-file "$work/token" \
		--update-url "http://127.0.0.1:$port" --update-key-file "$work/update-keys" \
		--state-dir "$work/state" >"$work/out" 2>"$work/err" || true
	if cmp -s "$work/bin/pulse-agent" "$work/channel/pulse-agent-linux-amd64"; then
		result=installed
	else
		result="NOT installed: $(cat "$work/out" "$work/err" | tail -1)"
	fi
	if [ "$size" -ge 1048576 ] && [ $((size % 1048576)) -eq 0 ]; then
		name="$((size / 1048576)) MiB"
	else
		name="$((size / 1000000)) MB"
	fi
	printf '%-9s %12s %14s %s\n' "$name" "$size" "$(tail -1 "$work/rss")" "$result"
done
