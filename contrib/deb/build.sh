#!/bin/sh
# Builds pulse-agent_VERSION_ARCH.deb with dpkg-deb alone (no debhelper):
#
#   sh contrib/deb/build.sh [--binary PATH] [--out DIR]
#
# --binary  the pulse-agent to package (default: cargo build --release)
# --out     where the .deb goes (default: target/deb)
# Prints the path of the package it wrote. VERSION is Cargo.toml's, ARCH
# `dpkg --print-architecture`'s; DEB_MAINTAINER overrides the Maintainer.
#
# The package installs /usr/bin/pulse-agent and the hardened units of
# contrib/systemd in /lib/systemd/system, run with --disable-auto-update:
# apt owns the binary, so the agent's updater (and the update timer, and
# the writable /usr/local/bin) are left out.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
binary=
out=$top/target/deb

while [ $# -gt 0 ]; do
	case $1 in
	--binary) binary=${2:?--binary needs a path}; shift 2 ;;
	--binary=*) binary=${1#--binary=}; shift ;;
	--out) out=${2:?--out needs a directory}; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
	esac
done

for tool in dpkg-deb dpkg gzip; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "build.sh: $tool is needed (apt-get install dpkg gzip)" >&2
		exit 1
	}
done

if [ -z "$binary" ]; then
	(cd "$top" && cargo build --release --bin pulse-agent >&2)
	binary=$top/target/release/pulse-agent
fi
[ -x "$binary" ] || { echo "build.sh: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-Pulse agent maintainers <pulse-agent@users.noreply.github.com>}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
umask 022
# mktemp -d makes it 0700, and the package's / would carry that mode.
chmod 0755 "$stage"

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
	"$stage/usr/share/man/man8" "$stage/usr/share/doc/pulse-agent" \
	"$stage/etc/pulse-agent"
install -m 0755 "$binary" "$stage/usr/bin/pulse-agent"

# The units, with the packaged binary, no self-update, and no writable
# /usr/local/bin (the ReadWritePaths= line and the comment above it).
for unit in pulse-agent.service pulse-agent-once.service pulse-agent.timer; do
	awk '
		/^#/ { held = held $0 "\n"; next }
		/^ReadWritePaths=-\/usr\/local\/bin$/ { held = ""; next }
		{ printf "%s", held; held = ""; print }
		END { printf "%s", held }
	' "$top/contrib/systemd/$unit" |
		sed 's#^ExecStart=/usr/local/bin/pulse-agent #ExecStart=/usr/bin/pulse-agent --disable-auto-update #' \
			>"$stage/lib/systemd/system/$unit"
	chmod 0644 "$stage/lib/systemd/system/$unit"
done

gzip -9n <"$top/man/pulse-agent.8" >"$stage/usr/share/man/man8/pulse-agent.8.gz"
chmod 0644 "$stage/usr/share/man/man8/pulse-agent.8.gz"

cat >"$stage/usr/share/doc/pulse-agent/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pulse-agent

Files: *
Copyright: the pulse-agent authors
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the "Software"),
 to deal in the Software without restriction, including without limitation
 the rights to use, copy, modify, merge, publish, distribute, sublicense,
 and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
 NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
 USE OR OTHER DEALINGS IN THE SOFTWARE.
COPYRIGHT
chmod 0644 "$stage/usr/share/doc/pulse-agent/copyright"

# A conffile: dpkg keeps the administrator's edits across upgrades.
cat >"$stage/etc/pulse-agent/env" <<'ENV'
# Settings for pulse-agent.service (see pulse-agent(8), ENVIRONMENT).
# The token goes in /etc/pulse-agent/token (mode 600), not here.
#
# The Pulse server; the service starts once this and the token are set:
#PULSE_URL=https://pulse.lan:7655
#
# Seconds between reports (default 30):
#PULSE_INTERVAL=30s
#
# A private CA, or a self-signed server certificate:
#PULSE_CACERT=/etc/pulse-agent/ca.pem
ENV
chmod 0600 "$stage/etc/pulse-agent/env"
echo /etc/pulse-agent/env >"$stage/DEBIAN/conffiles"

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: pulse-agent
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Section: admin
Priority: optional
Recommends: smartmontools
Suggests: mdadm
Description: small host agent for the Pulse monitoring server
 Collects Linux host telemetry (CPU, memory, disks, SMART, RAID, ZFS,
 sensors, GPUs, containers) and reports it to a Pulse server, keeping
 unsent reports on disk. Runs as a hardened systemd service; configure
 PULSE_URL in /etc/pulse-agent/env and the token in /etc/pulse-agent/token.
CONTROL

cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
# configure: $2 is the version configured before (empty on a first install).
# A first install enables and starts the service only once it is configured
# (an unconfigured service would exit 2 at every boot); an upgrade never
# changes what the admin chose (disabled, or the timer units): it restarts
# the service only if it is running.
case "$1" in
configure)
	install -d -m 0700 /etc/pulse-agent
	[ -d /run/systemd/system ] || exit 0
	systemctl daemon-reload >/dev/null || true
	if [ -n "$2" ]; then
		systemctl try-restart pulse-agent.service || true
		exit 0
	fi
	url=
	if [ -r /etc/pulse-agent/env ]; then
		url=$(sed -n 's/^[[:space:]]*PULSE_URL=[[:space:]]*//p' /etc/pulse-agent/env | tail -n 1)
	fi
	if [ -s /etc/pulse-agent/token ] && [ -n "$url" ]; then
		systemctl enable --now pulse-agent.service || true
	else
		echo "pulse-agent: not enabled yet. Set PULSE_URL in /etc/pulse-agent/env,"
		echo "pulse-agent: put the token in /etc/pulse-agent/token (chmod 600), then:"
		echo "pulse-agent:   systemctl enable --now pulse-agent"
	fi
	;;
esac
exit 0
POSTINST

cat >"$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
case "$1" in
remove|deconfigure)
	if [ -d /run/systemd/system ]; then
		systemctl stop pulse-agent.service pulse-agent.timer pulse-agent-once.service \
			>/dev/null 2>&1 || true
		systemctl disable pulse-agent.service pulse-agent.timer >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
PRERM

cat >"$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
case "$1" in
remove|purge)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null || true
	fi
	;;
esac
if [ "$1" = purge ]; then
	# The spool, the agent ID, an enrolled runtime token; the token and env.
	rm -rf /var/lib/pulse-agent /etc/pulse-agent
fi
exit 0
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

mkdir -p "$out"
deb=$out/pulse-agent_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
