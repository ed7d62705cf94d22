#!/bin/sh
# The nested test host's /init (packed by xtask/src/testhost/base.rs).
#
# The test host is a Debian cloud kernel under QEMU TCG with AMD SVM
# emulated; once kvm-amd is loaded its /dev/kvm is a real KVM, where lg can
# boot stock kernels, which the development machines' kvm_pvm cannot. This
# script prepares that, then runs the one command the run was made for
# (/testcmd, added per run) and reports on the serial console in lines xtask
# reads back:
#   LG_TESTHOST_NO_KVM          kvm-amd did not give us /dev/kvm (why follows)
#   LG_TESTHOST_READY           /dev/kvm is there, /testcmd starts now
#   LG_TESTHOST_STATUS=<n>      /testcmd's exit status
# Without /testcmd it is an interactive shell instead. PID 1 must never
# exit, so every path ends in poweroff -f (QEMU runs with -no-reboot).

/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
hostname lg-testhost
ip link set lo up 2>/dev/null

# irqbypass kvm kvm-amd give /dev/kvm; tun, bridge and loop serve tests of
# networking and disks. Errors are kept to explain a missing /dev/kvm.
while read -r module; do
	insmod "/lib/modules/$module.ko" 2>>/tmp/insmod.log
done </etc/lg-modules

if [ ! -c /dev/kvm ]; then
	echo LG_TESTHOST_NO_KVM
	cat /tmp/insmod.log
	grep -o -w -m1 -e svm -e vmx /proc/cpuinfo >/dev/null ||
		echo "the test host's CPU has no svm flag: QEMU must run with -cpu max"
	poweroff -f
fi

cd /root
if [ -f /testcmd ]; then
	echo LG_TESTHOST_READY
	# cttyhack makes the console (ttyS0) the command's controlling terminal,
	# so an interactive `lg run` gets a real terminal to put in raw mode.
	# The command's session ends with it, and the kernel then hangs up its
	# terminal, discarding output still waiting in the UART's buffer (under
	# load, the command's last lines). `stty` sets the terminal with
	# TCSADRAIN, which waits for that output to be sent first.
	setsid cttyhack sh -c 'sh /testcmd; status=$?; stty sane 2>/dev/null; exit $status'
	status=$?
	# On a line of its own even if the command's output did not end in one.
	printf '\nLG_TESTHOST_STATUS=%s\n' "$status"
else
	if [ -x /bin/lg ]; then
		echo "lg test host: /dev/kvm works here; try: lg run 256 /kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0"
	else
		echo "lg test host: /dev/kvm works here, but this test host has no /bin/lg (target/release/lg was not built)"
	fi
	echo "(\`poweroff -f\` leaves the test host)"
	PS1='testhost# ' setsid cttyhack sh
fi
poweroff -f
