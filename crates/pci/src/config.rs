//! # Configuration space: what a PCI function says about itself
//!
//! Every PCI function has 256 bytes of configuration space. The guest reads
//! them to learn what the function is (vendor, device, class), where its
//! registers live (the BARs) and what extra features it offers (the
//! capability list); it writes them to move the registers and to switch
//! decoding and DMA on. Real hardware makes most of those bytes read-only by
//! wiring. lg keeps a write mask beside the bytes instead, one bit for each
//! bit, and every write goes through it a byte at a time, whatever its width
//! or alignment.
//!
//! That one trick also gives BAR sizing for free. A BAR's type bits and the
//! address bits below its size are read-only, so when Linux writes all ones
//! and reads back it sees exactly the size mask real hardware would show, and
//! when it writes the old address back nothing else has changed.

/// Offsets in the type 0 header that lg fills or lets the guest write.
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const PROG_IF: usize = 0x09;
const SUBCLASS: usize = 0x0a;
const CLASS: usize = 0x0b;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
/// The first byte after the type 0 header: capabilities go from here on.
const HEADER_END: usize = 0x40;

/// The size of the configuration space mechanism #1 reaches.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// A type 0 header has six BAR registers, 0x10 to 0x24.
pub const BAR_COUNT: u8 = 6;

/// Command register: the function answers in its I/O BARs.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register: the function answers in its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register: the function may do DMA (and, so, send MSI-X messages).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: the function must not assert its INTx pin.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits the guest may change; the rest (VGA snooping, parity,
/// SERR, ...) mean nothing on a bus with no wires and read as zero.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
/// Status register: a capability list starts at `CAPABILITIES_POINTER`.
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Base class 0x06 (bridge), subclass 0x00: a host bridge, the class
/// Linux's `pci_sanity_check` looks for before trusting mechanism #1.
pub const CLASS_BRIDGE: u8 = 0x06;
/// See `CLASS_BRIDGE`.
pub const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

/// BAR type bits: bit 0 set means I/O space; for memory, bits 2:1 = 0b10
/// means 64-bit. Prefetchable (bit 3) is never set: virtio registers have
/// side effects on read.
const BAR_TYPE_IO: u32 = 0b01;
const BAR_TYPE_MEMORY_64: u32 = 0b100;
/// The address bits of a BAR's low dword, below which sit its type bits.
const BAR_MEMORY_ADDRESS_BITS: u32 = !0xf;
const BAR_IO_ADDRESS_BITS: u32 = !0x3;

/// Who the function is, as the header's read-only identity fields say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIds {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Memory anywhere below 4 GiB.
    Memory32,
    /// Memory anywhere in 64 bits; takes this BAR slot and the next, which
    /// holds the upper half of the address.
    Memory64,
    /// I/O ports.
    Io,
}

/// What a configuration write changed that the function's owner must act on.
///
/// A write Linux makes (1, 2 or 4 bytes, naturally aligned) changes at most
/// one of these. A longer or misaligned write that changes several reports
/// the one at the lowest offset; the owner can always re-read the rest.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigWrite {
    /// Nothing the owner needs to know about.
    Nothing,
    /// The guest wrote a BAR and its address changed. For a 64-bit BAR,
    /// `index` is the lower slot whichever half was written; `old` and `new`
    /// are full addresses (type bits masked off).
    BarMoved { index: u8, old: u64, new: u64 },
    /// The command register changed (decoding, bus mastering, INTx disable).
    CommandChanged { old: u16, new: u16 },
    /// The write touched the capability starting at `offset`: the owner
    /// re-reads it (MSI-X enable and function mask, say).
    Capability { offset: u8 },
}

/// A BAR lg has added: the rest of its state lives in the register bytes.
#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
}

/// Where a capability sits, so a write can be matched to it.
#[derive(Debug, Clone, Copy)]
struct Capability {
    offset: usize,
    len: usize,
}

/// One PCI function's configuration space (type 0 header), with the write
/// masks that make read-only registers read-only.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// A set bit is a bit the guest may change.
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<Bar>; BAR_COUNT as usize],
    capabilities: Vec<Capability>,
}

impl ConfigSpace {
    /// A type 0 header for an ordinary function: identity read-only, decoding
    /// and bus mastering off, no BARs or capabilities yet, no interrupt pin.
    pub fn new(ids: &DeviceIds) -> ConfigSpace {
        let mut space = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [None; BAR_COUNT as usize],
            capabilities: Vec::new(),
        };
        space.put(VENDOR_ID, &ids.vendor.to_le_bytes());
        space.put(DEVICE_ID, &ids.device.to_le_bytes());
        space.put(REVISION_ID, &[ids.revision]);
        space.put(PROG_IF, &[ids.prog_if]);
        space.put(SUBCLASS, &[ids.subclass]);
        space.put(CLASS, &[ids.class]);
        space.put(SUBSYSTEM_VENDOR_ID, &ids.subsystem_vendor.to_le_bytes());
        space.put(SUBSYSTEM_ID, &ids.subsystem.to_le_bytes());
        // Header type 0x00 (a type 0 header, single function) is already zero.
        space.allow(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        // The interrupt line is a note the firmware or OS leaves for itself;
        // the device never reads it, so any value is fine.
        space.allow(INTERRUPT_LINE, &[0xff]);
        space
    }

    /// A host bridge's header: `ids` with the class forced to host bridge
    /// (0x06/0x00, programming interface 0). A host bridge has no BARs.
    pub fn bridge(ids: &DeviceIds) -> ConfigSpace {
        ConfigSpace::new(&DeviceIds {
            class: CLASS_BRIDGE,
            subclass: SUBCLASS_HOST_BRIDGE,
            prog_if: 0,
            ..*ids
        })
    }

    /// Adds BAR `index` of `size` bytes at `address`, which lg has chosen
    /// (see `BarAllocator`). The guest may move it later.
    ///
    /// # Panics
    ///
    /// These are lg's own mistakes, caught when the device is built: `index`
    /// past the last BAR (or a 64-bit BAR in slot 5), a slot already used,
    /// `size` not a power of two or smaller than the minimum (16 bytes for
    /// memory, 4 for I/O), `address` not aligned to `size`, or a 32-bit BAR
    /// or I/O BAR that would not fit its address space.
    pub fn add_bar(&mut self, index: u8, size: u64, kind: BarKind, address: u64) {
        let slots: u8 = if kind == BarKind::Memory64 { 2 } else { 1 };
        assert!(
            u16::from(index) + u16::from(slots) <= u16::from(BAR_COUNT),
            "BAR {index} ({kind:?}) does not fit in a type 0 header"
        );
        for slot in index..index + slots {
            assert!(!self.bar_slot_used(slot), "BAR slot {slot} is already used");
        }
        let (min_size, address_limit) = match kind {
            BarKind::Memory32 => (16, 1 << 32),
            BarKind::Memory64 => (16, u64::MAX),
            BarKind::Io => (4, 1 << 16),
        };
        assert!(
            size.is_power_of_two() && size >= min_size,
            "BAR {index} size {size:#x} is not a power of two of at least {min_size}"
        );
        assert!(
            address % size == 0,
            "BAR {index} address {address:#x} is not aligned to its size {size:#x}"
        );
        assert!(
            address_limit
                .checked_sub(address)
                .is_some_and(|room| room >= size),
            "BAR {index} at {address:#x} (size {size:#x}) does not fit a {kind:?} BAR"
        );

        let register = BAR0 + 4 * usize::from(index);
        // The bits below the size are the ones sizing reads back as zero.
        let size_mask = !(size - 1);
        let (type_bits, address_bits) = match kind {
            BarKind::Memory32 => (0, BAR_MEMORY_ADDRESS_BITS),
            BarKind::Memory64 => (BAR_TYPE_MEMORY_64, BAR_MEMORY_ADDRESS_BITS),
            BarKind::Io => (BAR_TYPE_IO, BAR_IO_ADDRESS_BITS),
        };
        let low = (address as u32 & address_bits) | type_bits;
        self.put(register, &low.to_le_bytes());
        self.allow(register, &(size_mask as u32 & address_bits).to_le_bytes());
        if kind == BarKind::Memory64 {
            self.put(register + 4, &((address >> 32) as u32).to_le_bytes());
            self.allow(register + 4, &((size_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[usize::from(index)] = Some(Bar { kind, size });
    }

    /// Appends a capability to the list and returns its offset. `body`'s
    /// first byte is the capability id; its second is overwritten with the
    /// next pointer, which lg keeps. The header is read-only; body bytes
    /// after it are read-only except for the bits set in `writable_mask`
    /// (indexed like `body`; bytes it does not cover are read-only).
    ///
    /// # Panics
    ///
    /// If `body` is shorter than the two-byte header or the capabilities
    /// outgrow the 192 bytes after the header: lg's mistake, not the guest's.
    pub fn add_capability(&mut self, body: &[u8], writable_mask: &[u8]) -> u8 {
        assert!(
            body.len() >= 2,
            "a capability needs at least its id and next pointer"
        );
        // Capabilities sit on dword boundaries: the pointer's low two bits
        // are reserved, and Linux masks them off.
        let offset = match self.capabilities.last() {
            Some(last) => (last.offset + last.len).next_multiple_of(4),
            None => HEADER_END,
        };
        assert!(
            offset + body.len() <= CONFIG_SPACE_SIZE,
            "capability of {} bytes does not fit at {offset:#x}",
            body.len()
        );
        self.bytes[offset..offset + body.len()].copy_from_slice(body);
        self.bytes[offset + 1] = 0;
        for (i, &mask) in writable_mask.iter().enumerate().take(body.len()).skip(2) {
            self.writable[offset + i] = mask;
        }
        match self.capabilities.last() {
            Some(last) => self.bytes[last.offset + 1] = offset as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = offset as u8;
                let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
                self.put(STATUS, &status.to_le_bytes());
            }
        }
        self.capabilities.push(Capability {
            offset,
            len: body.len(),
        });
        offset as u8
    }

    /// Reads `data.len()` bytes from `offset`; bytes outside the 256 read as
    /// all ones, as an absent register does.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::from(offset) + i;
            *byte = self.bytes.get(at).copied().unwrap_or(0xff);
        }
    }

    /// A little-endian word at `offset` (all ones outside the space).
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut bytes = [0; 2];
        self.read(offset, &mut bytes);
        u16::from_le_bytes(bytes)
    }

    /// A little-endian dword at `offset` (all ones outside the space).
    pub fn read_u32(&self, offset: u16) -> u32 {
        let mut bytes = [0; 4];
        self.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    /// The guest writes `data` at `offset`: each byte changes only the bits
    /// its write mask allows, bytes outside the space are dropped. Returns
    /// what changed that the owner must act on.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> ConfigWrite {
        let command_before = self.command();
        let bars_before = self.bar_addresses();
        let mut capability = None;
        for (i, &value) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let Some(&mask) = self.writable.get(at) else {
                break;
            };
            self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
            if capability.is_none() {
                capability = self
                    .capabilities
                    .iter()
                    .find(|cap| (cap.offset..cap.offset + cap.len).contains(&at))
                    .map(|cap| cap.offset as u8);
            }
        }

        let command = self.command();
        if command != command_before {
            return ConfigWrite::CommandChanged {
                old: command_before,
                new: command,
            };
        }
        let bars_after = self.bar_addresses();
        for (index, (before, after)) in bars_before.iter().zip(&bars_after).enumerate() {
            if let (Some(old), Some(new)) = (*before, *after) {
                if old != new {
                    return ConfigWrite::BarMoved {
                        index: index as u8,
                        old,
                        new,
                    };
                }
            }
        }
        match capability {
            Some(offset) => ConfigWrite::Capability { offset },
            None => ConfigWrite::Nothing,
        }
    }

    /// BAR `index`'s current address, type bits masked off; `None` if there
    /// is no BAR there (or it is the upper half of a 64-bit BAR).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bars.get(usize::from(index))?.as_ref()?;
        let register = BAR0 + 4 * usize::from(index);
        let low = self.u32_at(register);
        Some(match bar.kind {
            BarKind::Memory32 => u64::from(low & BAR_MEMORY_ADDRESS_BITS),
            BarKind::Memory64 => {
                u64::from(low & BAR_MEMORY_ADDRESS_BITS)
                    | u64::from(self.u32_at(register + 4)) << 32
            }
            BarKind::Io => u64::from(low & BAR_IO_ADDRESS_BITS),
        })
    }

    /// BAR `index`'s size in bytes, if there is a BAR there.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        Some(self.bars.get(usize::from(index))?.as_ref()?.size)
    }

    /// What BAR `index` maps, if there is a BAR there.
    pub fn bar_kind(&self, index: u8) -> Option<BarKind> {
        Some(self.bars.get(usize::from(index))?.as_ref()?.kind)
    }

    /// The command register (`COMMAND_*` bits).
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Sets the interrupt pin (1 = INTA# .. 4 = INTD#, 0 = none), read-only
    /// to the guest, and the interrupt line's initial value, which the guest
    /// may overwrite.
    pub fn set_interrupt_pin(&mut self, pin: u8, line: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
        self.bytes[INTERRUPT_LINE] = line;
    }

    fn bar_slot_used(&self, slot: u8) -> bool {
        let slot = usize::from(slot);
        self.bars[slot].is_some()
            || (slot > 0
                && matches!(self.bars[slot - 1], Some(bar) if bar.kind == BarKind::Memory64))
    }

    fn bar_addresses(&self) -> [Option<u64>; BAR_COUNT as usize] {
        std::array::from_fn(|index| self.bar_address(index as u8))
    }

    fn put(&mut self, offset: usize, value: &[u8]) {
        self.bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    fn allow(&mut self, offset: usize, mask: &[u8]) {
        self.writable[offset..offset + mask.len()].copy_from_slice(mask);
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: DeviceIds = DeviceIds {
        vendor: 0x1af4,
        device: 0x1042,
        class: 0x01,
        subclass: 0x00,
        prog_if: 0x00,
        revision: 0x01,
        subsystem_vendor: 0x1af4,
        subsystem: 0x0002,
    };

    fn read32(space: &ConfigSpace, offset: u16) -> u32 {
        space.read_u32(offset)
    }

    fn write32(space: &mut ConfigSpace, offset: u16, value: u32) -> ConfigWrite {
        space.write(offset, &value.to_le_bytes())
    }

    /// Linux's `__pci_read_base`: save, write all ones, read the size mask,
    /// restore. Returns the mask it read.
    fn linux_size_dword(space: &mut ConfigSpace, offset: u16) -> u32 {
        let saved = read32(space, offset);
        let _ = write32(space, offset, !0);
        let mask = read32(space, offset);
        let _ = write32(space, offset, saved);
        assert_eq!(read32(space, offset), saved, "restoring {offset:#x}");
        mask
    }

    #[test]
    fn identity_fields_are_where_the_spec_puts_them() {
        let space = ConfigSpace::new(&IDS);
        assert_eq!(space.read_u16(0x00), 0x1af4);
        assert_eq!(space.read_u16(0x02), 0x1042);
        assert_eq!(read32(&space, 0x08), 0x0100_0001);
        assert_eq!(space.read_u16(0x2c), 0x1af4);
        assert_eq!(space.read_u16(0x2e), 0x0002);
        let mut header_type = [0xaa];
        space.read(0x0e, &mut header_type);
        assert_eq!(header_type, [0]);
        assert_eq!(space.command(), 0);
        // No capabilities yet: status bit 4 clear, pointer zero.
        assert_eq!(space.read_u16(0x06), 0);
        assert_eq!(read32(&space, 0x34), 0);
    }

    #[test]
    fn the_bridge_constructor_makes_a_host_bridge() {
        let space = ConfigSpace::bridge(&IDS);
        assert_eq!(space.read_u16(0x0a), 0x0600);
        assert_eq!(space.read_u16(0x00), 0x1af4);
        assert!((0..BAR_COUNT).all(|bar| space.bar_address(bar).is_none()));
    }

    #[test]
    fn linux_sizes_a_32_bit_memory_bar() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(1, 0x1000, BarKind::Memory32, 0xc000_3000);
        assert_eq!(read32(&space, 0x14), 0xc000_3000);
        // Memory, 32-bit, not prefetchable: the type bits are all zero.
        assert_eq!(linux_size_dword(&mut space, 0x14), 0xffff_f000);
        assert_eq!(space.bar_address(1), Some(0xc000_3000));
        assert_eq!(space.bar_size(1), Some(0x1000));
    }

    #[test]
    fn linux_sizes_a_64_bit_memory_bar() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(2, 0x4000, BarKind::Memory64, 0xc000_4000);
        assert_eq!(read32(&space, 0x18), 0xc000_4004);
        assert_eq!(read32(&space, 0x1c), 0);
        // Low dword: size mask with type 0b100 (64-bit); high dword: all
        // ones, since the size is below 4 GiB.
        assert_eq!(linux_size_dword(&mut space, 0x18), 0xffff_c004);
        assert_eq!(linux_size_dword(&mut space, 0x1c), 0xffff_ffff);
        let size = !((u64::from(0xffff_ffffu32) << 32 | 0xffff_c000) - 1);
        assert_eq!(size, 0x4000);
        assert_eq!(space.bar_address(2), Some(0xc000_4000));
        // The upper half is not a BAR of its own.
        assert_eq!(space.bar_address(3), None);
    }

    #[test]
    fn a_64_bit_bar_bigger_than_4_gib_masks_its_upper_dword() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 1 << 33, BarKind::Memory64, 1 << 34);
        assert_eq!(linux_size_dword(&mut space, 0x10), 0x0000_0004);
        assert_eq!(linux_size_dword(&mut space, 0x14), 0xffff_fffe);
    }

    #[test]
    fn linux_sizes_an_io_bar() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(4, 0x20, BarKind::Io, 0xc040);
        assert_eq!(read32(&space, 0x20), 0xc041);
        assert_eq!(linux_size_dword(&mut space, 0x20), 0xffff_ffe1);
        assert_eq!(space.bar_address(4), Some(0xc040));
    }

    #[test]
    fn unused_bars_and_the_expansion_rom_read_zero_and_ignore_writes() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 0x1000, BarKind::Memory32, 0xc000_0000);
        for offset in [0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            assert_eq!(linux_size_dword(&mut space, offset), 0, "{offset:#x}");
            assert_eq!(
                write32(&mut space, offset, 0x1234_5678),
                ConfigWrite::Nothing
            );
            assert_eq!(read32(&space, offset), 0);
        }
    }

    #[test]
    fn moving_a_bar_is_reported() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 0x1000, BarKind::Memory32, 0xc000_0000);
        space.add_bar(2, 0x4000, BarKind::Memory64, 0xc000_4000);
        assert_eq!(
            write32(&mut space, 0x10, 0xd000_0000),
            ConfigWrite::BarMoved {
                index: 0,
                old: 0xc000_0000,
                new: 0xd000_0000
            }
        );
        assert_eq!(
            write32(&mut space, 0x1c, 0x1),
            ConfigWrite::BarMoved {
                index: 2,
                old: 0xc000_4000,
                new: 0x1_c000_4000
            }
        );
        assert_eq!(space.bar_address(2), Some(0x1_c000_4000));
        // Writing the same address again moves nothing.
        assert_eq!(write32(&mut space, 0x10, 0xd000_0000), ConfigWrite::Nothing);
        // Bits below the size are dropped, not moved to.
        assert_eq!(write32(&mut space, 0x10, 0xd000_0fff), ConfigWrite::Nothing);
    }

    #[test]
    fn only_the_command_bits_that_mean_something_are_writable() {
        let mut space = ConfigSpace::new(&IDS);
        assert_eq!(
            space.write(0x04, &0xffffu16.to_le_bytes()),
            ConfigWrite::CommandChanged {
                old: 0,
                new: 0x0407
            }
        );
        assert_eq!(
            space.command(),
            COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
        // Status (the upper half of the dword) stays read-only.
        let _ = write32(&mut space, 0x04, 0xffff_0000);
        assert_eq!(read32(&space, 0x04), 0);
        // A byte write to the command register's upper byte.
        let _ = space.write(0x05, &[0x04]);
        assert_eq!(space.command(), COMMAND_INTX_DISABLE);
    }

    #[test]
    fn read_only_registers_stay_read_only() {
        let mut space = ConfigSpace::new(&IDS);
        space.set_interrupt_pin(1, 11);
        let offset = space.add_capability(&[0x09, 0xaa, 0x10, 0x20, 0x30], &[0xff, 0xff]);
        let before = {
            let mut bytes = [0; CONFIG_SPACE_SIZE];
            space.read(0, &mut bytes);
            bytes
        };
        // Write ones, then zeros, over everything but command and line.
        for value in [0xff, 0x00] {
            for at in 0..CONFIG_SPACE_SIZE as u16 {
                if !(0x04..0x06).contains(&at) && at != 0x3c {
                    let _ = space.write(at, &[value]);
                }
            }
        }
        let mut after = [0; CONFIG_SPACE_SIZE];
        space.read(0, &mut after);
        assert_eq!(before, after);
        assert_eq!(space.read_u16(0x00), 0x1af4, "vendor id");
        assert_eq!(space.read_u16(0x02), 0x1042, "device id");
        assert_eq!(after[0x0b], 0x01, "class");
        assert_eq!(after[0x0e], 0x00, "header type");
        assert_eq!(after[0x34], offset, "capability pointer");
        assert_eq!(after[0x3d], 1, "interrupt pin");
        assert_eq!(
            &after[usize::from(offset)..][..5],
            &[0x09, 0, 0x10, 0x20, 0x30]
        );
    }

    #[test]
    fn the_interrupt_line_is_writable_and_the_pin_is_not() {
        let mut space = ConfigSpace::new(&IDS);
        space.set_interrupt_pin(1, 10);
        assert_eq!(space.read_u16(0x3c), 0x010a);
        let _ = space.write(0x3c, &0xffffu16.to_le_bytes());
        assert_eq!(space.read_u16(0x3c), 0x01ff);
    }

    #[test]
    fn capabilities_chain_in_order_and_the_last_points_nowhere() {
        let mut space = ConfigSpace::new(&IDS);
        let first = space.add_capability(&[0x09, 0xff, 1, 2, 3], &[]);
        let second = space.add_capability(&[0x11, 0xff, 0, 0], &[]);
        assert_eq!(first, 0x40);
        // Five bytes long, so the next starts at the next dword.
        assert_eq!(second, 0x48);
        assert_ne!(space.read_u16(0x06) & STATUS_CAPABILITIES_LIST, 0);
        // Walk the list as Linux's pci_find_capability does.
        let mut found = Vec::new();
        let mut bytes = [0; 1];
        space.read(0x34, &mut bytes);
        let mut at = bytes[0];
        while at != 0 {
            let header = space.read_u16(u16::from(at));
            found.push((at, header as u8));
            at = (header >> 8) as u8 & !3;
        }
        assert_eq!(found, vec![(0x40, 0x09), (0x48, 0x11)]);
    }

    #[test]
    fn capability_writes_go_through_the_mask_and_are_reported() {
        let mut space = ConfigSpace::new(&IDS);
        let other = space.add_capability(&[0x09, 0, 0xaa, 0xbb], &[]);
        let cap = space.add_capability(&[0x11, 0, 0x12, 0x34], &[0xff, 0xff, 0x0f, 0xf0]);
        // The header stays, even under a mask that says otherwise.
        assert_eq!(
            space.write(u16::from(cap), &[0xff, 0xff, 0xff, 0xff]),
            ConfigWrite::Capability { offset: cap }
        );
        assert_eq!(space.read_u32(u16::from(cap)), 0xf41f_0011);
        // A write to read-only capability bytes changes nothing but is still
        // reported, so owners with data windows in a capability see it.
        assert_eq!(
            space.write(u16::from(other) + 2, &[0]),
            ConfigWrite::Capability { offset: other }
        );
        assert_eq!(space.read_u16(u16::from(other) + 2), 0xbbaa);
    }

    #[test]
    fn reads_and_writes_past_the_end_are_all_ones_and_dropped() {
        let mut space = ConfigSpace::new(&IDS);
        let mut data = [0; 8];
        space.read(0xfc, &mut data);
        assert_eq!(data, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        space.read(u16::MAX, &mut data);
        assert_eq!(data, [0xff; 8]);
        assert_eq!(space.write(u16::MAX, &[1; 8]), ConfigWrite::Nothing);
        assert_eq!(space.write(0x3c, &[7; 400]), ConfigWrite::Nothing);
        assert_eq!(space.read_u16(0x3c), 0x0007);
    }

    #[test]
    fn unaligned_writes_go_byte_by_byte() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 0x1000, BarKind::Memory32, 0xc000_0000);
        // Two bytes from 0x0f: BIST (read-only), then BAR0's lowest byte,
        // type bits and address bits below the size, read-only too.
        assert_eq!(space.write(0x0f, &[0xff, 0xff]), ConfigWrite::Nothing);
        // Two bytes from 0x11: BAR0 bits 15:8 (bits 15:12 writable) and
        // bits 23:16.
        assert_eq!(
            space.write(0x11, &[0xff, 0x12]),
            ConfigWrite::BarMoved {
                index: 0,
                old: 0xc000_0000,
                new: 0xc012_f000
            }
        );
    }

    #[test]
    #[should_panic(expected = "already used")]
    fn a_bar_over_the_upper_half_of_a_64_bit_bar_is_refused() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 0x1000, BarKind::Memory64, 0xc000_0000);
        space.add_bar(1, 0x1000, BarKind::Memory32, 0xc000_1000);
    }

    #[test]
    #[should_panic(expected = "does not fit in a type 0 header")]
    fn a_64_bit_bar_in_the_last_slot_is_refused() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(5, 0x1000, BarKind::Memory64, 0xc000_0000);
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn a_misaligned_bar_is_refused() {
        let mut space = ConfigSpace::new(&IDS);
        space.add_bar(0, 0x2000, BarKind::Memory32, 0xc000_1000);
    }
}
