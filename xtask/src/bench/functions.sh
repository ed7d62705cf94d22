# The shell functions `cargo xtask bench` runs in the test host (put in
# front of the script xtask/src/bench.rs writes, which fills in the
# placeholders: capital names between two at signs). Each function prints
# one `LG_BENCH` line per sample, or `LG_BENCH fail ...` and the end of
# what the guest printed (`LG_BENCH_LOG`), so a missing figure comes with
# its reason. Every hypervisor runs under `timeout -s KILL`, and every wait
# has a limit: nothing here can hang the test host for ever.

# A hypervisor whose guest has died must not take this script with it.
trap '' PIPE

bench_log() {
	tail -n 12 "$2" | tr -d '\r' | sed "s/^/LG_BENCH_LOG $1 /"
}

# bench_boot VMM RUN CMD...: boot with lgtest=poweroff, each console line
# stamped by ts as it arrives.
bench_boot() {
	vmm=$1 run=$2; shift 2
	{ echo LG_BENCH_START; timeout -s KILL @LIMIT@ "$@" </dev/null; echo "LG_BENCH_EXIT $?"; } 2>&1 |
		ts '%.s' >/tmp/bench.boot
	awk -v vmm="$vmm" -v run="$run" '
		/LG_BENCH_START/ { start = $1 }
		/LG_GUEST_INIT_OK/ && !init { init = $1 }
		/LG_BENCH_EXIT/ { end = $1; status = $3 }
		END {
			if (init) printf "LG_BENCH boot %s %s %.1f %.1f %s\n", vmm, run, (init - start) * 1000, (end - start) * 1000, status
			else printf "LG_BENCH fail %s %s boot: no LG_GUEST_INIT_OK (exit status %s)\n", vmm, run, status
		}' /tmp/bench.boot
	grep -q LG_GUEST_INIT_OK /tmp/bench.boot || bench_log "$vmm" /tmp/bench.boot
	# lg's own start-up line (lg runs with -v here): process start to the
	# boot vCPU's first KVM_RUN, and each step's share.
	startup=$(sed -n 's/.*start-up: \([0-9.]*\) ms.*/\1/p' /tmp/bench.boot | head -n 1)
	[ -n "$startup" ] && echo "LG_BENCH startup $vmm $run $startup"
	sed -n 's/.*\(start-up: .*\)/LG_BENCH_STARTUP '"$vmm $run"' \1/p' /tmp/bench.boot | head -n 1
}

# bench_start CMD...: start the hypervisor in the background. What the
# script writes to fd 3 is the guest's console input (a FIFO); everything it
# prints goes to /tmp/bench.out, its exit status to /tmp/bench.status.
bench_start() {
	rm -f /tmp/bench.in /tmp/bench.out /tmp/bench.status
	mkfifo /tmp/bench.in
	( timeout -s KILL @LIMIT@ "$@" </tmp/bench.in >/tmp/bench.out 2>&1
	  echo $? >/tmp/bench.status ) &
	exec 3>/tmp/bench.in
}

# bench_stop: power the guest off and wait for its hypervisor to end.
bench_stop() {
	echo 'poweroff -f' >&3
	exec 3>&-
	wait
}

# bench_wait PATTERN: until the guest's output has it (or the guest ended,
# or @LIMIT@ s passed).
bench_wait() {
	waited=0
	while ! grep -q "$1" /tmp/bench.out; do
		[ -s /tmp/bench.status ] && return 1
		[ $waited -ge $((@LIMIT@ * 5)) ] && return 1
		sleep 0.2
		waited=$((waited + 1))
	done
}

# bench_mem KIND VMM RUN PROGRAM: PROGRAM's RSS, and the size and resident
# size of its largest anonymous mapping (the guest's RAM), in kB.
bench_mem() {
	pid=$(pidof "$4")
	rss=$(awk '$1 == "Rss:" { print $2 }' /proc/$pid/smaps_rollup)
	guest=$(awk '
		/^[0-9a-f]+-[0-9a-f]+ / { anonymous = (NF == 5); pick = 0; next }
		anonymous && $1 == "Size:" && $2 > size { size = $2; pick = 1; next }
		pick && $1 == "Rss:" { rss = $2; pick = 0 }
		END { print size, rss }' /proc/$pid/smaps)
	echo "LG_BENCH $1 $2 $3 $rss $guest"
}

# bench_seconds MARK: the seconds between the ts-stamped lines MARK_START
# and MARK_END of standard input, if MARK_OK came between them.
bench_seconds() {
	tr -d '\r' | awk -v mark="$1" '
		$2 == mark "_START" { start = $1 }
		$2 == mark "_OK" { ok = 1 }
		$2 == mark "_END" { end = $1 }
		END { if (!ok || end <= start) exit 1; printf "%.6f\n", end - start }'
}

# bench_timed MARK COMMAND: the guest runs COMMAND between two lines its own
# ts stamps (Debian's busybox dd and wget print no time); prints the seconds
# between them, or fails if COMMAND failed or never ended. The typed command
# is echoed too, but never as a line that starts with a stamp.
bench_timed() {
	echo "{ echo $1_START; $2 && echo $1_OK; echo $1_END; } 2>&1 | ts '%.s'" >&3
	bench_wait "^[0-9][0-9.]* $1_END" || return 1
	bench_seconds "$1" </tmp/bench.out
}

# bench_host_timed COMMAND: the same, for a command the test host runs.
bench_host_timed() {
	{ echo LG_HOST_START; sh -c "$1" && echo LG_HOST_OK; echo LG_HOST_END; } 2>&1 |
		ts '%.s' | bench_seconds LG_HOST
}

# bench_session VMM RUN PROGRAM CMD...: boot to the guest's shell with the
# disk, sample memory while it idles, then
# dd the disk (read, then write) and read it at random, and power off.
bench_session() {
	vmm=$1 run=$2 program=$3; shift 3
	bench_start "$@"
	if bench_wait 'guest# '; then
		sleep 1
		bench_mem mem "$vmm" "$run" "$program"
		if seconds=$(bench_timed LG_DDREAD 'dd if=/dev/vda of=/dev/null bs=1M iflag=direct') &&
			grep -q ' @DISK_MB@+0 records out' /tmp/bench.out; then
			echo "LG_BENCH blk $vmm $run $((@DISK_MB@ * 1048576)) $seconds"
		else
			echo "LG_BENCH fail $vmm $run block read: dd in the guest did not read the whole disk"
			bench_log "$vmm" /tmp/bench.out
		fi
		if seconds=$(bench_timed LG_DDWRITE 'dd if=/dev/zero of=/dev/vda bs=1M count=@DISK_MB@ oflag=direct conv=fsync'); then
			echo "LG_BENCH blkwrite $vmm $run $((@DISK_MB@ * 1048576)) $seconds"
		else
			echo "LG_BENCH fail $vmm $run block write: dd in the guest did not write the whole disk"
			bench_log "$vmm" /tmp/bench.out
		fi
		bench_timed LG_RANDREAD 'lg-randread /dev/vda @RANDREAD_S@' >/dev/null
		iops=$(tr -d '\r' </tmp/bench.out | sed -n 's/.*LG_RANDREAD reads=[0-9]* seconds=[0-9.]* iops=\([0-9]*\).*/\1/p' | head -n 1)
		if [ -n "$iops" ]; then
			echo "LG_BENCH randread $vmm $run $iops"
		else
			echo "LG_BENCH fail $vmm $run random read: lg-randread in the guest printed no IOPS"
			bench_log "$vmm" /tmp/bench.out
		fi
	else
		echo "LG_BENCH fail $vmm $run memory: the guest's shell prompt never came"
		bench_log "$vmm" /tmp/bench.out
	fi
	bench_stop
}

# The test host's own read of the image, for scale.
bench_hostread() {
	{ echo LG_DD_START; dd if=/tmp/bench.img of=/dev/null bs=1M 2>/dev/null; echo LG_DD_END; } |
		ts '%.s' | awk -v run="$1" '
		$2 == "LG_DD_START" { start = $1 }
		$2 == "LG_DD_END" { end = $1 }
		END { print "LG_BENCH hostread", run, @DISK_MB@ * 1048576, end - start }'
}

# bench_net VMM RUN CMD...: boot to the guest's shell with a network card
# whose host end is @HOST_IP@, then time TCP both ways with busybox: the
# guest fetches the test host's file (host to guest), the test host fetches
# the guest's (guest to host), each @NET_MB@ MiB, with wget -O /dev/null
# from httpd.
bench_net() {
	vmm=$1 run=$2; shift 2
	bench_start "$@"
	if [ "$vmm" != lg ]; then
		# QEMU makes its tap (qtap0) itself; its host end needs the
		# address lg gives its own tap.
		waited=0
		until [ -e /sys/class/net/qtap0 ] || [ -s /tmp/bench.status ] || [ $waited -ge 300 ]; do
			sleep 0.2
			waited=$((waited + 1))
		done
		ip addr add @HOST_IP@/24 dev qtap0 && ip link set qtap0 up
	fi
	if bench_wait 'guest# '; then
		echo "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/up bs=1M count=@NET_MB@ 2>/dev/null && httpd -p 8080 -h /tmp/www && ping -c 1 -w 30 @HOST_IP@ >/dev/null; echo LG_NET_READY=\$?" >&3
		if bench_wait 'LG_NET_READY=[0-9]' && grep -q 'LG_NET_READY=0' /tmp/bench.out; then
			if seconds=$(bench_timed LG_NETDOWN 'timeout 120 wget -q -O /dev/null http://@HOST_IP@:8080/data'); then
				echo "LG_BENCH netdown $vmm $run $((@NET_MB@ * 1048576)) $seconds"
			else
				echo "LG_BENCH fail $vmm $run net: the guest could not fetch the host's @NET_MB@ MiB"
				bench_log "$vmm" /tmp/bench.out
			fi
			if seconds=$(bench_host_timed 'timeout 120 wget -q -O /dev/null http://@GUEST_IP@:8080/up'); then
				echo "LG_BENCH netup $vmm $run $((@NET_MB@ * 1048576)) $seconds"
			else
				echo "LG_BENCH fail $vmm $run net: the test host could not fetch the guest's @NET_MB@ MiB"
			fi
		else
			echo "LG_BENCH fail $vmm $run net: the guest's network never came up (no ping to @HOST_IP@)"
			bench_log "$vmm" /tmp/bench.out
		fi
	else
		echo "LG_BENCH fail $vmm $run net: the guest's shell prompt never came"
		bench_log "$vmm" /tmp/bench.out
	fi
	bench_stop
}

# bench_lazy CMD...: lg with more guest RAM than the test host has; at the
# guest's shell, lg's memory, the guest's MemTotal, then lg's memory again
# once the guest has filled @TOUCH_MB@ MiB of its tmpfs.
bench_lazy() {
	bench_start "$@"
	if bench_wait 'guest# '; then
		sleep 1
		bench_mem lazymem lg 1 lg
		echo 'grep MemTotal /proc/meminfo' >&3
		bench_wait 'MemTotal: *[0-9]'
		kb=$(tr -d '\r' </tmp/bench.out | sed -n 's/^MemTotal: *\([0-9]*\) kB.*/\1/p' | head -n 1)
		echo "LG_BENCH lazymemtotal lg 1 $kb"
		if bench_timed LG_FILL 'dd if=/dev/zero of=/tmp/fill bs=1M count=@TOUCH_MB@ 2>/dev/null' >/dev/null; then
			sleep 1
			bench_mem lazytouched lg 1 lg
		else
			echo "LG_BENCH fail lg 1 lazy RAM: the guest could not fill @TOUCH_MB@ MiB"
			bench_log lg /tmp/bench.out
		fi
	else
		echo "LG_BENCH fail lg 1 lazy RAM: the guest's shell prompt never came"
		bench_log lg /tmp/bench.out
	fi
	bench_stop
}

# bench_many MODE GAP CMD...: @MANY@ copies of CMD (lgtest=poweroff),
# started GAP seconds apart (0: all at once), each one's console stamped by
# ts; once all have ended, one line per guest with its start, /init and exit
# stamps and its exit status.
bench_many() {
	mode=$1 gap=$2; shift 2
	rm -f /tmp/many.*
	i=1
	while [ $i -le @MANY@ ]; do
		{ echo LG_BENCH_START; timeout -s KILL @MANY_LIMIT@ "$@" </dev/null; echo "LG_BENCH_EXIT $?"; } 2>&1 |
			ts '%.s' >/tmp/many.$i &
		[ "$gap" = 0 ] || sleep "$gap"
		i=$((i + 1))
	done
	wait
	i=1
	while [ $i -le @MANY@ ]; do
		awk -v mode="$mode" -v guest=$i '
			/LG_BENCH_START/ { start = $1 }
			/LG_GUEST_INIT_OK/ && !init { init = $1 }
			/LG_BENCH_EXIT/ { end = $1; status = $3 }
			END { printf "LG_BENCH manyguest %s %s %.6f %.6f %.6f %s\n", mode, guest, start, init, end, status }' /tmp/many.$i
		grep -q LG_GUEST_INIT_OK /tmp/many.$i || bench_log "$mode-$i" /tmp/many.$i
		i=$((i + 1))
	done
}
