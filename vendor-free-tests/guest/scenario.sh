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
# PULSE_TEST_URL (the stand-in), PULSE_TEST_CHANNEL (the release channel).
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
	systemctl show -p Type,ActiveState,SubState,NRestarts,StatusText,MainPID "$1" | tee "$OUT/$2"
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

# The agent's files as a person would write them by hand, with the unit
# from contrib/systemd copied as it is.
install_manual() {
	install -m 0755 "$H/bin/pulse-agent" /usr/local/bin/pulse-agent
	/usr/local/bin/pulse-agent --version
	install -d -m 0755 /etc/pulse-agent
	(umask 077 && echo "pulse-guest-$1" >/etc/pulse-agent/token)
	install -m 0644 "$H/ca.pem" /etc/pulse-agent/ca.pem
	cat >/etc/pulse-agent/env <<ENV
PULSE_URL=$PULSE_TEST_URL
PULSE_CACERT=/etc/pulse-agent/ca.pem
PULSE_INTERVAL=10s
ENV
	install -m 0644 "$H"/contrib/systemd/*.service "$H"/contrib/systemd/*.timer /etc/systemd/system/
	systemctl daemon-reload
	systemctl start pulse-agent
	wait_until 90 delivered 1
	show pulse-agent show-"$1".txt
	test "$(prop pulse-agent ActiveState)" = active
}

# systemd-analyze verify on every unit, as installed. --man=no: the image
# has no man(1) to look up Documentation=man:pulse-agent(8) with.
verify_units() {
	for u in "$H"/contrib/systemd/*.service "$H"/contrib/systemd/*.timer; do
		echo "-- $u"
		systemd-analyze verify --man=no "/etc/systemd/system/$(basename "$u")"
	done
}

# systemd-analyze security of the running unit: the exposure line and the
# whole table, for the host's results.
security() {
	systemd-analyze security --no-pager "$1" >"$OUT/security-$2.txt"
	tail -1 "$OUT/security-$2.txt"
}

# Stops the agent and removes what install_manual put there.
remove_manual() {
	systemctl disable --now pulse-agent
	rm -f /etc/systemd/system/pulse-agent*.service /etc/systemd/system/pulse-agent*.timer
	rm -rf /etc/systemd/system/pulse-agent.service.d /etc/pulse-agent /var/lib/pulse-agent
	rm -f /usr/local/bin/pulse-agent
	systemctl daemon-reload
}

# Seconds from the kernel's start to this script (systemd-analyze time has
# no answer yet: this unit is part of the boot).
cut -d' ' -f1 /proc/uptime >"$OUT/boot.txt"
# dockerd takes a while under TCG: it starts now, while the disks are made.
systemctl start --no-block docker.service
step setup_disks setup_disks
step docker_up docker_up
step manual_install install_manual manual
step manual_verify verify_units
step manual_security security pulse-agent.service manual
step manual_remove remove_manual

journalctl -b --no-pager >"$OUT/journal.txt" 2>&1
touch "$OUT/done"
