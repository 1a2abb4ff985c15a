#!/bin/sh
# The systemd scenario of issue 14, run as root inside the guest by the
# image's pulse-guest-test.service (see build-image.sh), from the 9p share
# the host test (vendor-free-tests/systemd.rs) mounts at /host.
#
# Each step is a shell function run in a subshell with `set -e`; its output
# goes to out/STEP.log and its verdict to out/steps ("ok STEP SECONDS" or
# "FAIL STEP SECONDS"). A failed step does not stop the others: the host
# test asserts on every verdict and on what reached its stand-in, so one run
# shows everything that broke. Each phase uses its own token
# (pulse-guest-PHASE) so the host can tell which phase sent a report.
set -u
H=/host
OUT=$H/out
# PULSE_TEST_URL (the stand-in), PULSE_TEST_CHANNEL (the release channel);
# release.keys holds the channel's public key, ca.pem the CAs of both.
# shellcheck source=/dev/null # written by the host test
. "$H/env"
exec >>"$OUT/scenario.log" 2>&1

step() {
	name=$1
	shift
	t0=$(date +%s)
	echo "== $name"
	(
		set -e
		"$@"
	) >"$OUT/$name.log" 2>&1
	rc=$?
	t=$(($(date +%s) - t0))
	if [ "$rc" -eq 0 ]; then
		echo "ok $name $t" >>"$OUT/steps"
	else
		echo "FAIL $name $t" >>"$OUT/steps"
		tail -20 "$OUT/$name.log"
	fi
	return "$rc"
}

# wait_until SECONDS COMMAND...: polls once a second.
wait_until() {
	limit=$1
	shift
	i=0
	until "$@"; do
		i=$((i + 1))
		if [ "$i" -ge "$limit" ]; then
			echo "gave up after ${limit}s: $*"
			return 1
		fi
		sleep 1
	done
}

# prop UNIT PROPERTY: one property's value.
prop() {
	systemctl show -p "$2" --value "$1"
}

# delivered N: the agent's /status says at least N reports went out (the
# STATUS= line says so too, but systemd takes it only from a Type=notify
# unit or with NotifyAccess=).
delivered() {
	n=$(curl -fsS -m 5 http://127.0.0.1:9191/status | tr ',' '\n' |
		sed -n 's/.*"delivered": *\([0-9]*\).*/\1/p' | head -1)
	[ "${n:-0}" -ge "$1" ]
}

# show UNIT FILE: the unit's state, for the log and for the host.
show() {
	systemctl show -p Type,ActiveState,SubState,NRestarts,StatusText,MainPID,Result "$1" | tee "$OUT/$2"
}

# ask WHAT: asks the host test to do WHAT (publish-v99) and waits for it.
ask() {
	touch "$OUT/ask-$1"
	wait_until 300 test -e "$OUT/ack-$1"
}

# token PHASE: a token file for PHASE, for the installer to read.
token() {
	(umask 077 && echo "pulse-guest-$1" >"/root/token-$1")
	echo "/root/token-$1"
}

# The installer as a user runs it, from a checkout (units from
# contrib/systemd beside it), against the host's channel.
inst() {
	sh "$H/contrib/install.sh" --channel "$PULSE_TEST_CHANNEL" \
		--key-file "$H/release.keys" --cacert "$H/ca.pem" "$@"
}

# active UNIT: it runs, came up through READY=1 (Type=notify) and said
# what it delivered.
check_active() {
	show "$1" "show-$2.txt"
	test "$(prop "$1" ActiveState)" = active
	test "$(prop "$1" SubState)" = running
	test "$(prop "$1" Type)" = notify
}

# The guest's disks, as the host test made them: sda and sdb alone, sdc and
# sdd an md RAID1 (64 MiB resyncs in a moment), nvme0n1.
setup_disks() {
	udevadm settle
	ls -l /dev/sd? /dev/nvme0n1
	mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 /dev/sdc /dev/sdd
	wait_until 60 grep -q '\[UU\]' /proc/mdstat
	mdadm --wait /dev/md0 || true
	cat /proc/mdstat
}

# dockerd with one container (created, not started: the image has no
# registry to pull from, so its image is imported from a tar of one file).
docker_up() {
	wait_until 120 docker info >/dev/null 2>&1
	tar -C / -cf - etc/hostname | docker import - pulse-guest/tiny
	docker create --name pulse-guest-tiny pulse-guest/tiny /nothing
	docker ps -a
}

# First install: hardened units (the probe must find that this systemd
# runs NoNewPrivileges), service mode, a report with every collector.
install_hardened() {
	inst --url "$PULSE_TEST_URL" --token-file "$(token hardened)" | tee "$OUT/install.txt"
	grep -q 'hardened units' "$OUT/install.txt"
	check_active pulse-agent.service hardened
	wait_until 60 delivered 1
	cat /etc/pulse-agent/installed
}

# systemd-analyze verify on every unit of the repository: the hardened set
# as installed, the compat set from contrib/systemd/compat. --man=no: the
# image has no man(1) to look up Documentation=man:pulse-agent(8) with.
verify_units() {
	# One call per set: each call costs seconds under TCG. (The sets are
	# apart because their units have the same names.)
	ls "$H"/contrib/systemd/*.service "$H"/contrib/systemd/*.timer
	systemd-analyze verify --man=no "$H"/contrib/systemd/*.service "$H"/contrib/systemd/*.timer
	ls "$H"/contrib/systemd/compat/*.service
	systemd-analyze verify --man=no "$H"/contrib/systemd/compat/*.service
}

# systemd-analyze security of a loaded unit: the whole table for the host,
# which reads the exposure from its last line.
security() {
	systemd-analyze security --no-pager "$1" >"$OUT/security-$2.txt"
	tail -1 "$OUT/security-$2.txt"
}

# The watchdog: a short WatchdogSec= in a drop-in, the agent stopped with
# SIGSTOP; systemd must kill it (SIGABRT is held while it is stopped, so
# SIGKILL after TimeoutAbortSec=) and start a new one that is READY again.
watchdog() {
	mkdir -p /etc/systemd/system/pulse-agent.service.d
	cat >/etc/systemd/system/pulse-agent.service.d/50-watchdog-test.conf <<'CONF'
[Service]
WatchdogSec=5s
TimeoutAbortSec=3s
RestartSec=1s
CONF
	systemctl daemon-reload
	systemctl restart pulse-agent.service
	pid=$(prop pulse-agent.service MainPID)
	n=$(prop pulse-agent.service NRestarts)
	echo "stopping $pid (NRestarts=$n)"
	kill -STOP "$pid"
	wait_until 60 sh -c "[ \"\$(systemctl show -p NRestarts --value pulse-agent.service)\" -gt $n ]"
	# shellcheck disable=SC2016 # expanded by that sh
	wait_until 60 sh -c '[ "$(systemctl show -p ActiveState --value pulse-agent.service)" = active ]'
	new=$(prop pulse-agent.service MainPID)
	echo "new main PID $new"
	test "$new" != "$pid"
	if kill -0 "$pid" 2>/dev/null; then
		echo "the hung agent $pid is still there"
		return 1
	fi
	check_active pulse-agent.service watchdog
	journalctl -u pulse-agent.service --no-pager | grep -i watchdog
	rm /etc/systemd/system/pulse-agent.service.d/50-watchdog-test.conf
	systemctl daemon-reload
}

# The compat units (nothing that implies NoNewPrivileges), as the installer
# puts them where the probe fails; a new token for this phase.
install_compat() {
	inst --compat --token-file "$(token compat)" | tee "$OUT/install-compat.txt"
	grep -q 'compat units' "$OUT/install-compat.txt"
	check_active pulse-agent.service compat
	wait_until 60 delivered 1
}

# The non-root profile (contrib/systemd/profiles/non-root.conf) over the
# installed hardened unit, with the docker group as its comment suggests;
# `sysadmin` adds CAP_SYS_ADMIN for NVMe admin commands.
install_nonroot() {
	install -m 0600 "$(token "$1")" /etc/pulse-agent/token
	getent passwd pulse-agent || useradd --system --user-group --no-create-home \
		--home-dir /nonexistent --shell /usr/sbin/nologin pulse-agent
	d=/etc/systemd/system/pulse-agent.service.d
	mkdir -p "$d"
	cp "$H/contrib/systemd/profiles/non-root.conf" "$d/non-root.conf"
	printf '[Service]\nSupplementaryGroups=docker\n' >"$d/60-docker.conf"
	if [ "$1" = nonroot-sysadmin ]; then
		printf '[Service]\nAmbientCapabilities=CAP_SYS_ADMIN\n' >"$d/70-sysadmin.conf"
	fi
	systemctl daemon-reload
	systemctl restart pulse-agent.service
	check_active pulse-agent.service "$1"
	wait_until 60 delivered 1
	test "$(prop pulse-agent.service User)" = pulse-agent
	grep -E '^(Uid|CapEff|CapAmb)' "/proc/$(prop pulse-agent.service MainPID)/status"
	# Why a collector fails as this user, for the report: the device
	# nodes' modes, and the tools run as the service's user and groups.
	ls -l /dev/nvme0 /dev/nvme0n1 /dev/md0 /dev/sda
	caps=+sys_rawio
	[ "$1" = nonroot ] || caps=+sys_rawio,+sys_admin
	for cmd in "smartctl -H /dev/nvme0" "smartctl -H -d nvme /dev/nvme0n1" "mdadm --detail /dev/md0"; do
		echo "-- as pulse-agent ($caps): $cmd"
		# shellcheck disable=SC2086 # the command's words
		setpriv --reuid pulse-agent --regid pulse-agent --groups disk,docker \
			--inh-caps "$caps" --ambient-caps "$caps" $cmd 2>&1 | tail -n 4 || true
	done
}

remove_nonroot() {
	rm -rf /etc/systemd/system/pulse-agent.service.d
	systemctl daemon-reload
}

# Timer mode: pulse-agent.timer runs pulse-agent-once.service; a drop-in
# makes it fire within seconds instead of every minute.
install_timer() {
	# --hardened: the compat phase before forced --compat, which upgrades keep.
	inst --mode timer --hardened --token-file "$(token timer)" | tee "$OUT/install-timer.txt"
	grep -q 'hardened units' "$OUT/install-timer.txt"
	test "$(prop pulse-agent.service ActiveState)" = inactive
	mkdir -p /etc/systemd/system/pulse-agent.timer.d
	printf '[Timer]\nOnBootSec=\nOnActiveSec=2s\nOnUnitActiveSec=10s\nAccuracySec=1s\n' \
		>/etc/systemd/system/pulse-agent.timer.d/50-soon.conf
	before=$(journalctl -u pulse-agent-once.service --no-pager | grep -c 'Deactivated successfully' || true)
	systemctl daemon-reload
	systemctl restart pulse-agent.timer
	wait_until 90 sh -c "[ \$(journalctl -u pulse-agent-once.service --no-pager | grep -c 'Deactivated successfully') -gt $before ]"
	systemctl list-timers --all --no-pager pulse-agent.timer
	systemctl show -p Result,ExecMainStatus pulse-agent-once.service | tee "$OUT/show-timer.txt"
	test "$(prop pulse-agent-once.service Result)" = success
	rm -rf /etc/systemd/system/pulse-agent.timer.d
}

# Back to the service, then upgrade in place: the host publishes 99.0.0
# on the same channel and the installer runs again with no token.
upgrade() {
	# Pulse lets only the token that first reported a host remove it: the
	# upgrade phase goes back to that one (hardened) for the uninstall.
	inst --mode service --token-file "$(token hardened)"
	before=$(sha256sum /etc/pulse-agent/token /var/lib/pulse-agent/agent-id)
	/usr/local/bin/pulse-agent --version
	ask publish-v99
	inst | tee "$OUT/install-upgrade.txt"
	grep -q 'upgraded pulse-agent 99.0.0' "$OUT/install-upgrade.txt"
	/usr/local/bin/pulse-agent --version | grep -q 99.0.0
	test "$(sha256sum /etc/pulse-agent/token /var/lib/pulse-agent/agent-id)" = "$before"
	check_active pulse-agent.service upgrade
	wait_until 60 delivered 1
}

# Uninstall: the server is told, every installed file goes, the state
# stays; installing again and --purge removes the state too.
uninstall() {
	id=$(cat /var/lib/pulse-agent/agent-id)
	inst --uninstall | tee "$OUT/uninstall.txt"
	grep -q "agent $id is uninstalled" "$OUT/uninstall.txt"
	left=$(ls -d /etc/systemd/system/pulse-agent* /usr/local/bin/pulse-agent* /etc/pulse-agent 2>/dev/null || true)
	test -z "$left" || { echo "left behind: $left"; return 1; }
	test "$(prop pulse-agent.service LoadState)" = not-found
	test "$(cat /var/lib/pulse-agent/agent-id)" = "$id"
	inst --url "$PULSE_TEST_URL" --token-file "$(token hardened)"
	inst --uninstall --purge
	test ! -e /var/lib/pulse-agent
}

# The Debian package: installed with apt, started once configured, purged.
deb() {
	# A clean host, whatever the steps before left behind.
	rm -rf /etc/pulse-agent /var/lib/pulse-agent
	DEBIAN_FRONTEND=noninteractive apt-get install -y "$H"/deb/pulse-agent_*.deb | tee "$OUT/deb-install.txt"
	# Not configured yet: installed but not enabled (it would exit 2 at
	# every boot), and it says what to do.
	test "$(prop pulse-agent.service UnitFileState)" = disabled
	grep -q 'systemctl enable --now pulse-agent' "$OUT/deb-install.txt"
	install -d -m 0700 /etc/pulse-agent
	install -m 0644 "$H/ca.pem" /etc/pulse-agent/ca.pem
	printf 'PULSE_URL=%s\nPULSE_CACERT=/etc/pulse-agent/ca.pem\n' "$PULSE_TEST_URL" >>/etc/pulse-agent/env
	(umask 077 && echo pulse-guest-deb >/etc/pulse-agent/token)
	systemctl enable --now pulse-agent.service
	check_active pulse-agent.service deb
	wait_until 60 delivered 1
	DEBIAN_FRONTEND=noninteractive apt-get purge -y pulse-agent
	left=$(ls -d /usr/bin/pulse-agent /lib/systemd/system/pulse-agent* /etc/pulse-agent /var/lib/pulse-agent 2>/dev/null || true)
	echo "after purge: ${left:-nothing}"
	test -z "$left"
}

# Seconds from the kernel's start to this script (systemd-analyze time has
# no answer yet: this unit is part of the boot).
cut -d' ' -f1 /proc/uptime >"$OUT/boot.txt"
# dockerd takes a while under TCG: it starts now, while the disks are made
# and the agent installed (the watchdog step's restarts report it).
systemctl start --no-block docker.service
step setup_disks setup_disks
step install_hardened install_hardened
step verify_units verify_units
step docker_up docker_up
step security_hardened security pulse-agent.service hardened
step watchdog watchdog
step nonroot install_nonroot nonroot
step nonroot_sysadmin install_nonroot nonroot-sysadmin
step remove_nonroot remove_nonroot
step install_compat install_compat
step security_compat security pulse-agent.service compat
step install_timer install_timer
step security_timer security pulse-agent-once.service timer
step upgrade upgrade
step uninstall uninstall
step deb deb

journalctl -b --no-pager >"$OUT/journal.txt" 2>&1
touch "$OUT/done"
