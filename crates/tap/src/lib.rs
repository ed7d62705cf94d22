//! # tap: the host side of a guest's network card
//!
//! lguest's `--tunnet` gave the guest a network card whose other end is a
//! *tap device* on the host: a network interface (`lgtap0`) whose packets,
//! instead of going to a wire, are read and written by lg through a file
//! descriptor. The host then routes to the guest like to any neighbour
//! (`--tunnet=192.168.19.1` gives the tap that address), or the tap joins an
//! existing bridge (`--tunnet=bridge:br0`) and the guest sits on that LAN.
//!
//! Three choices matter for speed and for tidiness:
//!
//! - The tap is opened with `IFF_VNET_HDR` and a 12-byte header
//!   (`TUNSETVNETHDRSZ`), so every packet carries the same
//!   `virtio_net_hdr_v1` the guest's driver puts in front of it. lg passes
//!   packets through without translating, and the checksum and segmentation
//!   offloads the guest negotiates are handed to the host kernel with
//!   [`Tap::set_offloads`]: a guest sends 64 KiB TCP segments and the host
//!   never computes a checksum it does not need.
//! - The tap is not persistent. The kernel deletes it when its last file
//!   descriptor closes, which is when lg ends, however it ends (`kill -9`
//!   included): nothing is left behind for anyone to clean up.
//! - The descriptor is close-on-exec and non-blocking.
//!
//! Why not the `tun-tap` crate, which the project first planned to use: it
//! creates the device with fixed flags (`IFF_TAP | IFF_NO_PI`), and the flags
//! of an attached tap cannot be changed afterwards (a second `TUNSETIFF`
//! fails with `EEXIST`), so a tap made by it can never carry the virtio-net
//! header that the offloads need. Creating it here takes one ioctl.
//!
//! Addressing and bridging use the classic `SIOC*` ioctls on a datagram
//! socket, the way `ifconfig` and `brctl` do: no netlink library needed.

use std::ffi::CStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The name the kernel completes (`lgtap0`, `lgtap1`, ...). Not `lg%d`: the
/// tests (and users) like to call their bridge `lg0`.
const NAME_TEMPLATE: &str = "lgtap%d";

/// `struct virtio_net_hdr_v1`: what precedes every packet on the tap.
pub const VNET_HDR_LEN: i32 = 12;

/// `SIOCBRADDIF` from `<linux/sockios.h>`: add an interface to a bridge.
/// libc transcribes it only for Android, so it is written out here.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Why a tap could not be made or set up, in words a user can act on.
#[derive(Debug)]
pub enum TapError {
    /// `/dev/net/tun` is missing: the kernel has no tun driver loaded.
    NoTunDevice(io::Error),
    /// Creating a tap needs `CAP_NET_ADMIN`.
    NotPermitted,
    /// The bridge named does not exist (or is not a bridge).
    NoSuchBridge(String),
    /// Any other failing step, named.
    Failed { what: String, error: io::Error },
}

impl fmt::Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapError::NoTunDevice(e) => write!(
                f,
                "cannot open /dev/net/tun ({e}): the host kernel needs the tun module (modprobe tun)"
            ),
            TapError::NotPermitted => f.write_str(
                "creating a tap device needs root or CAP_NET_ADMIN (run lg as root, or drop --tunnet)",
            ),
            TapError::NoSuchBridge(name) => write!(
                f,
                "there is no bridge named {name} on this host (create it first: ip link add {name} type bridge)"
            ),
            TapError::Failed { what, error } => write!(f, "cannot {what}: {error}"),
        }
    }
}

impl std::error::Error for TapError {}

fn failed(what: impl Into<String>) -> impl FnOnce(io::Error) -> TapError {
    let what = what.into();
    move |error| TapError::Failed { what, error }
}

/// A tap device, alive as long as this value (its only descriptor).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates a new tap device carrying virtio-net headers. It exists, down
    /// and unaddressed, until this value is dropped.
    pub fn create() -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => TapError::NotPermitted,
                _ => TapError::NoTunDevice(e),
            })?;
        let mut request = ifreq_named(NAME_TEMPLATE);
        request.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `request` is,
        // alive for the call; the fd is ours.
        let status = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if status < 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotPermitted,
                _ => TapError::Failed {
                    what: "create a tap device".into(),
                    error,
                },
            });
        }
        let name = ifreq_name(&request);
        let tap = Tap { file, name };
        let header_len: libc::c_int = VNET_HDR_LEN;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `header_len` is.
        let status =
            unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if status < 0 {
            return Err(failed(format!(
                "set the virtio-net header size on {}",
                tap.name
            ))(io::Error::last_os_error()));
        }
        Ok(tap)
    }

    /// The interface's name, as `ip link` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the host kernel which offloads the guest accepts on packets it
    /// receives (`TUN_F_CSUM`, `TUN_F_TSO4`, ...): the host may then hand the
    /// tap unchecksummed packets and large segments. Zero turns them off.
    pub fn set_offloads(&self, tun_flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let status = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                tun_flags as libc::c_ulong,
            )
        };
        if status < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives the host side `address` with a /24 netmask and brings it up.
    pub fn set_address(&self, address: Ipv4Addr) -> Result<(), TapError> {
        let socket = control_socket()?;
        let mut request = ifreq_named(&self.name);
        request.ifr_ifru.ifru_addr = sockaddr_in(address);
        socket
            .ioctl(libc::SIOCSIFADDR, &mut request)
            .map_err(failed(format!("give {} the address {address}", self.name)))?;
        request.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::new(255, 255, 255, 0));
        socket
            .ioctl(libc::SIOCSIFNETMASK, &mut request)
            .map_err(failed(format!("set the netmask of {}", self.name)))?;
        self.bring_up(&socket)
    }

    /// Adds the tap to the existing bridge `bridge` and brings it up.
    pub fn join_bridge(&self, bridge: &str) -> Result<(), TapError> {
        if !is_bridge(bridge) {
            return Err(TapError::NoSuchBridge(bridge.to_string()));
        }
        let socket = control_socket()?;
        let mut request = ifreq_named(&self.name);
        socket
            .ioctl(libc::SIOCGIFINDEX, &mut request)
            .map_err(failed(format!("find the index of {}", self.name)))?;
        // SAFETY: SIOCGIFINDEX filled the union's ifindex member.
        let index = unsafe { request.ifr_ifru.ifru_ifindex };
        let mut to_bridge = ifreq_named(bridge);
        to_bridge.ifr_ifru.ifru_ifindex = index;
        socket
            .ioctl(SIOCBRADDIF, &mut to_bridge)
            .map_err(failed(format!("add {} to the bridge {bridge}", self.name)))?;
        self.bring_up(&socket)
    }

    fn bring_up(&self, socket: &ControlSocket) -> Result<(), TapError> {
        let mut request = ifreq_named(&self.name);
        socket
            .ioctl(libc::SIOCGIFFLAGS, &mut request)
            .map_err(failed(format!("read the flags of {}", self.name)))?;
        // SAFETY: SIOCGIFFLAGS filled the union's flags member.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        socket
            .ioctl(libc::SIOCSIFFLAGS, &mut request)
            .map_err(failed(format!("bring {} up", self.name)))
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Whether `name` is a bridge on this host (sysfs gives bridges a
/// `bridge/` directory).
pub fn is_bridge(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
}

/// The longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An `ifreq` naming `name`, the rest zero. Names longer than the kernel's
/// limit are cut, and then not found: callers check lengths first.
fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers
    // and sockaddrs), for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(MAX_NAME_LEN))
    {
        *slot = byte as libc::c_char;
    }
    request
}

fn ifreq_name(request: &libc::ifreq) -> String {
    let bytes: Vec<u8> = request
        .ifr_name
        .iter()
        .map(|&c| c as u8)
        .chain(std::iter::once(0))
        .collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes, and the kernel
    // reads an AF_INET sockaddr as a sockaddr_in: this is the C idiom.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// A datagram socket, the handle the `SIOC*` interface ioctls go through.
struct ControlSocket(OwnedFd);

fn control_socket() -> Result<ControlSocket, TapError> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(failed("open a socket to configure interfaces")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(ControlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl ControlSocket {
    fn ioctl(&self, request: libc::c_ulong, ifreq: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request used here reads or writes one `ifreq`, which
        // `ifreq` is, borrowed for the call.
        let status = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, ifreq) };
        if status < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_an_ifreq() {
        assert_eq!(ifreq_name(&ifreq_named("lgtap%d")), "lgtap%d");
        let long = "a".repeat(40);
        assert_eq!(ifreq_name(&ifreq_named(&long)).len(), MAX_NAME_LEN);
    }

    #[test]
    fn addresses_are_in_network_order() {
        let raw = sockaddr_in(Ipv4Addr::new(192, 168, 19, 1));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        // Port (2 bytes) then the address, most significant byte first.
        let bytes: Vec<u8> = raw.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(&bytes[2..6], &[192, 168, 19, 1]);
    }

    #[test]
    fn only_bridges_are_bridges() {
        assert!(!is_bridge("lo"));
        assert!(!is_bridge(""));
        assert!(!is_bridge("../../.."));
        assert!(!is_bridge("no-such-bridge-here"));
    }

    /// Creating a tap needs CAP_NET_ADMIN and /dev/net/tun; where the test
    /// runs without them it checks the refusal's wording instead.
    #[test]
    fn a_tap_is_created_and_vanishes_with_its_descriptor() {
        match Tap::create() {
            Ok(tap) => {
                let sysfs = Path::new("/sys/class/net").join(tap.name());
                assert!(tap.name().starts_with("lgtap"));
                assert!(sysfs.exists(), "{} should exist", sysfs.display());
                tap.set_offloads(libc::TUN_F_CSUM).unwrap();
                tap.set_address(Ipv4Addr::new(10, 250, 77, 1)).unwrap();
                drop(tap);
                assert!(
                    !sysfs.exists(),
                    "{} outlived its descriptor",
                    sysfs.display()
                );
            }
            Err(TapError::NotPermitted) | Err(TapError::NoTunDevice(_)) => {}
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
}
