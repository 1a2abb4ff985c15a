#!/bin/sh
# pulse-agent installer: installs, upgrades and removes pulse-agent under
# systemd from a signed release channel (contrib/release/README.md).
#
# POSIX sh (dash, busybox sh); needs curl, and OpenSSL >= 3.0 or
# OpenSSH >= 8.1 (ssh-keygen -Y verify) to check signatures. Nothing is
# installed that did not pass every check: release.json's signature, its
# name and expiry, the binary's size, SHA-256 and signature, and the
# binary's own --version.
#
# The token is never put in an argument list: it is read from a file or
# standard input, written to /etc/pulse-agent/token (0600), and given to curl
# (only for --uninstall) in a 0600 header file (-H @FILE).
#
# Published copies are made with `pulse-release publish-installer`, which
# fills in the three marked lines below (the trusted release keys, the
# default channel, the unit files from contrib/systemd/) and signs the
# result (install.sh.sshsig, namespace "file"). Run from a checkout, the
# script takes the units from contrib/systemd/ beside it.
#
# Run with --help for the options. Exit status: 0 ok, 1 failure, 2 usage.
set -eu

RELEASE_KEYS='' # pulse-release: keys
DEFAULT_CHANNEL='' # pulse-release: channel
embedded_unit() { return 1; } # pulse-release: units

UNIT_NAMES='pulse-agent.service pulse-agent-once.service pulse-agent.timer pulse-agent-update.service pulse-agent-update.timer'
# The channel's files: release.json and signatures are small; a binary is
# capped as the agent's updater caps it.
INDEX_CAP=1048576
BINARY_CAP=104857600
# The agent's health listener (pulse-agent --health-addr default).
READYZ=http://127.0.0.1:9191/readyz
READY_WAIT=90
NAMESPACE=pulse-agent-release
PRINCIPAL=pulse-agent-release

usage() {
	cat <<'EOF'
Usage: install.sh [OPTIONS]
       install.sh --uninstall [--purge] [OPTIONS]

Installs pulse-agent from its signed release channel and runs it under
systemd; run it again to upgrade in place (token and state are kept).

  --url URL          Pulse server (needed the first time)
  --token-file FILE  read the API token from FILE
  --token-stdin      read the API token from standard input (one line)
  --insecure         do not verify the Pulse server's TLS certificate
  --cacert FILE      trust this CA for the Pulse server and the downloads
                     (copied to /etc/pulse-agent/ca.pem)
  --channel URL      release channel (https; default: the one this copy
                     was published for)
  --key-file FILE    more trusted release keys (base64 Ed25519, one a line)
  --mode MODE        service (resident, default) or timer (a report a minute
                     from pulse-agent.timer, updates from pulse-agent-update.timer)
  --compat           install the compat units (no NoNewPrivileges) without
                     probing; kept by later upgrades
  --hardened         probe again for the hardened units (undoes --compat)
  --allow-downgrade  install a release older than the installed one
  --no-start         install and enable, but do not start or restart
  --dest-root DIR    install under DIR; run no systemctl, start nothing
                     (packagers, tests); root is not required
  --uninstall        tell the server, stop and remove what was installed
  --purge            with --uninstall: remove /var/lib/pulse-agent too
  -h, --help         this text

Installs /usr/local/bin/pulse-agent (TrueNAS SCALE:
/var/lib/pulse-agent-bin/pulse-agent), /etc/pulse-agent/{token,env,
update-keys,ca.pem,installed} and units in /etc/systemd/system/.
EOF
}

say() { printf 'pulse-agent install: %s\n' "$*"; }
warn() { printf 'pulse-agent install: warning: %s\n' "$*" >&2; }
die() {
	printf 'pulse-agent install: error: %s\n' "$*" >&2
	exit 1
}
usage_error() {
	printf 'pulse-agent install: error: %s (see --help)\n' "$*" >&2
	exit 2
}

# ---- options ----------------------------------------------------------------

url=
token_file=
token_stdin=false
insecure=
cacert=
channel=
key_file=
mode=
compat=false
allow_downgrade=false
hardened=false
no_start=false
dest=
uninstall=false
purge=false

while [ $# -gt 0 ]; do
	opt=$1
	case $opt in
	--*=*)
		val=${opt#*=}
		opt=${opt%%=*}
		shift
		set -- "$opt" "$val" "$@"
		continue
		;;
	esac
	case $opt in
	--url | --token-file | --cacert | --channel | --key-file | --mode | --dest-root)
		[ $# -ge 2 ] || usage_error "$opt needs a value"
		val=$2
		shift 2
		case $opt in
		--url) url=$val ;;
		--token-file) token_file=$val ;;
		--cacert) cacert=$val ;;
		--channel) channel=$val ;;
		--key-file) key_file=$val ;;
		--mode) mode=$val ;;
		--dest-root) dest=$val ;;
		esac
		;;
	--token-stdin) token_stdin=true && shift ;;
	--insecure) insecure=true && shift ;;
	--compat) compat=true && shift ;;
	--allow-downgrade) allow_downgrade=true && shift ;;
	--hardened) hardened=true && shift ;;
	--no-start) no_start=true && shift ;;
	--uninstall) uninstall=true && shift ;;
	--purge) purge=true && shift ;;
	-h | --help)
		usage
		exit 0
		;;
	--token)
		usage_error "--token is not accepted: it would be visible in the process list and shell history; use --token-file FILE or --token-stdin"
		;;
	*) usage_error "unknown option $opt" ;;
	esac
done

case $mode in
'' | service | timer) ;;
*) usage_error "--mode is service or timer, not $mode" ;;
esac
[ -z "$token_file" ] || [ "$token_stdin" = false ] || usage_error "--token-file and --token-stdin exclude each other"
[ -z "$cacert" ] || [ -z "$insecure" ] || usage_error "--cacert and --insecure exclude each other"
[ "$purge" = false ] || [ "$uninstall" = true ] || usage_error "--purge goes with --uninstall"
if [ -n "$dest" ]; then
	case $dest in
	/*) ;;
	*) dest=$(pwd)/$dest ;;
	esac
	dest=${dest%/}
	[ -d "$dest" ] || die "--dest-root $dest is not a directory"
fi

# ---- the host ---------------------------------------------------------------

if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
	die "run it as root (sudo sh install.sh ...): it writes /etc/pulse-agent, /usr/local/bin and systemd units"
fi

# Appliances first (their markers are under --dest-root when one is given,
# so tests and packagers see the refusals too).
if [ -f "$dest/etc/config/qpkg.conf" ] || [ -x "$dest/sbin/getcfg" ]; then
	die "QNAP QTS has no systemd, so this installer cannot run the agent there. Run the pulse-agent binary from a QPKG or autorun.sh (pulse-agent --url URL --token-file FILE --state-dir /share/CACHEDEV1_DATA/.pulse-agent), or in a container from Container Station."
fi
if [ -f "$dest/etc/alpine-release" ] || [ -x "$dest/sbin/openrc-run" ] || [ -x "$dest/sbin/openrc" ]; then
	die "this host uses OpenRC (Alpine), not systemd: this installer installs systemd units only. Install the binary by hand and start it from an OpenRC service (command=/usr/local/bin/pulse-agent, command_args=\"--token-file /etc/pulse-agent/token --state-dir /var/lib/pulse-agent\", command_background=true)."
fi
platform=linux
if [ -f "$dest/etc/synoinfo.conf" ]; then
	platform=dsm
elif [ -x "$dest/usr/bin/midclt" ] || { [ -f "$dest/etc/version" ] && grep -qi 'scale\|^2[0-9]\.' "$dest/etc/version" 2>/dev/null; }; then
	platform=truenas
fi
if [ -z "$dest" ] && [ ! -d /run/systemd/system ]; then
	die "systemd is not running here (no /run/systemd/system): this installer installs systemd units only. Run pulse-agent from your init system by hand (see pulse-agent(8))."
fi
# The Debian package owns /usr/bin/pulse-agent and its units: a second copy
# here would run beside it, with units that shadow the package's.
if [ -z "$dest" ] && command -v dpkg-query >/dev/null 2>&1 &&
	dpkg-query -W -f '${Status}' pulse-agent 2>/dev/null | grep -q 'ok installed'; then
	die "the Debian package pulse-agent is installed: upgrade or remove it with apt, not with this installer"
fi

etc=/etc/pulse-agent
state=/var/lib/pulse-agent
unit_dir=/etc/systemd/system
# TrueNAS SCALE mounts /usr read-only and replaces it on upgrades: the binary
# goes to /var/lib, which persists and which the updater can write; not into
# the state directory, which systemd hands to the service's user (the
# non-root profile could then replace a binary that root runs). (A TrueNAS
# upgrade drops /etc/systemd/system: run this again.)
if [ "$platform" = truenas ]; then
	bin_dir=/var/lib/pulse-agent-bin
else
	bin_dir=/usr/local/bin
fi
manifest=$etc/installed

as_root=false
[ "$(id -u)" -eq 0 ] && as_root=true

# ---- helpers ----------------------------------------------------------------

tmp=
bin_tmp=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	[ -z "$bin_tmp" ] || rm -f "$bin_tmp"
	[ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pulse-agent-install.XXXXXX") || die "cannot make a temporary directory"
chmod 700 "$tmp"

have() { command -v "$1" >/dev/null 2>&1; }

# A value from the manifest of an earlier install (empty when none).
manifest_get() {
	[ -f "$dest$manifest" ] || return 0
	sed -n "s/^$1 //p" "$dest$manifest" | tail -n 1
}

# Installs the content of file $1 as $2 (a path under the destination root)
# with mode $3: written beside it and renamed, so it is whole or absent.
put() {
	_t="$(dirname "$2")/.$(basename "$2").tmp$$"
	cp "$1" "$_t" || die "cannot write $_t"
	chmod "$3" "$_t"
	if [ "$as_root" = true ]; then chown 0:0 "$_t" || die "cannot chown $_t"; fi
	mv -f "$_t" "$2" || die "cannot install $2"
}

b64d() {
	if have openssl; then openssl base64 -d -A; else base64 -d; fi
}
b64e() {
	if have openssl; then openssl base64 -A; else base64 | tr -d '\n'; fi
}

# A CA bundle for curl: --cacert replaces curl's default bundle, so the
# given CA joins the system's (the channel may be on a public server).
ca_bundle=
make_ca_bundle() { # CA file
	ca_bundle=$tmp/ca-bundle.pem
	cat "$1" >"$ca_bundle"
	for sys in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
		if [ -f "$sys" ]; then
			cat "$sys" >>"$ca_bundle"
			break
		fi
	done
}

# Downloads https URL $1 to $2, at most $3 bytes; https only, redirects too.
fetch() {
	_u=$1 _o=$2 _max=$3
	set --
	if [ -n "$ca_bundle" ]; then set -- --cacert "$ca_bundle"; fi
	if ! curl -fsSL --proto =https --proto-redir =https --max-redirs 5 \
		--connect-timeout 15 --max-time 900 --max-filesize "$_max" "$@" -o "$_o" "$_u"; then
		die "cannot download $_u"
	fi
	_n=$(wc -c <"$_o" | tr -d ' ')
	[ "$_n" -le "$_max" ] || die "$_u is larger than $_max bytes"
}

is_key() { # one base64 Ed25519 public key: 43 characters and '='
	printf '%s\n' "$1" | grep -Eq '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$'
}

# Adds the keys of file $1 (one a line, '#' comments) to $keys.
add_keys_from() {
	while IFS= read -r _k || [ -n "$_k" ]; do
		_k=$(printf '%s' "$_k" | tr -d ' \t\r')
		case $_k in '' | '#'*) continue ;; esac
		is_key "$_k" || die "$1: $_k is not a base64 Ed25519 public key (44 characters)"
		case " $keys " in *" $_k "*) ;; *) keys="$keys $_k" ;; esac
	done <"$1"
}

# ---- signature verifiers ----------------------------------------------------

verifier=
pick_verifier() {
	if have openssl; then
		_v=$(openssl version 2>/dev/null || true)
		case $_v in
		"OpenSSL "[3-9].* | "OpenSSL "[1-9][0-9].*)
			verifier=openssl
			return
			;;
		esac
	fi
	if have ssh-keygen && ssh-keygen -Y unknown-op </dev/null 2>&1 | grep -q -- '-Y verify'; then
		verifier=ssh-keygen
		return
	fi
	die "no signature verifier: install OpenSSL 3.0 or later (apt-get install openssl) or OpenSSH 8.1 or later (apt-get install openssh-client); the release's signatures are never skipped"
}

# The verifier's form of each trusted key, made once.
prepare_keys() {
	_i=0
	: >"$tmp/allowed_signers"
	for _k in $keys; do
		_i=$((_i + 1))
		if [ "$verifier" = openssl ]; then
			# SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed
			# 12-byte DER prefix and the 32 key bytes.
			{
				printf '\060\052\060\005\006\003\053\145\160\003\041\000'
				printf '%s' "$_k" | b64d
			} >"$tmp/key$_i.der"
			{
				printf '%s\n' '-----BEGIN PUBLIC KEY-----'
				b64e <"$tmp/key$_i.der"
				printf '\n%s\n' '-----END PUBLIC KEY-----'
			} >"$tmp/key$_i.pem"
		else
			# allowed_signers: the ssh-ed25519 key blob (RFC 8709).
			{
				printf '\000\000\000\013ssh-ed25519\000\000\000\040'
				printf '%s' "$_k" | b64d
			} >"$tmp/key$_i.blob"
			printf '%s ssh-ed25519 %s\n' "$PRINCIPAL" "$(b64e <"$tmp/key$_i.blob")" >>"$tmp/allowed_signers"
		fi
	done
}

# Succeeds when file $1 is signed by a trusted key: $1.sig with OpenSSL, or
# $1.sshsig with ssh-keygen (both downloaded beside it).
verify_sig() {
	if [ "$verifier" = openssl ]; then
		b64d <"$1.sig" >"$1.sig.bin" 2>/dev/null || return 1
		[ "$(wc -c <"$1.sig.bin" | tr -d ' ')" -eq 64 ] || return 1
		_i=0
		for _k in $keys; do
			_i=$((_i + 1))
			if openssl pkeyutl -verify -pubin -inkey "$tmp/key$_i.pem" -rawin \
				-in "$1" -sigfile "$1.sig.bin" >/dev/null 2>&1; then
				return 0
			fi
		done
		return 1
	fi
	ssh-keygen -Y verify -f "$tmp/allowed_signers" -I "$PRINCIPAL" -n "$NAMESPACE" \
		-s "$1.sshsig" <"$1" >/dev/null 2>&1
}

sig_ext() { if [ "$verifier" = openssl ]; then echo sig; else echo sshsig; fi; }

sha256_of() {
	if have sha256sum; then
		sha256sum "$1" | cut -d ' ' -f 1
	elif have openssl; then
		openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1
	else
		die "no sha256sum and no openssl to hash the download"
	fi
}

# ---- units ------------------------------------------------------------------

# Prints unit $2 of variant $1 (hardened or compat): embedded by
# publish-installer, or from contrib/systemd/ beside this script.
unit_text() {
	# Timers run nothing themselves, so they have no sandbox to drop: the
	# compat set uses the same files.
	_v=$1
	case $2 in *.timer) _v=hardened ;; esac
	if embedded_unit "$_v" "$2"; then return 0; fi
	_d=$(dirname "$0")/systemd
	[ "$_v" = hardened ] || _d=$_d/compat
	if [ -f "$_d/$2" ]; then
		cat "$_d/$2"
		return 0
	fi
	die "no $1 unit $2: this copy of install.sh was not made by 'pulse-release publish-installer' and has no contrib/systemd/ beside it"
}

units_for() { # mode
	if [ "$1" = timer ]; then
		echo 'pulse-agent-once.service pulse-agent.timer pulse-agent-update.service pulse-agent-update.timer'
	else
		echo 'pulse-agent.service'
	fi
}

# Whether version $1 is older than $2 (X.Y.Z numerically; for the same
# X.Y.Z a pre-release is older than the release, and two pre-releases
# compare as text).
older() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		na = split(a, x, "-"); nb = split(b, y, "-")
		split(x[1], p, "."); split(y[1], q, ".")
		for (i = 1; i <= 3; i++) {
			if (p[i] + 0 < q[i] + 0) exit 0
			if (p[i] + 0 > q[i] + 0) exit 1
		}
		pa = substr(a, length(x[1]) + 2); pb = substr(b, length(y[1]) + 2)
		if (pa == pb) exit 1
		if (pa == "") exit 1
		if (pb == "") exit 0
		exit !(pa < pb)
	}'
}

# Whether systemd here runs a unit with NoNewPrivileges and a system-call
# filter (DSM 7 and old systemd fail with status=227/NO_NEW_PRIVILEGES).
probe_hardened() {
	have systemd-run || return 1
	_true=/bin/true
	[ -x "$_true" ] || _true=/usr/bin/true
	systemd-run --wait --quiet --collect -p NoNewPrivileges=yes \
		-p SystemCallFilter=@system-service -p ProtectKernelTunables=yes "$_true" >/dev/null 2>&1
}

# ---- uninstall --------------------------------------------------------------

tell_server() { # url token-file agent-id
	_url=$1 _tokf=$2 _aid=$3
	have curl || {
		warn "no curl: the server was not told; remove the host in Pulse by hand"
		return 0
	}
	_h=$tmp/headers
	(
		umask 077
		printf 'X-API-Token: %s\n' "$(cat "$_tokf")" >"$_h"
	)
	printf '{"agentId":"%s"}' "$_aid" >"$tmp/body"
	set --
	if [ "$(manifest_get tls)" = insecure ]; then
		set -- -k
	elif [ -f "$dest$etc/ca.pem" ]; then
		make_ca_bundle "$dest$etc/ca.pem"
		set -- --cacert "$ca_bundle"
	fi
	_code=$(curl -sS --connect-timeout 15 --max-time 30 "$@" -o "$tmp/answer" -w '%{http_code}' \
		-X POST -H @"$_h" -H 'Content-Type: application/json' --data-binary @"$tmp/body" \
		"${_url%/}/api/agents/agent/uninstall" 2>"$tmp/curl.err") || _code=000
	rm -f "$_h"
	case $_code in
	200) say "told $_url that agent $_aid is uninstalled" ;;
	000) warn "could not reach $_url ($(head -n 1 "$tmp/curl.err")): remove the host in Pulse by hand" ;;
	403) warn "the server refused (403): this token does not own agent $_aid; remove the host in Pulse by hand" ;;
	*) warn "the server answered $_code ($(head -c 200 "$tmp/answer")): remove the host in Pulse by hand" ;;
	esac
}

do_uninstall() {
	[ -f "$dest$manifest" ] || die "$manifest is missing: nothing here was installed by this installer"
	_url=${url:-$(manifest_get url)}
	if [ -n "$token_file" ]; then
		_tok=$token_file
	elif [ "$token_stdin" = true ]; then
		read_token
		_tok=$tmp/token
	else
		_tok=$dest$etc/token
	fi
	_id=
	[ -f "$dest$state/agent-id" ] && _id=$(head -n 1 "$dest$state/agent-id" | tr -d ' \t\r')
	case $_id in *[!A-Za-z0-9._:-]*) _id= ;; esac
	if [ -z "$_url" ]; then
		warn "no server URL (--url): the server was not told"
	elif [ -z "$_id" ]; then
		warn "no agent ID in $state/agent-id (the agent never reported?): the server was not told"
	elif [ ! -s "$_tok" ]; then
		warn "no token: the server was not told"
	else
		tell_server "$_url" "$_tok" "$_id"
	fi
	_units=$(sed -n 's/^unit //p' "$dest$manifest")
	if [ -z "$dest" ]; then
		for _u in $_units; do
			systemctl disable --now "$_u" >/dev/null 2>&1 || true
		done
	fi
	for _u in $_units; do
		case " $UNIT_NAMES " in *" $_u "*) rm -f "$dest$unit_dir/$_u" ;; esac
	done
	sed -n 's/^bin //p' "$dest$manifest" | while IFS= read -r _b; do
		case $_b in
		/*/pulse-agent) rm -f "$dest$_b" "$dest$_b.previous" ;;
		esac
	done
	# Only the files this installer writes: anything an admin added stays.
	for _f in token env update-keys ca.pem installed; do
		rm -f "$dest$etc/$_f"
	done
	rmdir "$dest$etc" 2>/dev/null || warn "$etc stays: it holds files this installer did not write"
	[ -n "$dest" ] || systemctl daemon-reload
	if [ "$purge" = true ]; then
		rm -rf "$dest$state"
		say "removed pulse-agent and its state ($state)"
	else
		say "removed pulse-agent; its state stays in $state (--purge removes it)"
	fi
}

read_token() { # from standard input into $tmp/token (0600)
	IFS= read -r _line || [ -n "$_line" ] || die "--token-stdin: nothing on standard input"
	(
		umask 077
		printf '%s\n' "$_line" >"$tmp/token"
	)
	_line=
}

if [ "$uninstall" = true ]; then
	do_uninstall
	exit 0
fi

# ---- install: settings ------------------------------------------------------

have curl || die "curl is needed (apt-get install curl): it downloads the release and never sees the token on its command line"

upgrade=false
[ -f "$dest$manifest" ] && upgrade=true
[ -n "$url" ] || url=$(manifest_get url)
[ -n "$url" ] || usage_error "--url is needed (the Pulse server, e.g. https://pulse.lan:7655)"
case $url in
http://?* | https://?*) ;;
*) usage_error "--url $url is not an http:// or https:// URL" ;;
esac
case $url in *[!A-Za-z0-9._~:/?#@!\&+,\;=%[\]-]*) usage_error "--url has a character that does not belong in a URL" ;; esac
[ -n "$channel" ] || channel=$(manifest_get channel)
[ -n "$channel" ] || channel=$DEFAULT_CHANNEL
[ -n "$channel" ] || usage_error "--channel is needed: this copy of install.sh has no default channel"
case $channel in
https://?*) ;;
*) usage_error "--channel must be an https:// URL, not $channel" ;;
esac
case $channel in *[!A-Za-z0-9._~:/?#@!\&+,\;=%[\]-]*) usage_error "--channel has a character that does not belong in a URL" ;; esac
channel=${channel%/}
[ -n "$mode" ] || mode=$(manifest_get mode)
[ -n "$mode" ] || mode=service
if [ -z "$insecure" ] && [ -z "$cacert" ]; then
	case $(manifest_get tls) in
	insecure) insecure=true ;;
	cacert) [ -f "$dest$etc/ca.pem" ] && cacert=$dest$etc/ca.pem ;;
	esac
fi
if [ -n "$cacert" ]; then
	[ -f "$cacert" ] || die "--cacert $cacert is not a file"
	grep -q -- '-----BEGIN CERTIFICATE-----' "$cacert" || die "--cacert $cacert holds no PEM certificate"
	cp "$cacert" "$tmp/ca.pem"
	make_ca_bundle "$tmp/ca.pem"
fi

# The token: a new one, or the one installed before.
if [ -n "$token_file" ]; then
	[ -r "$token_file" ] || die "--token-file $token_file cannot be read"
	(
		umask 077
		cat "$token_file" >"$tmp/token"
	)
elif [ "$token_stdin" = true ]; then
	read_token
elif [ -s "$dest$etc/token" ]; then
	: # upgrade: keep the installed token
else
	usage_error "a token is needed: --token-file FILE or --token-stdin (it is never taken on the command line)"
fi
if [ -f "$tmp/token" ]; then
	# One line of visible characters, as the agent reads it.
	_lines=$(grep -c '' "$tmp/token" || true)
	[ "$_lines" -eq 1 ] || die "the token must be one line (found $_lines)"
	tr -d '\n' <"$tmp/token" >"$tmp/token.1"
	[ -s "$tmp/token.1" ] || die "the token is empty"
	if LC_ALL=C grep -q '[^!-~]' "$tmp/token.1"; then
		die "the token has spaces or other characters a token does not have"
	fi
	rm -f "$tmp/token.1"
fi

# Trusted keys: the ones this copy was published with, --key-file, and
# (on an upgrade) the ones installed before.
keys=
for k in $RELEASE_KEYS; do
	is_key "$k" || die "a key baked into this installer is malformed: $k"
	keys="$keys $k"
done
[ -z "$key_file" ] || {
	[ -r "$key_file" ] || die "--key-file $key_file cannot be read"
	add_keys_from "$key_file"
}
[ ! -f "$dest$etc/update-keys" ] || add_keys_from "$dest$etc/update-keys"
[ -n "$keys" ] || die "no trusted release key: this copy of install.sh has none (not made by 'pulse-release publish-installer') and no --key-file was given"

pick_verifier
prepare_keys

case $(uname -m) in
x86_64 | amd64) target=linux-amd64 ;;
aarch64 | arm64) target=linux-arm64 ;;
armv7* | armv8l) target=linux-armv7 ;;
armv6*) target=linux-armv6 ;;
i386 | i486 | i586 | i686) target=linux-386 ;;
*) die "no release for this machine ($(uname -m)); targets: linux-amd64 linux-arm64 linux-armv7 linux-armv6 linux-386" ;;
esac

# ---- install: download and verify ---------------------------------------------

ext=$(sig_ext)
say "checking $channel/release.json (signatures: $verifier)"
fetch "$channel/release.json" "$tmp/release.json" "$INDEX_CAP"
fetch "$channel/release.json.$ext" "$tmp/release.json.$ext" 65536
verify_sig "$tmp/release.json" ||
	die "release.json's signature does not verify with any trusted key: nothing installed"

# Only now is release.json read. It is read as pulse-release writes it (one
# key a line, two-space indentation, the asset's file, size and sha256 on the
# lines after its target): a signed index in another layout is refused here,
# not misread.
field() { sed -n "s/^  \"$1\": \"\\([^\"]*\\)\",\$/\\1/p" "$tmp/release.json" | head -n 1; }
name=$(field name)
version=$(field version)
expires=$(field expires)
[ "$name" = pulse-agent ] || die "release.json names $name, not pulse-agent"
printf '%s\n' "$version" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$' ||
	die "release.json: version \"$version\" is not X.Y.Z (or not in the layout pulse-release writes)"
printf '%s\n' "$expires" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$' ||
	die "release.json: expires \"$expires\" is not an RFC 3339 UTC time"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# Both are YYYY-MM-DDTHH:MM:SSZ (the fraction dropped), so text order is
# time order.
exp_s=$(printf '%s\n' "$expires" | sed 's/\.[0-9]*Z$/Z/')
awk -v e="$exp_s" -v n="$now" 'BEGIN { exit !(e "" > n "") }' ||
	die "release.json expired at $expires (now $now): the channel has not been re-signed; nothing installed"
# Never backwards on an upgrade: an old index, still within its expiry,
# replayed by a mirror must not put back a version with known bugs.
installed_version=$(manifest_get version)
if [ -n "$installed_version" ] && [ "$allow_downgrade" = false ] &&
	older "$version" "$installed_version"; then
	die "the channel offers $version, older than the installed $installed_version: nothing installed (--allow-downgrade installs it anyway)"
fi
asset=$(awk -v t="    \"$target\": {" '
	$0 == t { on = 1; next }
	on && /^    }/ { exit }
	on { print }' "$tmp/release.json")
[ -n "$asset" ] || die "release $version has no asset for $target"
afield() { printf '%s\n' "$asset" | sed -n "s/^      \"$1\": \"*\\([^\",]*\\)\"*,*\$/\\1/p" | head -n 1; }
file=$(afield file)
size=$(afield size)
sha256=$(afield sha256)
printf '%s\n' "$file" | grep -Eq '^[A-Za-z0-9_][A-Za-z0-9._-]*$' || die "release.json: asset $target: \"$file\" is not a plain file name"
printf '%s\n' "$size" | grep -Eq '^[0-9]{1,9}$' || die "release.json: asset $target: size \"$size\" is not a number"
[ "$size" -le "$BINARY_CAP" ] || die "release.json: asset $target is $size bytes, over the $BINARY_CAP cap"
printf '%s\n' "$sha256" | grep -Eq '^[0-9a-f]{64}$' || die "release.json: asset $target: sha256 is not 64 lowercase hex digits"

# The binary goes to a temporary file beside its final place, so the last
# step is one rename.
mkdir -p "$dest$bin_dir"
bin=$bin_dir/pulse-agent
bin_tmp=$dest$bin_dir/.pulse-agent.install.$$
say "downloading pulse-agent $version for $target ($size bytes)"
fetch "$channel/$file" "$bin_tmp" "$BINARY_CAP"
fetch "$channel/$file.$ext" "$tmp/binary.$ext" 65536
got=$(wc -c <"$bin_tmp" | tr -d ' ')
[ "$got" -eq "$size" ] || die "$file is $got bytes, release.json says $size: nothing installed"
got=$(sha256_of "$bin_tmp")
[ "$got" = "$sha256" ] || die "$file has SHA-256 $got, release.json says $sha256: nothing installed"
cp "$tmp/binary.$ext" "$bin_tmp.$ext"
if ! verify_sig "$bin_tmp"; then
	rm -f "$bin_tmp.$ext" "$bin_tmp.sig.bin"
	die "$file's signature does not verify with any trusted key: nothing installed"
fi
rm -f "$bin_tmp.$ext" "$bin_tmp.sig.bin"
chmod 0755 "$bin_tmp"
ran=$("$bin_tmp" --version 2>&1) || die "the downloaded binary does not run here ($ran): nothing installed"
[ "$ran" = "v$version" ] || die "the downloaded binary says it is $ran, release.json says $version: nothing installed"

# ---- install: files ---------------------------------------------------------

variant=hardened
if [ "$compat" = true ]; then
	variant=compat
	why="--compat"
elif [ "$hardened" = false ] && [ "$(manifest_get compat)" = forced ]; then
	compat=true
	variant=compat
	why="--compat, kept from the last install"
elif [ -n "$dest" ]; then
	why="--dest-root: not probed"
elif probe_hardened; then
	why="this systemd runs units with NoNewPrivileges"
else
	variant=compat
	why="a transient unit with NoNewPrivileges and a system call filter did not run here (DSM 7 fails them with status=227; so may an old systemd)"
fi
units=$(units_for "$mode")
for u in $units; do
	unit_text "$variant" "$u" >"$tmp/$u"
	if [ "$bin" != /usr/local/bin/pulse-agent ]; then
		sed "s#/usr/local/bin#$bin_dir#g" "$tmp/$u" >"$tmp/$u.new" && mv "$tmp/$u.new" "$tmp/$u"
	fi
done

mkdir -p "$dest$etc" "$dest$unit_dir"
chmod 0755 "$dest$etc"
[ "$as_root" = false ] || chown 0:0 "$dest$etc"
mkdir -p "$dest$state"
chmod 0700 "$dest$state"

[ ! -f "$tmp/token" ] || put "$tmp/token" "$dest$etc/token" 0600
# shellcheck disable=SC2086 # one key a line; keys are checked base64
printf '%s\n' $keys >"$tmp/update-keys"
{
	printf '# Release keys pulse-agent trusts (base64 Ed25519), written by install.sh.\n'
	cat "$tmp/update-keys"
} >"$tmp/update-keys.out"
put "$tmp/update-keys.out" "$dest$etc/update-keys" 0644
tls=system
if [ -n "$cacert" ]; then
	tls=cacert
	put "$tmp/ca.pem" "$dest$etc/ca.pem" 0644
elif [ -n "$insecure" ]; then
	tls=insecure
	rm -f "$dest$etc/ca.pem"
fi
# env: the lines this installer manages, after any the admin added.
{
	[ ! -f "$dest$etc/env" ] || grep -Ev '^(PULSE_URL|PULSE_UPDATE_URL|PULSE_CACERT|PULSE_INSECURE_SKIP_VERIFY)=' "$dest$etc/env" || true
	printf 'PULSE_URL=%s\n' "$url"
	printf 'PULSE_UPDATE_URL=%s\n' "$channel"
	case $tls in
	cacert) printf 'PULSE_CACERT=%s\n' "$etc/ca.pem" ;;
	insecure) printf 'PULSE_INSECURE_SKIP_VERIFY=true\n' ;;
	esac
} >"$tmp/env"
put "$tmp/env" "$dest$etc/env" 0600

# Units of an earlier install that this mode does not use go first.
old_units=
[ ! -f "$dest$manifest" ] || old_units=$(sed -n 's/^unit //p' "$dest$manifest")
for u in $old_units; do
	case " $units " in *" $u "*) continue ;; esac
	[ -n "$dest" ] || systemctl disable --now "$u" >/dev/null 2>&1 || true
	rm -f "$dest$unit_dir/$u"
done
for u in $units; do
	put "$tmp/$u" "$dest$unit_dir/$u" 0644
done

# The binary last: keep the one it replaces as pulse-agent.previous (the
# updater's rollback uses the same name), then one rename.
if [ -f "$dest$bin" ]; then
	ln -f "$dest$bin" "$dest$bin.previous" 2>/dev/null || cp -p "$dest$bin" "$dest$bin.previous"
fi
[ "$as_root" = false ] || chown 0:0 "$bin_tmp"
mv -f "$bin_tmp" "$dest$bin" || die "cannot install $bin"
bin_tmp=

{
	printf '# Written by pulse-agent install.sh: what --uninstall removes.\n'
	printf 'version %s\n' "$version"
	printf 'bin %s\n' "$bin"
	for u in $units; do printf 'unit %s\n' "$u"; done
	printf 'variant %s\n' "$variant"
	printf 'mode %s\n' "$mode"
	printf 'url %s\n' "$url"
	printf 'channel %s\n' "$channel"
	printf 'tls %s\n' "$tls"
	[ "$compat" = false ] || printf 'compat forced\n'
} >"$tmp/installed"
put "$tmp/installed" "$dest$manifest" 0644

if [ "$upgrade" = true ]; then what=upgraded; else what=installed; fi
say "$what pulse-agent $version at $bin ($variant units: $why; mode $mode)"

# ---- start ------------------------------------------------------------------

if [ -n "$dest" ]; then
	say "--dest-root: systemctl not run, nothing started"
	exit 0
fi
# A unit that did not start: its status and last log lines, then the error.
failed_start() { # unit [what]
	systemctl status --no-pager "$1" >&2 || true
	journalctl -u "$1" -n 30 --no-pager >&2 || true
	die "${2:-$1 did not start} (above: its status and last log lines)"
}

systemctl daemon-reload
if [ "$mode" = timer ]; then
	systemctl disable --now pulse-agent.service >/dev/null 2>&1 || true
	systemctl enable pulse-agent.timer pulse-agent-update.timer >/dev/null
	if [ "$no_start" = true ]; then
		say "--no-start: enabled pulse-agent.timer and pulse-agent-update.timer, not started"
		exit 0
	fi
	systemctl restart pulse-agent.timer pulse-agent-update.timer || failed_start pulse-agent.timer
	if systemctl start pulse-agent-once.service; then
		say "pulse-agent-once.service delivered a report; pulse-agent.timer runs it every minute"
		exit 0
	fi
	failed_start pulse-agent-once.service "the first report did not go through"
fi
systemctl disable --now pulse-agent.timer pulse-agent-update.timer >/dev/null 2>&1 || true
systemctl enable pulse-agent.service >/dev/null
if [ "$no_start" = true ]; then
	say "--no-start: enabled pulse-agent.service, not started"
	exit 0
fi
systemctl restart pulse-agent.service || failed_start pulse-agent.service
i=0
while [ "$i" -lt "$READY_WAIT" ]; do
	if curl -fs -o /dev/null --max-time 2 "$READYZ"; then
		say "pulse-agent.service is ready ($READYZ answered 200)"
		exit 0
	fi
	sleep 1
	i=$((i + 1))
done
failed_start pulse-agent.service "pulse-agent.service did not become ready within ${READY_WAIT}s ($READYZ)"
