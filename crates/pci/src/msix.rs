//! # MSI-X: interrupts as memory writes
//!
//! A PCI device with MSI-X does not raise a shared wire; it writes a message
//! (a 32-bit data value) to an address, one pair per vector, both chosen by
//! the guest. On x86 the address names a local APIC and the data a vector,
//! so each virtio queue can interrupt its own CPU without the IO-APIC or
//! interrupt sharing. The guest finds the vectors through a capability in
//! configuration space, which names a BAR and offset for the table (16 bytes
//! per vector: address low, address high, data, vector control) and for the
//! pending-bit array.
//!
//! This module keeps those three pieces and the one rule that ties them
//! together: a message raised while its vector or the whole function is
//! masked is remembered in the pending bits and sent on unmask, never lost.
//! It sends nothing itself; the owner turns a deliverable vector into a KVM
//! interrupt, which keeps this crate free of KVM.

/// The MSI-X capability id.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// The most vectors a table can hold: the table-size field is 11 bits.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Each table entry's size in bytes.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Message control: MSI-X is on (and INTx off).
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: every vector masked, whatever its own mask bit says.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: the table size, N - 1, read-only.
const CONTROL_TABLE_SIZE: u16 = 0x7ff;
/// Vector control: this vector is masked. The other 31 bits are reserved.
const VECTOR_MASKED: u32 = 1;
/// The capability's layout: id, next, message control, table, PBA.
const CAPABILITY_LEN: usize = 12;
/// Offsets inside the table and the PBA must leave bits 2:0 for the BIR.
const OFFSET_ALIGN: u32 = 8;

/// One table entry, as the guest last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixVector {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

/// What a write changed that the owner may need to act on (deliver pending
/// messages after an unmask, update a KVM route after an address change).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixChange {
    Nothing,
    /// Entry `n`'s address, data or mask bit changed.
    VectorChanged(u16),
    /// MSI-X was enabled or disabled, or the function mask changed.
    ControlChanged,
}

/// MSI-X: the capability's control bits, the table (in a BAR) and the
/// pending-bit array.
#[derive(Debug, Clone)]
pub struct MsixConfig {
    vectors: Vec<MsixVector>,
    /// One bit per vector, in the PBA's own layout (64 vectors a qword).
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixConfig {
    /// `vectors` entries, each masked with address and data zero, as after
    /// reset; MSI-X disabled.
    ///
    /// # Panics
    ///
    /// If `vectors` is not in 1..=2048: lg's mistake, not the guest's.
    pub fn new(vectors: u16) -> MsixConfig {
        assert!(
            (1..=MSIX_MAX_VECTORS).contains(&vectors),
            "MSI-X offers 1 to {MSIX_MAX_VECTORS} vectors, not {vectors}"
        );
        MsixConfig {
            vectors: vec![
                MsixVector {
                    address: 0,
                    data: 0,
                    masked: true,
                };
                usize::from(vectors)
            ],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    /// The capability body for `ConfigSpace::add_capability` and its write
    /// mask: only the enable and function-mask bits are the guest's to
    /// change. The table is at `table_offset` in BAR `table_bar`, the PBA at
    /// `pba_offset` in BAR `pba_bar`.
    ///
    /// # Panics
    ///
    /// If a BAR index is past 5 or an offset is not 8-byte aligned (its low
    /// three bits hold the BAR index).
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        for (bar, offset) in [(table_bar, table_offset), (pba_bar, pba_offset)] {
            assert!(
                bar < crate::BAR_COUNT,
                "MSI-X in BAR {bar}, which cannot exist"
            );
            assert!(
                offset % OFFSET_ALIGN == 0,
                "MSI-X offset {offset:#x} is not 8-byte aligned"
            );
        }
        let mut body = Vec::with_capacity(CAPABILITY_LEN);
        body.extend_from_slice(&[MSIX_CAPABILITY_ID, 0]);
        body.extend_from_slice(&self.message_control().to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        let mut mask = vec![0; CAPABILITY_LEN];
        mask[2..4].copy_from_slice(&(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes());
        (body, mask)
    }

    /// The guest wrote the capability: `control` is the message-control word
    /// now in configuration space (capability offset + 2).
    pub fn set_message_control(&mut self, control: u16) -> MsixChange {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return MsixChange::Nothing;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        MsixChange::ControlChanged
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// How many vectors the table has.
    pub fn vector_count(&self) -> u16 {
        self.vectors.len() as u16
    }

    /// The table's size in bytes, for laying out its BAR.
    pub fn table_len(&self) -> u64 {
        self.vectors.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// The PBA's size in bytes (whole qwords), for laying out its BAR.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The guest reads the table at `offset` from its start. Only aligned 4-
    /// and 8-byte reads inside the table are answered; anything else reads
    /// as all ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !is_aligned_access(offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            if let Some(word) = self.table_dword(offset + 4 * i as u64) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
        }
    }

    /// The guest writes the table. Only aligned 4- and 8-byte writes inside
    /// the table count; anything else is dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        if !is_aligned_access(offset, data.len()) {
            return MsixChange::Nothing;
        }
        let mut change = MsixChange::Nothing;
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if let Some(index) = self.write_table_dword(offset + 4 * i as u64, value) {
                change = MsixChange::VectorChanged(index);
            }
        }
        change
    }

    /// The guest reads the pending-bit array at `offset` from its start:
    /// aligned 4- and 8-byte reads inside it; anything else is all ones.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !is_aligned_access(offset, data.len()) {
            return;
        }
        let Some(&qword) = usize::try_from(offset / 8)
            .ok()
            .and_then(|index| self.pending.get(index))
        else {
            return;
        };
        let bytes = qword.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    pub fn vector(&self, index: u16) -> Option<&MsixVector> {
        self.vectors.get(usize::from(index))
    }

    /// The owner wants to signal `vector`. Returns whether to send its
    /// message now. If the vector or the whole function is masked, the
    /// message is held in the pending bit instead and `false` is returned;
    /// `take_pending_unmasked` hands it back after the unmask. With MSI-X
    /// disabled (or no such vector) nothing is held: the owner signals INTx
    /// instead, as the spec says a disabled function does.
    pub fn should_deliver(&mut self, vector: u16) -> bool {
        let Some(entry) = self.vectors.get(usize::from(vector)) else {
            return false;
        };
        if !self.enabled {
            return false;
        }
        if self.function_masked || entry.masked {
            self.pending[usize::from(vector / 64)] |= 1 << (vector % 64);
            return false;
        }
        true
    }

    /// After an unmask (a `VectorChanged` or `ControlChanged`): the vectors
    /// whose message was held and may now be sent. Their pending bits are
    /// cleared; the owner sends each one.
    pub fn take_pending_unmasked(&mut self) -> Vec<u16> {
        let mut ready = Vec::new();
        if !self.enabled || self.function_masked {
            return ready;
        }
        for (word_index, word) in self.pending.iter_mut().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let vector = word_index * 64 + bit as usize;
                if !self.vectors[vector].masked {
                    *word &= !(1 << bit);
                    ready.push(vector as u16);
                }
            }
        }
        ready
    }

    fn message_control(&self) -> u16 {
        let mut control = (self.vectors.len() as u16 - 1) & CONTROL_TABLE_SIZE;
        if self.enabled {
            control |= CONTROL_ENABLE;
        }
        if self.function_masked {
            control |= CONTROL_FUNCTION_MASK;
        }
        control
    }

    fn table_dword(&self, offset: u64) -> Option<u32> {
        let entry = self
            .vectors
            .get(usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?)?;
        Some(match offset % MSIX_ENTRY_SIZE {
            0 => entry.address as u32,
            4 => (entry.address >> 32) as u32,
            8 => entry.data,
            _ if entry.masked => VECTOR_MASKED,
            _ => 0,
        })
    }

    /// Writes one table dword; returns the vector if anything changed.
    fn write_table_dword(&mut self, offset: u64, value: u32) -> Option<u16> {
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let entry = self.vectors.get_mut(index)?;
        let before = *entry;
        match offset % MSIX_ENTRY_SIZE {
            0 => entry.address = (entry.address & !0xffff_ffff) | u64::from(value),
            4 => entry.address = (entry.address & 0xffff_ffff) | u64::from(value) << 32,
            8 => entry.data = value,
            _ => entry.masked = value & VECTOR_MASKED != 0,
        }
        (*entry != before).then_some(index as u16)
    }
}

/// The table and PBA take dword and qword accesses, naturally aligned, as
/// the PCI spec requires of software; Linux only ever uses dwords.
fn is_aligned_access(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset % len as u64 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write32(msix: &mut MsixConfig, offset: u64, value: u32) -> MsixChange {
        msix.write_table(offset, &value.to_le_bytes())
    }

    fn read32(msix: &MsixConfig, offset: u64) -> u32 {
        let mut data = [0; 4];
        msix.read_table(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn pba(msix: &MsixConfig) -> u64 {
        let mut data = [0; 8];
        msix.read_pba(0, &mut data);
        u64::from_le_bytes(data)
    }

    /// Programs vector `n` as Linux's `msix_prepare_msi_desc` and
    /// `pci_msi_domain_write_msg` do: address low, high, data, then unmask.
    fn program(msix: &mut MsixConfig, n: u16, data: u32) {
        let base = u64::from(n) * 16;
        let _ = write32(msix, base, 0xfee0_0000 | u32::from(n) << 12);
        let _ = write32(msix, base + 4, 0);
        let _ = write32(msix, base + 8, data);
        let _ = write32(msix, base + 12, 0);
    }

    #[test]
    fn the_capability_says_n_minus_one_and_where_the_table_is() {
        let msix = MsixConfig::new(5);
        let (body, mask) = msix.capability(2, 0x1000, 4, 0x2008);
        assert_eq!(body.len(), 12);
        assert_eq!(body[0], 0x11);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 4);
        assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()), 0x1002);
        assert_eq!(u32::from_le_bytes(body[8..12].try_into().unwrap()), 0x200c);
        assert_eq!(mask, vec![0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(msix.table_len(), 80);
        assert_eq!(msix.pba_len(), 8);
        assert_eq!(MsixConfig::new(2048).pba_len(), 256);
        let (body, _) = MsixConfig::new(2048).capability(0, 0, 0, 0x8000);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 0x7ff);
    }

    #[test]
    fn the_capability_works_through_config_space() {
        let msix = MsixConfig::new(3);
        let (body, mask) = msix.capability(0, 0, 0, 0x800);
        let mut space = crate::ConfigSpace::new(&crate::DeviceIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: 2,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 1,
        });
        let cap = u16::from(space.add_capability(&body, &mask));
        // Try to change the table size and offsets: only bits 15:14 move.
        let _ = space.write(cap + 2, &0xffffu16.to_le_bytes());
        let _ = space.write(cap + 4, &[0xff; 8]);
        assert_eq!(space.read_u16(cap + 2), 0xc002);
        assert_eq!(space.read_u32(cap + 4), 0);
        assert_eq!(space.read_u32(cap + 8), 0x800);
    }

    #[test]
    fn table_entries_read_back_and_start_masked() {
        let mut msix = MsixConfig::new(4);
        assert_eq!(read32(&msix, 3 * 16 + 12), 1);
        assert_eq!(
            write32(&mut msix, 16, 0xfee0_1000),
            MsixChange::VectorChanged(1)
        );
        assert_eq!(write32(&mut msix, 20, 0x1), MsixChange::VectorChanged(1));
        assert_eq!(write32(&mut msix, 24, 0x4021), MsixChange::VectorChanged(1));
        assert_eq!(
            write32(&mut msix, 28, 0xffff_fffe),
            MsixChange::VectorChanged(1)
        );
        // Unchanged: nothing to report.
        assert_eq!(write32(&mut msix, 24, 0x4021), MsixChange::Nothing);
        assert_eq!(read32(&msix, 16), 0xfee0_1000);
        assert_eq!(read32(&msix, 20), 1);
        assert_eq!(read32(&msix, 24), 0x4021);
        // Only the mask bit exists in vector control.
        assert_eq!(read32(&msix, 28), 0);
        assert_eq!(
            msix.vector(1),
            Some(&MsixVector {
                address: 0x1_fee0_1000,
                data: 0x4021,
                masked: false
            })
        );
        // A qword access covers address low and high at once.
        let mut qword = [0; 8];
        msix.read_table(16, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0x1_fee0_1000);
        assert_eq!(
            msix.write_table(32, &0x2_fee0_2000u64.to_le_bytes()),
            MsixChange::VectorChanged(2)
        );
        assert_eq!(msix.vector(2).unwrap().address, 0x2_fee0_2000);
    }

    #[test]
    fn odd_table_accesses_are_ignored_without_panicking() {
        let mut msix = MsixConfig::new(2);
        let before = msix.clone();
        for (offset, len) in [
            (0, 1),
            (0, 2),
            (1, 4),
            (4, 8),
            (32, 4),
            (u64::MAX - 3, 4),
            (0, 0),
        ] {
            let mut data = vec![0; len];
            msix.read_table(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "{offset:#x}/{len}");
            assert_eq!(msix.write_table(offset, &vec![0; len]), MsixChange::Nothing);
        }
        assert_eq!(msix.vectors, before.vectors);
        let mut data = [0; 4];
        msix.read_pba(8, &mut data);
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn enable_and_function_mask_follow_message_control() {
        let mut msix = MsixConfig::new(2);
        assert!(!msix.enabled());
        // Linux's msix_capability_init: enable with everything masked...
        assert_eq!(msix.set_message_control(0xc001), MsixChange::ControlChanged);
        assert!(msix.enabled() && msix.function_masked());
        assert_eq!(msix.set_message_control(0xc001), MsixChange::Nothing);
        // ...program the entries, then lift the function mask.
        assert_eq!(msix.set_message_control(0x8001), MsixChange::ControlChanged);
        assert!(msix.enabled() && !msix.function_masked());
    }

    #[test]
    fn masked_vectors_hold_their_message_until_unmasked() {
        let mut msix = MsixConfig::new(70);
        let _ = msix.set_message_control(CONTROL_ENABLE);
        program(&mut msix, 1, 0x41);
        assert!(msix.should_deliver(1));
        // Vectors 0 and 65 are still masked from reset.
        assert!(!msix.should_deliver(0));
        assert!(!msix.should_deliver(65));
        assert_eq!(pba(&msix), 1);
        let mut high = [0; 4];
        msix.read_pba(8, &mut high);
        assert_eq!(u32::from_le_bytes(high), 2);
        // Nothing is unmasked yet, so nothing is ready.
        assert!(msix.take_pending_unmasked().is_empty());
        assert_eq!(
            write32(&mut msix, 65 * 16 + 12, 0),
            MsixChange::VectorChanged(65)
        );
        assert_eq!(msix.take_pending_unmasked(), vec![65]);
        assert_eq!(pba(&msix), 1, "vector 0 stays pending");
        assert!(msix.take_pending_unmasked().is_empty());
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let mut msix = MsixConfig::new(3);
        let _ = msix.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        program(&mut msix, 0, 0x30);
        program(&mut msix, 2, 0x32);
        assert!(!msix.should_deliver(0));
        assert!(!msix.should_deliver(2));
        assert!(!msix.should_deliver(2));
        assert!(msix.take_pending_unmasked().is_empty());
        assert_eq!(pba(&msix), 0b101);
        let _ = msix.set_message_control(CONTROL_ENABLE);
        assert_eq!(msix.take_pending_unmasked(), vec![0, 2]);
        assert_eq!(pba(&msix), 0);
        assert!(msix.should_deliver(2));
    }

    #[test]
    fn a_disabled_function_holds_nothing() {
        let mut msix = MsixConfig::new(1);
        program(&mut msix, 0, 0x30);
        assert!(!msix.should_deliver(0));
        assert!(!msix.should_deliver(1), "no such vector");
        assert_eq!(pba(&msix), 0);
        let _ = msix.set_message_control(CONTROL_ENABLE);
        assert!(msix.take_pending_unmasked().is_empty());
        assert!(msix.should_deliver(0));
    }

    #[test]
    #[should_panic(expected = "1 to 2048")]
    fn zero_vectors_is_refused() {
        let _ = MsixConfig::new(0);
    }
}
