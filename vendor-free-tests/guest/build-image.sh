#!/bin/sh
# Builds the Debian 12 guest that vendor-free-tests/systemd.rs boots under
# QEMU to test pulse-agent under a real systemd (issue 14).
#
#   sh build-image.sh OUT    # as root; writes OUT/root.ext4, OUT/vmlinuz, OUT/initrd.img
#
# The test keys its cache on a hash of this file, so any change here (a
# package, a unit) rebuilds the image; nothing else goes into it. The guest
# does nothing by itself but run /host/start from the 9p share the test
# gives it, then power off.
set -eu

out=$1
work=$out.work
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# What the scenario uses in the guest, and nothing more (minbase has no init):
# systemd as PID 1 and udev for /dev/disk; the kernel and an initramfs to
# boot it; smartmontools, nvme-cli and mdadm for the collectors; curl,
# openssl and ssh-keygen (openssh-client) for the installer's download and
# signature checks; dbus for systemctl's and systemd-analyze's bus; procps
# for kill(1) (the units' ExecReload=; every real Debian has it, minbase
# does not); docker.io for the docker collector (started only by the
# scenario, not at boot).
packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools
packages=$packages,smartmontools,nvme-cli,mdadm,curl,ca-certificates,openssl,openssh-client
packages=$packages,procps,docker.io

# Documentation and locales are a third of the tree and nothing reads them
# here; leaving them out makes mke2fs and the guest's page cache smaller.
mmdebstrap --variant=minbase --include="$packages" \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	bookworm "$work/root" </dev/null

root=$work/root

# The stand-in and the release channel the test serves on host loopback are
# reached through QEMU's guestfwd at this address; their certificate carries
# this name.
cat >"$root/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
127.0.1.1	pulse-guest
10.0.2.100	pulse.test
HOSTS
echo pulse-guest >"$root/etc/hostname"

# QEMU user networking: a fixed address is quicker than waiting for DHCP.
cat >"$root/etc/systemd/network/10-qemu.network" <<'NET'
[Match]
Name=en*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
NET
ln -sf /lib/systemd/system/systemd-networkd.service \
	"$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"

# The one job of this guest: mount the test's share, run its script, power
# off whatever happens (the test waits for QEMU to exit).
cat >"$root/etc/systemd/system/pulse-guest-test.service" <<'UNIT'
[Unit]
Description=pulse-agent guest test (vendor-free-tests/systemd.rs)
After=systemd-networkd.service local-fs.target systemd-udev-settle.service
Wants=systemd-networkd.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /host
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /host
ExecStart=/bin/sh /host/start
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/pulse-guest-test.service \
	"$root/etc/systemd/system/multi-user.target.wants/pulse-guest-test.service"

# Timers that would only add noise (and CPU time under TCG) to a short boot.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
	fstrim.timer mdcheck_start.timer mdcheck_continue.timer \
	mdmonitor-oneshot.timer getty@tty1.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# dockerd and containerd start when the scenario asks, not in every boot
# (under TCG they add seconds the other steps do not need).
rm -f "$root"/etc/systemd/system/*.wants/docker.service \
	"$root"/etc/systemd/system/*.wants/docker.socket \
	"$root"/etc/systemd/system/*.wants/containerd.service

# A machine ID made at each boot, as on a freshly installed host.
: >"$root/etc/machine-id"

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"

# The root file system, with room for what the scenario installs (writes
# go to a throwaway overlay at each boot, never into this file).
size=$(du -sm "$root" | cut -f1)
mke2fs -q -t ext4 -L root -d "$root" "$work/root.ext4" "$((size + 768))M"
rm -rf "$root"

mkdir -p "$out"
mv "$work/root.ext4" "$work/vmlinuz" "$work/initrd.img" "$out/"
