#!/bin/sh
# /sbin/init of the guest kit's root filesystem image (target/guest/rootfs.ext4),
# which the kit's initramfs hands over to with switch_root when the kernel
# command line has root=/dev/vda. Built by xtask/src/rootfs.rs.
#
# It prints LG_ROOTFS_OK, so a test sees the guest running from the disk, then:
#   lgtest=rootfs   write /var/lg-boots (a count of boots from this disk), print
#                   LG_ROOTFS_BOOTS=<n>, sync, power off
#   otherwise       a busybox shell on the console; leaving it powers off

export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw / 2>/dev/null
trap 'poweroff -f' USR1 USR2
trap 'reboot -f' TERM

echo LG_ROOTFS_OK

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
