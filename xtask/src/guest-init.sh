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
#   lgtest=clock       print LG_RTC=<rtc0's name> <its seconds since 1970> (LG_RTC=none without
#                      /dev/rtc0) and LG_DATE=<the system clock's seconds>, power off
#   lgtest=twodisks    print LG_DISKS=<the vd* disks> and LG_VDB_SECTORS=<size of vdb>, power off
#   lgtest=syncloop    mount /dev/vda, print LG_FOUND=<its counter>, then count up, syncing each
#                      value and printing LG_SYNCED=<n>, until lg is killed
#   lgtest=blockro     print LG_VDA_RO=<0|1> and whether a write to /dev/vda was refused, power off
#   lgtest=shutdown    power off as a distribution would, through init (poweroff, no -f)
#   lgtest=restart     reboot as a distribution would, through init (reboot, no -f)
#   lgtest=net         with the network from ip=: print LG_PING=ok|fail for its gateway, fetch
#                      http://GATEWAY:8080/data and print LG_NET_DOWN_MD5=<md5>, then serve 64 MiB
#                      of random bytes as http://<own address>:8080/up (LG_NET_UP_MD5=<md5>,
#                      LG_NET_SERVING) until http://GATEWAY:8080/done exists, power off
#   lgtest=pingpeers   ping each address in lgpeers=A,B,... (retrying for up to 60 s), print
#                      LG_PING_<address>=ok|fail for each, power off
#   lgtest=netidle     print LG_NET_IDLE=<eth0's address> and wait to be killed
#   lgtest=idle        print LG_IDLE and wait (for the power button, a signal, or lg's end)
#   lgbutton=ignore    (with any lgtest) do not power off when the ACPI power button is pressed
#   lgtest=ticker      print LG_TICK=<n> every second, for ever (until the power button or a signal)
#   lgtest=pattern     run /bin/lg-pattern (a page of a known pattern at a fixed address; it
#                      prints LG_PATTERN_READY va=...) and wait, as idle
#   lgtest=gdbsync     print LG_KSYM_SYNC=<address of __x64_sys_sync>, wait for a line on the
#                      console, run sync, print LG_SYNC_DONE, power off
#   lgtest=hostile     run /bin/lg-hostile on the devices in lghostile=A,B,... (default blk,rng,console:
#                      it takes each from its driver and attacks it, printing LG_HOSTILE lines and
#                      LG_HOSTILE_DONE), print LG_HOSTILE_STATUS=<its exit status>, give the devices back
#                      to virtio-pci, then print LG_HOSTILE_RNG_AFTER=<16 bytes of /dev/hwrng in hex>,
#                      LG_HOSTILE_DISK_AFTER=<the first 8 bytes of /dev/vda>, when net was attacked
#                      LG_HOSTILE_NET_AFTER=ok|fail (its gateway from ip= answers a ping), write
#                      LG_HOSTILE_VIA_HVC0 to /dev/hvc0, power off
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

# The ACPI power button (lg stop NAME, or a signal to lg): as
# systemd-logind or acpid would, init powers the guest off when it is
# pressed. The button is the input device named "Power Button"; one event
# from it is enough. lgbutton=ignore plays a guest that ignores it.
for event in /sys/class/input/event*; do
	[ "$lgbutton" = ignore ] && break
	[ "$(cat "$event/device/name" 2>/dev/null)" = "Power Button" ] || continue
	(
		dd if="/dev/input/${event##*/}" of=/dev/null bs=24 count=1 2>/dev/null &&
			report LG_POWER_BUTTON && kill -USR2 1
	) &
done

# ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF (the kernel's
# syntax, which lg adds for --tunnet=IP): the kernel configures it itself
# only when its network driver is built in, before any module could load,
# so with virtio_net as a module init applies it now, as Debian's
# initramfs-tools does. `ip=off`, `ip=dhcp` and friends are left alone.
ip link set lo up 2>/dev/null
gateway=
for word in $(cat /proc/cmdline); do
	case "$word" in
	ip=*:*)
		fields=${word#ip=}
		client=${fields%%:*}
		gateway=$(echo "$fields" | cut -d: -f3)
		netmask=$(echo "$fields" | cut -d: -f4)
		device=$(echo "$fields" | cut -d: -f6)
		device=${device:-eth0}
		if [ -n "$client" ] && ifconfig "$device" "$client" netmask "${netmask:-255.255.255.0}" up; then
			[ -n "$gateway" ] && route add default gw "$gateway" 2>/dev/null
		else
			echo "lg guest: cannot configure $device from $word"
		fi
		;;
	esac
done

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

# Whether ping reaches $1 within about a minute. Not one ping: a host that
# tried to reach the guest while it booted (ARP for an address nobody had
# yet) can take some seconds to answer it.
reach() {
	tries=0
	while [ $tries -lt 30 ]; do
		ping -c 1 -w 2 "$1" >/dev/null 2>&1 && return 0
		tries=$((tries + 1))
	done
	return 1
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
clock)
	if [ -r /sys/class/rtc/rtc0/since_epoch ]; then
		report "LG_RTC=$(cat /sys/class/rtc/rtc0/name) $(cat /sys/class/rtc/rtc0/since_epoch)"
	else
		report "LG_RTC=none"
	fi
	report "LG_DATE=$(date +%s)"
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
net)
	if reach "$gateway"; then report LG_PING=ok; else report LG_PING=fail; fi
	report "LG_NET_DOWN_MD5=$(wget -q -O - "http://$gateway:8080/data" | md5sum | cut -d' ' -f1)"
	mkdir -p /tmp/www
	dd if=/dev/urandom of=/tmp/up.part bs=1048576 count=64 2>/dev/null
	report "LG_NET_UP_MD5=$(md5sum </tmp/up.part | cut -d' ' -f1)"
	mv /tmp/up.part /tmp/www/up
	httpd -p 8080 -h /tmp/www
	report LG_NET_SERVING
	tries=0
	until wget -q -O /dev/null "http://$gateway:8080/done" 2>/dev/null || [ $tries -ge 300 ]; do
		sleep 1
		tries=$((tries + 1))
	done
	poweroff -f
	;;
pingpeers)
	for peer in $(echo "$lgpeers" | tr ',' ' '); do
		if reach "$peer"; then report "LG_PING_$peer=ok"; else report "LG_PING_$peer=fail"; fi
	done
	poweroff -f
	;;
netidle)
	report "LG_NET_IDLE=$(ifconfig eth0 2>/dev/null | sed -n 's/.*inet addr:\([0-9.]*\).*/\1/p')"
	sleep 100000 &
	wait
	;;
idle)
	report LG_IDLE
	sleep 100000 &
	wait
	;;
ticker)
	n=0
	while true; do
		n=$((n + 1))
		echo "LG_TICK=$n"
		# `wait $!`, not `wait`: the power-button watcher is a child too.
		sleep 1 &
		wait $!
	done
	;;
pattern)
	lg-pattern &
	sleep 100000 &
	wait
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
hostile)
	# A root user turned against lg: lg-hostile attacks each device. Then
	# the devices go back to their drivers, and each must work again: lg
	# kept the guest running and a reset healed the device.
	devices=$(echo "${lghostile:-blk,rng,console}" | tr ',' ' ')
	# The kernel's messages stay off the console while lg-hostile reports,
	# one line per attack: a message printed while a report line is on its
	# way lands inside it (ip='s late "eth0: link becomes ready" did). They
	# are kept in the ring buffer and printed once lg-hostile is done.
	console_level=$(cut -f1 /proc/sys/kernel/printk)
	dmesg -c >/dev/null
	dmesg -n 1
	{
		lg-hostile $devices
		echo "LG_HOSTILE_STATUS=$?"
	} 2>&1 | tee /tmp/hostile.out
	dmesg -n "$console_level"
	dmesg -c
	for addr in $(sed -n 's/^LG_HOSTILE_DEVICE [^ ]* //p' /tmp/hostile.out); do
		echo "$addr" >/sys/bus/pci/drivers/virtio-pci/bind
	done
	# The network card, when attacked, comes back as a new eth0 with no
	# address: it waits for that too, and gets ip='s address again.
	case " $devices " in
	*" net "*) net=/sys/class/net/$device ;;
	*) net=/ ;;
	esac
	tries=0
	until { [ -c /dev/hwrng ] && [ -b /dev/vda ] && [ -c /dev/hvc0 ] && [ -e $net ]; } || [ $tries -ge 10 ]; do
		sleep 1
		tries=$((tries + 1))
	done
	# timeout: a device that never answers must not hang the guest.
	report "LG_HOSTILE_RNG_AFTER=$(timeout 10 dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
	report "LG_HOSTILE_DISK_AFTER=$(timeout 10 dd if=/dev/vda bs=8 count=1 2>/dev/null)"
	if [ $net != / ]; then
		ifconfig "$device" "$client" netmask "${netmask:-255.255.255.0}" up
		if reach "$gateway"; then report LG_HOSTILE_NET_AFTER=ok; else report LG_HOSTILE_NET_AFTER=fail; fi
	fi
	echo LG_HOSTILE_VIA_HVC0 >/dev/hvc0
	poweroff -f
	;;
gdbsync)
	# For the gdb stub's test: where the sync system call is (KASLR moves
	# it each boot; root reads the real address), then one sync once the
	# test says go on the console (gdb has its breakpoint by then).
	report "LG_KSYM_SYNC=$(sed -n 's/^\([0-9a-f]*\) [Tt] __x64_sys_sync$/\1/p' /proc/kallsyms | head -n 1)"
	read -r go
	sync
	report LG_SYNC_DONE
	poweroff -f
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
