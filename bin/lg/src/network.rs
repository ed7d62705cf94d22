//! `--tunnet`: the guest's network cards, each a tap device on the host.
//!
//! lguest's two forms are kept. `--tunnet=192.168.19.1` makes a tap whose
//! host end has that address (a /24), so host and guest form a two-machine
//! network; lg then adds `ip=192.168.19.2::192.168.19.1:255.255.255.0::eth0:off`
//! to the kernel's command line, so the guest comes up at the next address
//! with the host as its gateway and nobody has to configure it. Giving any
//! `ip=` yourself (`ip=off` to have none, `ip=dhcp`, your own address) turns
//! that off. `--tunnet=bridge:br0` adds the tap to an existing bridge, and
//! the guest is on whatever network that bridge is.
//!
//! The tap itself (the `tap` crate) is not persistent: it vanishes when lg's
//! descriptor closes, so however lg ends, no interface is left behind. The
//! guest's MAC address, unless given, is derived from what makes the guest
//! itself (its kernel's path, its command line and its disks) and the
//! card's position: the same guest gets the same MAC each time, so the
//! host's ARP caches and DHCP leases keep working across reboots, while two
//! different guests on one bridge do not collide. (Two guests started with
//! the very same command line would: give one of them a MAC.)

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use tap::Tap;

use crate::cli::{Mac, Tunnet};

/// The kernel's `ip=` for the first `--tunnet=IP`, unless the user's words
/// already configure the network (`ip=` or its old name `nfsaddrs=`).
pub(crate) fn ip_autoconfig(words: &[String], tunnets: &[Tunnet]) -> Option<String> {
    let configured = words
        .iter()
        .any(|w| w.starts_with("ip=") || w.starts_with("nfsaddrs="));
    if configured {
        return None;
    }
    let host = tunnets.iter().find_map(|t| match t {
        Tunnet::Address { address, .. } => Some(*address),
        Tunnet::Bridge { .. } => None,
    })?;
    let guest = guest_address(host);
    Some(format!("ip={guest}::{host}:255.255.255.0::eth0:off"))
}

/// The guest's address beside the host's `host` in its /24: the next one,
/// wrapping from .254 to .1, so it is never the network's or the broadcast
/// address.
pub(crate) fn guest_address(host: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = host.octets();
    let next = if d >= 254 { 1 } else { d + 1 };
    Ipv4Addr::new(a, b, c, next)
}

/// A MAC for card `index` of the guest `identity` (see [`guest_identity`]):
/// locally administered (02:...), unicast, and the same every time for the
/// same guest.
pub(crate) fn default_mac(identity: &str, index: usize) -> Mac {
    // FNV-1a: stable across lg versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.bytes().chain((index as u64).to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let h = hash.to_le_bytes();
    [0x02, 0x4c, 0x47, h[0], h[1], h[2]]
}

/// What makes a guest itself, for its MACs: the kernel's and disks' full
/// paths and the kernel's command line.
pub(crate) fn guest_identity(kernel: &str, disks: &[String], cmdline: &str) -> String {
    let full = |path: &str| {
        std::fs::canonicalize(path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| path.to_string())
    };
    let mut identity = full(kernel);
    for disk in disks {
        identity.push('\n');
        identity.push_str(&full(disk.split(',').next().unwrap_or(disk)));
    }
    identity.push('\n');
    identity.push_str(cmdline);
    identity
}

/// Refuses a `--tunnet=bridge:NAME` whose bridge does not exist, before
/// anything is created.
pub(crate) fn check_bridges(tunnets: &[Tunnet]) -> Result<(), String> {
    for tunnet in tunnets {
        if let Tunnet::Bridge { name, .. } = tunnet {
            if !tap::is_bridge(name) {
                return Err(format!(
                    "--tunnet=bridge:{name}: {}",
                    tap::TapError::NoSuchBridge(name.clone())
                ));
            }
        }
    }
    Ok(())
}

/// One network card: its tap, and the MAC the guest will see.
pub(crate) struct Nic {
    pub tap: Arc<TapBackend>,
    pub mac: Mac,
}

/// Creates and sets up a tap for each `--tunnet`, in order. On an error the
/// taps made so far are dropped, and with them their interfaces.
pub(crate) fn open_nics(tunnets: &[Tunnet], identity: &str) -> Result<Vec<Nic>, String> {
    let mut nics = Vec::new();
    for (index, tunnet) in tunnets.iter().enumerate() {
        let option = match tunnet {
            Tunnet::Address { address, .. } => format!("--tunnet={address}"),
            Tunnet::Bridge { name, .. } => format!("--tunnet=bridge:{name}"),
        };
        let tap = Tap::create().map_err(|e| format!("{option}: {e}"))?;
        let (setup, mac) = match tunnet {
            Tunnet::Address { address, mac } => (tap.set_address(*address), *mac),
            Tunnet::Bridge { name, mac } => (tap.join_bridge(name), *mac),
        };
        setup.map_err(|e| format!("{option}: {e}"))?;
        let mac = mac.unwrap_or_else(|| default_mac(identity, index));
        log::info!(
            "network card {index}: {} for {option}, guest MAC {}",
            tap.name(),
            format_mac(&mac)
        );
        nics.push(Nic {
            tap: Arc::new(TapBackend(tap)),
            mac,
        });
    }
    Ok(nics)
}

pub(crate) fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A tap as the virtio-net device's packet pipe.
pub(crate) struct TapBackend(pub Tap);

impl virtio_net::NetBackend for TapBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn set_offloads(&self, tun_flags: u32) -> std::io::Result<()> {
        self.0.set_offloads(tun_flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn address(text: &str) -> Tunnet {
        Tunnet::parse(text).unwrap()
    }

    #[test]
    fn the_first_addressed_tap_gets_the_guest_an_ip_argument() {
        assert_eq!(
            ip_autoconfig(&words("quiet"), &[address("192.168.19.1")]).as_deref(),
            Some("ip=192.168.19.2::192.168.19.1:255.255.255.0::eth0:off")
        );
        assert_eq!(
            ip_autoconfig(
                &[],
                &[
                    address("bridge:br0"),
                    address("10.1.2.254"),
                    address("10.9.9.9")
                ]
            )
            .as_deref(),
            Some("ip=10.1.2.1::10.1.2.254:255.255.255.0::eth0:off")
        );
    }

    #[test]
    fn the_users_own_ip_argument_or_a_bridge_means_none() {
        assert_eq!(
            ip_autoconfig(&words("ip=off"), &[address("192.168.19.1")]),
            None
        );
        assert_eq!(
            ip_autoconfig(&words("ip=dhcp"), &[address("192.168.19.1")]),
            None
        );
        assert_eq!(ip_autoconfig(&[], &[address("bridge:br0")]), None);
        assert_eq!(ip_autoconfig(&[], &[]), None);
    }

    #[test]
    fn default_macs_are_local_unicast_stable_and_distinct() {
        let guest = guest_identity("/no/such/bzImage", &[], "ip=10.0.0.2::10.0.0.1 quiet");
        let twin = guest_identity("/no/such/bzImage", &[], "ip=10.0.0.3::10.0.0.1 quiet");
        let first = default_mac(&guest, 0);
        assert_eq!(first, default_mac(&guest, 0));
        assert_ne!(first, default_mac(&guest, 1));
        assert_ne!(first, default_mac(&twin, 0));
        assert_eq!(first[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(
            format_mac(&[0x02, 0x4c, 0x47, 0, 0xab, 1]),
            "02:4c:47:00:ab:01"
        );
    }

    #[test]
    fn a_missing_bridge_is_named() {
        let error = check_bridges(&[address("bridge:nosuchbr9")]).unwrap_err();
        assert!(error.starts_with("--tunnet=bridge:nosuchbr9: there is no bridge named nosuchbr9"));
        assert_eq!(check_bridges(&[address("10.0.0.1")]), Ok(()));
    }
}
