#!/bin/sh
# /sbin/init of the guest kit's root filesystem image (target/guest/rootfs.ext4),
# which the kit's initramfs hands over to with switch_root when the kernel
# command line has root=/dev/vda. Built by xtask/src/rootfs.rs.
#
# A kernel with the drivers built in (`cargo xtask kernel`) starts it with no
# initramfs at all: the kernel mounts the disk as / and devtmpfs on /dev
# (CONFIG_DEVTMPFS_MOUNT), and there are no modules to load, so the mounts
# below (and the remount read-write) are all it takes either way.
#
# It prints LG_ROOTFS_OK, so a test sees the guest running from the disk, and
# LG_ROOTFS_CONSOLE=<the kernel's consoles> (hvc0 with console=hvc0), then:
#   lgtest=rootfs   write /var/lg-boots (a count of boots from this disk), print
#                   LG_ROOTFS_BOOTS=<n>, sync, power off
#   otherwise       a busybox shell on the console (the last console=, which
#                   cttyhack finds), leaving it powers off

export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw / 2>/dev/null
trap 'poweroff -f' USR1 USR2
trap 'reboot -f' TERM

echo LG_ROOTFS_OK
echo "LG_ROOTFS_CONSOLE=$(cat /sys/class/tty/console/active)"

case "$lgtest" in
rootfs)
	boots=$(( $(cat /var/lg-boots 2>/dev/null || echo 0) + 1 ))
	echo "$boots" >/var/lg-boots
	sync
	echo "LG_ROOTFS_BOOTS=$boots"
	echo "<1>LG_ROOTFS_BOOTS=$boots" >/dev/kmsg
	poweroff -f
	;;
esac

echo "lg guest: busybox shell on /dev/vda's root filesystem; \`poweroff -f\` to leave"
cd /root
PS1='rootfs# ' setsid cttyhack sh &
wait
poweroff -f
