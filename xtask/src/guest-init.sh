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
#   anything else      a busybox shell on the console; leaving it powers off
# PID 1 must never exit (the kernel would panic), so every path ends in poweroff -f.

/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

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
esac

echo "lg guest: busybox shell on the console; \`poweroff -f\` to leave"
cd /root
# cttyhack opens the real console device (ttyS0) as the shell's controlling
# terminal, which /dev/console cannot be: that is what makes Ctrl-C and job
# control work.
PS1='guest# ' setsid cttyhack sh
poweroff -f
