//! Networking: `--tunnet` gives the guest an eth0 on a tap, reachable from
//! the host or through a bridge, and the tap is gone when lg is.
//!
//! One test host runs, in order:
//! - `tunnet`: `--tunnet=192.168.19.1` and nothing else; lg's `ip=` brings
//!   the guest up at 192.168.19.2. The guest pings the host, downloads
//!   64 MiB of random bytes the host serves (`LG_NET_DOWN_MD5`), then serves
//!   64 MiB of its own, which the host fetches (`LG_HOST_UP_MD5`): both
//!   checksums must match the sender's. Then the host lists its interfaces.
//! - `killed`: a guest with a tap is killed with SIGKILL; its tap exists
//!   while it runs and is gone after (a non-persistent tap dies with its
//!   last descriptor, lg's).
//! - `bridge`: a bridge `lg0` with 10.0.3.1; a peer guest at 10.0.3.3 idles
//!   on it in the background while the tested guest (10.0.3.2, configured by
//!   its own `ip=`, which lg must leave alone) pings the bridge's address
//!   and the peer.
//! - bad input: a bridge that does not exist, and a user without
//!   CAP_NET_ADMIN; each refused with one sentence, and no tap left.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, Case, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

/// `lg run` booting the kit with lg options `options` and `kernel_args`.
fn with_options(options: &str, kernel_args: &str) -> String {
    boot_kit(256, kernel_args).replacen("run ", &format!("run {options} "), 1)
}

/// The part of the script around the lg runs: the host's web server and
/// data, the background fetch of the guest's data, the kill and the bridge.
fn body() -> String {
    let tunnet = with_options("--tunnet=192.168.19.1", "lgtest=net");
    let killed = with_options("--tunnet=192.168.19.1", "lgtest=netidle");
    let peer = with_options(
        "--tunnet=bridge:lg0",
        "ip=10.0.3.3::10.0.3.1:255.255.255.0::eth0:off lgtest=netidle",
    );
    let bridged = with_options(
        "--tunnet=bridge:lg0",
        "ip=10.0.3.2::10.0.3.1:255.255.255.0::eth0:off lgtest=pingpeers lgpeers=10.0.3.1,10.0.3.3",
    );
    let no_bridge = with_options("--tunnet=bridge:nosuch0", "");
    let not_root = with_options("--tunnet=192.168.19.1", "");
    format!(
        r#"
taps() {{ ls /sys/class/net | grep lgtap | tr '\n' ' '; }}
# Waits up to $2 seconds for $1 to contain LG_NET_IDLE.
wait_idle() {{
	tries=0
	until grep -q LG_NET_IDLE "$1" || [ $tries -ge "$2" ]; do sleep 1; tries=$((tries + 1)); done
}}
mkdir -p /srv/www
dd if=/dev/urandom of=/srv/www/data bs=1048576 count=64 2>/dev/null
echo "LG_HOST_DATA_BYTES=$(wc -c </srv/www/data)"
echo "LG_HOST_DATA_MD5=$(md5sum </srv/www/data | cut -d' ' -f1)"
httpd -p 8080 -h /srv/www
(
	tries=0
	until wget -q -O /tmp/up http://192.168.19.2:8080/up 2>/dev/null || [ $tries -ge 400 ]; do
		sleep 1
		tries=$((tries + 1))
	done
	echo "LG_HOST_UP_BYTES=$(wc -c </tmp/up)"
	echo "LG_HOST_UP_MD5=$(md5sum </tmp/up | cut -d' ' -f1)"
	touch /srv/www/done
) &
fetcher=$!
lg_case_limit=400
lg_case tunnet {tunnet}
lg_case_limit=120
wait $fetcher
echo "LG_TAPS_AFTER_EXIT=[$(taps)]"

lg {killed} </dev/null >/tmp/killed.log 2>&1 &
victim=$!
wait_idle /tmp/killed.log 120
echo "LG_TAPS_WHILE_RUNNING=[$(taps)]"
kill -9 $victim
wait $victim
echo "LG_KILLED_STATUS=$?"
sleep 1
echo "LG_TAPS_AFTER_KILL=[$(taps)]"

ip link add lg0 type bridge
ip addr add 10.0.3.1/24 dev lg0
ip link set lg0 up
lg {peer} </dev/null >/tmp/peer.log 2>&1 &
peer=$!
wait_idle /tmp/peer.log 120
grep LG_NET_IDLE /tmp/peer.log | sed 's/^/LG_PEER /'
lg_case bridge {bridged}
kill $peer
wait $peer

lg_fail no-bridge {no_bridge}
echo 'lguser:x:4321:4321::/:/bin/false' >>/etc/passwd
chmod 0666 /dev/net/tun /dev/kvm
echo "LG_E2E_BEGIN not-root"
su -s /bin/sh lguser -c "lg {not_root}" </dev/null 2>/tmp/not-root.err
status=$?
sed 's/^/LG_E2E_STDERR /' /tmp/not-root.err
printf '\nLG_E2E_END not-root %s\n' "$status"
echo "LG_TAPS_AFTER_FAILURES=[$(taps)]"
"#
    )
}

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        TestHost::new()
            // Two guests, the host's 64 MiB and the copy it fetches.
            .memory_mb(3072)
            .timeout(test_host_limit(6, 2))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body()))
            .map_err(|e| e.to_string())
    })
}

/// The value after `marker` on the first transcript line that has it.
fn value_after<'a>(output: &'a str, marker: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let at = line.find(marker)?;
        line[at + marker.len()..].split_whitespace().next()
    })
}

/// The bracketed list after `marker`, e.g. `LG_TAPS_AFTER_EXIT=[lgtap0 ]`.
fn list_after(output: &str, marker: &str) -> Vec<String> {
    let line = output
        .lines()
        .find(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("the test host never printed {marker}:\n{output}"));
    let inside = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or("", |(inside, _)| inside);
    inside.split_whitespace().map(String::from).collect()
}

const SIXTY_FOUR_MIB: &str = "67108864";

fn tunnet_case() -> Case {
    case(&test_host().output, "tunnet")
}

#[test]
fn a_guest_on_tunnet_pings_the_host_with_no_configuration_of_its_own() {
    let guest = tunnet_case();
    assert!(
        guest.printed("LG_PING=ok"),
        "the guest could not ping 192.168.19.1\n{}",
        guest.describe()
    );
}

#[test]
fn sixty_four_mib_cross_the_tap_intact_both_ways() {
    let output = &test_host().output;
    let guest = tunnet_case();
    // Both ends' data must really be 64 MiB: the checksums of two empty
    // files would match too.
    for marker in ["LG_HOST_DATA_BYTES=", "LG_HOST_UP_BYTES="] {
        assert_eq!(
            value_after(output, marker),
            Some(SIXTY_FOUR_MIB),
            "{marker} on the test host's console\n{}",
            guest.describe()
        );
    }
    let host_data = value_after(output, "LG_HOST_DATA_MD5=").expect("the host's data checksum");
    assert_eq!(
        guest
            .console
            .iter()
            .find_map(|l| value_after(l, "LG_NET_DOWN_MD5=")),
        Some(host_data),
        "what the guest downloaded differs from what the host served\n{}",
        guest.describe()
    );
    let guest_data = guest
        .console
        .iter()
        .find_map(|l| value_after(l, "LG_NET_UP_MD5="))
        .unwrap_or_else(|| panic!("the guest never made its data\n{}", guest.describe()));
    assert_eq!(
        value_after(output, "LG_HOST_UP_MD5="),
        Some(guest_data),
        "what the host fetched from the guest differs from what the guest served\n{}",
        guest.describe()
    );
    assert_eq!(guest.status, Some(0), "{}", guest.describe());
}

#[test]
fn the_tap_is_gone_after_lg_exits_and_after_kill_9() {
    let output = &test_host().output;
    assert_eq!(
        list_after(output, "LG_TAPS_AFTER_EXIT="),
        Vec::<String>::new(),
        "a tap outlived an lg that exited"
    );
    assert_eq!(
        list_after(output, "LG_TAPS_WHILE_RUNNING=").len(),
        1,
        "the killed guest had no tap while it ran:\n{output}"
    );
    assert_eq!(value_after(output, "LG_KILLED_STATUS="), Some("137"));
    assert_eq!(
        list_after(output, "LG_TAPS_AFTER_KILL="),
        Vec::<String>::new(),
        "a tap outlived lg's kill -9"
    );
}

#[test]
fn two_guests_on_a_bridge_reach_the_bridge_and_each_other() {
    let output = &test_host().output;
    assert!(
        output.contains("LG_PEER") && output.contains("LG_NET_IDLE=10.0.3.3"),
        "the peer guest never came up at 10.0.3.3:\n{output}"
    );
    let guest = case(output, "bridge");
    for (peer, what) in [
        ("10.0.3.1", "the bridge's address"),
        ("10.0.3.3", "the peer guest"),
    ] {
        assert!(
            guest.printed(&format!("LG_PING_{peer}=ok")),
            "the bridged guest could not ping {what}\n{}",
            guest.describe()
        );
    }
    assert_eq!(guest.status, Some(0), "{}", guest.describe());
}

#[test]
fn bad_network_input_is_refused_in_one_sentence_and_leaves_no_tap() {
    let output = &test_host().output;
    for (name, culprit) in [("no-bridge", "nosuch0"), ("not-root", "CAP_NET_ADMIN")] {
        let refused = case(output, name);
        assert_eq!(refused.status, Some(1), "{}", refused.describe());
        assert_eq!(refused.stderr.len(), 1, "{}", refused.describe());
        assert!(
            refused.stderr[0].starts_with("lg: ") && refused.stderr[0].contains(culprit),
            "{}",
            refused.describe()
        );
    }
    assert_eq!(
        list_after(output, "LG_TAPS_AFTER_FAILURES="),
        Vec::<String>::new()
    );
}
