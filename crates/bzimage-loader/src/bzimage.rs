//! The bzImage: what `make` leaves in `arch/x86/boot/bzImage` and what every
//! distribution ships as `vmlinuz`.
//!
//! The file is two programs glued together. First come `setup_sects + 1`
//! sectors of 16-bit real-mode setup code, written to run under a BIOS; lg has
//! no BIOS and skips it, keeping only the setup header embedded in it at
//! 0x1f1. Then comes the protected-mode part: a small decompressor wrapped
//! around the compressed kernel. Its first byte is the 32-bit entry and 0x200
//! bytes further on is `startup_64`, which expects to be entered in long mode
//! with %rsi pointing at the zero page. That is the door lg uses.

use hcall_abi::boot::{
    SetupHeader, BOOT_FLAG_MAGIC, HDRS_MAGIC, SETUP_HEADER_OFFSET, XLF_KERNEL_64,
};
use hcall_abi::layout::{HIMEM_START, MEM_32BIT_GAP_START};
use zerocopy::{FromZeros, IntoBytes};

use crate::error::LoadError;
use std::path::Path;

/// The oldest protocol lg loads: 2.06 added `cmdline_size`, so lg can check
/// the command line against the kernel's own limit.
const MIN_PROTOCOL: u16 = 0x0206;
/// 2.10 added `pref_address` and `init_size`, and made `kernel_alignment` and
/// `relocatable_kernel` meaningful.
const PROTOCOL_2_10: u16 = 0x020a;
/// `startup_64` sits this far into the protected-mode part.
pub(crate) const STARTUP_64_OFFSET: u64 = 0x200;
/// The x86 opcode of a short jump, which is what the header's `jump` holds.
const JMP_SHORT: u8 = 0xeb;

/// Where the protected-mode kernel goes and how much RAM it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Where the protected-mode part is copied (and `code32_start`).
    pub load_addr: u64,
    /// The first byte above everything the kernel will touch before it has
    /// read the e820 map: the initrd must start at or above this.
    pub end: u64,
}

/// A bzImage whose header has been checked.
#[derive(Debug)]
pub(crate) struct BzImage {
    /// The file's setup header; bytes past the header's true end (older
    /// protocols have shorter headers) are zero, not setup code.
    pub header: SetupHeader,
    /// Where the protected-mode part starts in the file.
    pub kernel_offset: usize,
}

/// Whether `data` carries a setup header at all ("HdrS" at 0x202).
pub(crate) fn has_setup_header(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(&HDRS_MAGIC.to_le_bytes()[..])
}

impl BzImage {
    /// Checks the header of a file known to carry "HdrS": signature, length,
    /// protocol version, 64-bit entry. `data` is the file's start (its first
    /// 1024 bytes at least, or all of a shorter file), `file_len` its length.
    pub fn parse(path: &Path, data: &[u8], file_len: u64) -> Result<BzImage, LoadError> {
        // setup_sects and syssize sit below 0x202, which has_setup_header saw.
        let setup_sects = match data[SETUP_HEADER_OFFSET] {
            // An ancient convention: 0 meant the fixed four-sector setup.
            0 => 4,
            n => n as usize,
        };
        let syssize = u32::from_le_bytes(data[0x1f4..0x1f8].try_into().expect("4 bytes"));
        let kernel_offset = (setup_sects + 1) * 512;
        let expected = kernel_offset as u64 + u64::from(syssize) * 16;
        if file_len < expected {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                expected,
                actual: file_len,
            });
        }
        // The 64-bit entry point lies STARTUP_64_OFFSET bytes into the
        // protected-mode code. A file whose code ends before it would pass
        // every other check (its syssize can be 0) and start the guest in
        // whatever lies past the image, even past the end of its RAM.
        let code_len = file_len - kernel_offset as u64;
        if code_len <= STARTUP_64_OFFSET {
            return Err(LoadError::NoEntryCode {
                path: path.to_path_buf(),
                code_len,
            });
        }
        // The setup code is at least two sectors (1024 bytes), which hold
        // the whole header: a start shorter than that is refused, never
        // read past.
        if data.len() < 1024 {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                expected,
                actual: data.len() as u64,
            });
        }
        // The header is as long as the jump over it says; copying more would
        // hand the kernel setup code as if it were, say, a setup_data pointer.
        let header_end = match data[0x200..0x202] {
            [JMP_SHORT, displacement] => 0x202 + displacement as usize,
            _ => SETUP_HEADER_OFFSET + size_of::<SetupHeader>(),
        }
        .clamp(0x202, SETUP_HEADER_OFFSET + size_of::<SetupHeader>());
        let mut header = SetupHeader::new_zeroed();
        header.as_mut_bytes()[..header_end - SETUP_HEADER_OFFSET]
            .copy_from_slice(&data[SETUP_HEADER_OFFSET..header_end]);

        if header.boot_flag != BOOT_FLAG_MAGIC {
            return Err(LoadError::BadBootFlag {
                path: path.to_path_buf(),
                boot_flag: header.boot_flag,
            });
        }
        let version = header.version;
        if version < MIN_PROTOCOL {
            return Err(LoadError::ProtocolTooOld {
                path: path.to_path_buf(),
                version,
            });
        }
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::No64BitEntry {
                path: path.to_path_buf(),
                version,
            });
        }
        Ok(BzImage {
            header,
            kernel_offset,
        })
    }

    /// The boot protocol version, major in the high byte.
    pub fn protocol_version(&self) -> u16 {
        self.header.version
    }

    /// The longest command line this kernel takes, NUL excluded.
    pub fn cmdline_size(&self) -> u64 {
        u64::from(self.header.cmdline_size)
    }

    /// Decides where the kernel goes in a guest whose RAM below the 32-bit
    /// hole ends at `ram_end`, given `payload_len` bytes of protected-mode code.
    pub fn placement(
        &self,
        path: &Path,
        payload_len: u64,
        ram_end: u64,
    ) -> Result<Placement, LoadError> {
        let h = &self.header;
        let (relocatable, pref_address, init_size) = if h.version >= PROTOCOL_2_10 {
            (
                h.relocatable_kernel != 0,
                h.pref_address,
                u64::from(h.init_size),
            )
        } else {
            (false, 0, 0)
        };
        let load_addr = if relocatable && (HIMEM_START..MEM_32BIT_GAP_START).contains(&pref_address)
        {
            pref_address
        } else {
            HIMEM_START
        };
        // The trick to know: startup_64 does not decompress where it was put.
        // It rounds its own address up to kernel_alignment, moves up to at
        // least the kernel's link address (which the header publishes as
        // pref_address), and needs init_size bytes from there. So the kernel's
        // real footprint starts at that base, whatever load address we chose.
        let alignment = u64::from(h.kernel_alignment).max(1);
        let aligned = if relocatable {
            load_addr.div_ceil(alignment) * alignment
        } else {
            load_addr
        };
        let base = aligned.max(pref_address);
        // pref_address is the file's to choose, up to 2^64 - 1: a sum that
        // overflows is a kernel no guest can hold, not a small end.
        let end = base
            .saturating_add(init_size)
            .max(load_addr.saturating_add(payload_len));
        if end > ram_end {
            return Err(LoadError::KernelTooBig {
                path: path.to_path_buf(),
                load_addr,
                needed: end - load_addr,
                ram_end,
            });
        }
        Ok(Placement { load_addr, end })
    }

    /// The 64-bit entry point of a kernel loaded at `load_addr`.
    pub fn entry(load_addr: u64) -> u64 {
        load_addr + STARTUP_64_OFFSET
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::{bzimage, BzImageSpec};

    const MIB: u64 = 1 << 20;

    fn parse(data: &[u8]) -> Result<BzImage, LoadError> {
        BzImage::parse(Path::new("/kit/bzImage"), data, data.len() as u64)
    }

    #[test]
    fn accepts_a_64_bit_bzimage_and_finds_its_kernel() {
        let spec = BzImageSpec::default();
        let image = parse(&bzimage(&spec)).unwrap();
        assert_eq!(image.protocol_version(), 0x020f);
        assert_eq!(image.kernel_offset, (spec.setup_sects as usize + 1) * 512);
        assert_eq!(image.cmdline_size(), 2047);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let spec = BzImageSpec {
            setup_sects: 0,
            ..BzImageSpec::default()
        };
        assert_eq!(parse(&bzimage(&spec)).unwrap().kernel_offset, 5 * 512);
    }

    #[test]
    fn copies_only_as_much_header_as_the_jump_covers() {
        // A 2.06 header ends after cmdline_size (0x23c): the jump says so.
        let mut data = bzimage(&BzImageSpec {
            version: 0x0206,
            ..BzImageSpec::default()
        });
        data[0x201] = (0x23c - 0x202) as u8;
        data[0x250..0x258].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        let image = parse(&data).unwrap();
        assert_eq!({ image.header.setup_data }, 0);
        assert_eq!({ image.header.cmdline_size }, 2047);
    }

    #[test]
    fn refuses_code_that_ends_before_the_64_bit_entry_point() {
        // Found by `cargo xtask fuzz`: setup code and nothing after it
        // (syssize 0) was loaded, and the guest entered past its RAM.
        for payload_len in [0, 16, 512] {
            let data = bzimage(&BzImageSpec {
                payload_len,
                ..BzImageSpec::default()
            });
            let err = parse(&data).unwrap_err();
            assert!(
                matches!(err, LoadError::NoEntryCode { code_len, .. } if code_len == payload_len as u64),
                "{payload_len}: {err:?}"
            );
        }
        let err = parse(&bzimage(&BzImageSpec {
            payload_len: 512,
            ..BzImageSpec::default()
        }))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/kit/bzImage: not a bootable bzImage: its protected-mode code is 512 bytes, too \
             short to hold the 64-bit entry point 512 bytes in"
        );
        // One paragraph past the entry point is enough to hold it.
        assert!(parse(&bzimage(&BzImageSpec {
            payload_len: 528,
            ..BzImageSpec::default()
        }))
        .is_ok());
    }

    #[test]
    fn refuses_a_truncated_file_with_both_sizes() {
        let mut data = bzimage(&BzImageSpec::default());
        data.truncate(data.len() - 100);
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, LoadError::Truncated { .. }));
        let expected = data.len() + 100;
        assert_eq!(
            err.to_string(),
            format!(
                "/kit/bzImage: truncated bzImage: the header says {expected} bytes but the file \
                 has {}",
                data.len()
            )
        );
    }

    #[test]
    fn refuses_a_32_bit_only_kernel() {
        let data = bzimage(&BzImageSpec {
            xloadflags: 0,
            ..BzImageSpec::default()
        });
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, LoadError::No64BitEntry { .. }));
        assert_eq!(
            err.to_string(),
            "/kit/bzImage: a 32-bit-only kernel (xloadflags has no 64-bit entry); lg boots \
             x86-64 kernels"
        );
    }

    #[test]
    fn refuses_an_old_protocol() {
        let data = bzimage(&BzImageSpec {
            version: 0x0204,
            ..BzImageSpec::default()
        });
        let err = parse(&data).unwrap_err();
        assert!(matches!(
            err,
            LoadError::ProtocolTooOld {
                version: 0x0204,
                ..
            }
        ));
        assert!(err
            .to_string()
            .starts_with("/kit/bzImage: boot protocol 2.04 is too old"));
    }

    #[test]
    fn explains_why_a_pre_2_12_kernel_has_no_64_bit_entry() {
        let data = bzimage(&BzImageSpec {
            version: 0x020a,
            xloadflags: 0,
            ..BzImageSpec::default()
        });
        let message = parse(&data).unwrap_err().to_string();
        assert!(
            message.starts_with("/kit/bzImage: boot protocol 2.10 predates"),
            "{message}"
        );
    }

    #[test]
    fn refuses_a_missing_boot_flag() {
        let mut data = bzimage(&BzImageSpec::default());
        data[0x1fe] = 0;
        let err = parse(&data).unwrap_err();
        assert!(matches!(
            err,
            LoadError::BadBootFlag {
                boot_flag: 0xaa00,
                ..
            }
        ));
        assert!(err.to_string().starts_with("/kit/bzImage: "));
    }

    #[test]
    fn loads_a_relocatable_kernel_at_its_preferred_address() {
        let image = parse(&bzimage(&BzImageSpec::default())).unwrap();
        let placement = image.placement(Path::new("k"), 8192, 256 * MIB).unwrap();
        assert_eq!(placement.load_addr, 16 * MIB);
        assert_eq!(placement.end, 16 * MIB + 32 * MIB);
    }

    #[test]
    fn loads_a_fixed_kernel_at_one_megabyte_but_reserves_from_its_link_address() {
        let image = parse(&bzimage(&BzImageSpec {
            relocatable: false,
            ..BzImageSpec::default()
        }))
        .unwrap();
        let placement = image.placement(Path::new("k"), 8192, 256 * MIB).unwrap();
        assert_eq!(placement.load_addr, HIMEM_START);
        assert_eq!(placement.end, 16 * MIB + 32 * MIB);
    }

    #[test]
    fn refuses_a_guest_too_small_for_init_size() {
        let image = parse(&bzimage(&BzImageSpec::default())).unwrap();
        let err = image
            .placement(Path::new("/kit/bzImage"), 8192, 32 * MIB)
            .unwrap_err();
        assert!(matches!(err, LoadError::KernelTooBig { needed, .. } if needed == 32 * MIB));
        assert_eq!(
            err.to_string(),
            "/kit/bzImage: the kernel needs 32.0 MiB from its load address 0x1000000 \
             (init_size) but guest RAM below 4 GiB ends at 0x2000000; give the guest more memory"
        );
    }

    #[test]
    fn refuses_a_link_address_near_the_top_of_the_address_space() {
        // Found by the bzimage fuzz target: pref_address + init_size
        // overflowed (a panic in a debug build, a small "end" that passed
        // the RAM check in a release build).
        let image = parse(&bzimage(&BzImageSpec {
            pref_address: u64::MAX - 0x1000,
            ..BzImageSpec::default()
        }))
        .unwrap();
        let err = image
            .placement(Path::new("/kit/bzImage"), 8192, 256 * MIB)
            .unwrap_err();
        assert!(matches!(err, LoadError::KernelTooBig { .. }), "{err}");
    }
}
