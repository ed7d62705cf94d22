#!/bin/sh
# The guest kit's /init: PID 1 of every guest lg boots in the tests and in
# `cargo xtask run` (packed by xtask/src/guest.rs).
#
# It reports to whoever watches the serial console, in lines a test can match:
# LG_GUEST_INIT_OK as soon as userspace runs, then it does what the kernel
# command line's lgtest=... asks (the kernel hands unknown key=value words to
# init as environment variables):
#   lgtest=poweroff    power off at once (poweroff -f)
#   lgtest=reboot      reset at once (reboot -f)
#   lgtest=meminfo     print LG_MEMTOTAL_KB=<MemTotal in kB>, power off
#   lgtest=nproc       print LG_NPROC=<CPUs online>, power off
#   lgtest=lspci       print each PCI device as LG_PCI <slot> <class> <vendor>:<device>, power off
#   lgtest=panic       panic the kernel (echo c > /proc/sysrq-trigger)
#   lgtest=rng         print LG_RNG_CURRENT=<hw_random driver> and LG_RNG_BYTES=<16 bytes of /dev/hwrng in hex>, power off
#   lgtest=twodisks    print LG_DISKS=<the vd* disks> and LG_VDB_SECTORS=<size of vdb>, power off
#   lgtest=syncloop    mount /dev/vda, print LG_FOUND=<its counter>, then count up, syncing each
#                      value and printing LG_SYNCED=<n>, until lg is killed
#   lgtest=blockro     print LG_VDA_RO=<0|1> and whether a write to /dev/vda was refused, power off
#   lgtest=shutdown    power off as a distribution would, through init (poweroff, no -f)
#   lgtest=restart     reboot as a distribution would, through init (reboot, no -f)
#   root=/dev/vda      (with no lgtest, or lgtest=rootfs) switch to that disk's /sbin/init
#   anything else      a busybox shell on the console; leaving it powers off
# When the kernel's console is hvc0 (console=hvc0), init also writes
# LG_HVC0_OK straight to /dev/hvc0 once the virtio console is up, and runs
# the shell there.
# PID 1 must never exit (the kernel would panic), so every path ends in poweroff -f.
# Like a real init, it takes busybox's poweroff (SIGUSR2), halt (SIGUSR1) and
# reboot (SIGTERM) requests.

/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

trap 'poweroff -f' USR1 USR2
trap 'reboot -f' TERM

echo LG_GUEST_INIT_OK

# Quietly: a module that is missing or fails only means its device is absent,
# which is the business of the test that needs the device.
while read -r module; do
	insmod "/lib/modules/$module.ko" 2>/dev/null
done </etc/lg-modules

# A result is also written to /dev/kmsg: printk reaches the serial console
# synchronously, while the tty may still hold our line in its buffer when
# poweroff -f stops the machine a moment later. Tests take the first match.
report() {
	echo "$1"
	echo "<1>$1" >/dev/kmsg 2>/dev/null
}

# console=hvc0: the virtio console exists only now that its module is
# loaded, so init moves its own input and output there.
if grep -q 'console=hvc0' /proc/cmdline && [ -c /dev/hvc0 ]; then
	exec </dev/hvc0 >/dev/hvc0 2>&1
	echo LG_HVC0_OK
fi

# root=/dev/...: mount it and hand over to its init, as a distribution's
# initramfs would (lgtest values handled here keep the initramfs instead).
root=
for word in $(cat /proc/cmdline); do
	case "$word" in
	root=*) root=${word#root=} ;;
	esac
done
if [ -n "$root" ] && { [ -z "$lgtest" ] || [ "$lgtest" = rootfs ]; }; then
	mkdir -p /newroot
	if mount -o rw "$root" /newroot; then
		mount --move /dev /newroot/dev 2>/dev/null
		umount /proc /sys
		exec switch_root /newroot /sbin/init
	fi
	echo "lg guest: cannot mount root=$root; staying in the initramfs"
fi

case "$lgtest" in
poweroff)
	poweroff -f
	;;
reboot)
	reboot -f
	;;
meminfo)
	report "LG_MEMTOTAL_KB=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)"
	poweroff -f
	;;
nproc)
	report "LG_NPROC=$(nproc)"
	poweroff -f
	;;
lspci)
	for dev in /sys/bus/pci/devices/*; do
		report "LG_PCI ${dev##*/} $(cat "$dev/class") $(cat "$dev/vendor"):$(cat "$dev/device")"
	done
	command -v lspci >/dev/null && lspci 2>&1 | sed "s/^/LG_LSPCI /"
	poweroff -f
	;;
panic)
	echo c >/proc/sysrq-trigger
	;;
rng)
	report "LG_RNG_CURRENT=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
	report "LG_RNG_BYTES=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
	poweroff -f
	;;
twodisks)
	report "LG_DISKS=$(ls /sys/block | grep '^vd' | tr '\n' ' ')"
	report "LG_VDB_SECTORS=$(cat /sys/block/vdb/size 2>/dev/null)"
	poweroff -f
	;;
syncloop)
	mount /dev/vda /mnt || { report LG_MOUNT_FAILED; poweroff -f; }
	n=$(cat /mnt/lg-counter 2>/dev/null || echo 0)
	report "LG_FOUND=$n"
	# Each count is written to a new file, synced, renamed over the old one
	# and synced again: whenever lg is killed, the counter on the disk is
	# the last one reported or a later one.
	while true; do
		n=$((n + 1))
		echo "$n" >/mnt/lg-counter.new
		sync
		mv /mnt/lg-counter.new /mnt/lg-counter
		sync
		report "LG_SYNCED=$n"
	done
	;;
blockro)
	report "LG_VDA_RO=$(cat /sys/block/vda/ro)"
	if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; then
		report LG_RO_WRITE=accepted
	else
		report LG_RO_WRITE=refused
	fi
	poweroff -f
	;;
shutdown)
	poweroff
	sleep 60 &
	wait
	;;
restart)
	reboot
	sleep 60 &
	wait
	;;
esac

echo "lg guest: busybox shell on the console; \`poweroff -f\` to leave"
cd /root
# cttyhack opens the real console device (ttyS0) as the shell's controlling
# terminal, which /dev/console cannot be: that is what makes Ctrl-C and job
# control work.
# In the background with `wait`, so the traps above run as soon as a
# request arrives (a shell defers traps while a foreground child runs).
PS1='guest# ' setsid cttyhack sh &
wait
poweroff -f
