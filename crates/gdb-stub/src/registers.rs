//! A vCPU's registers in gdb's layout, and back.
//!
//! gdb's x86-64 target description (`64bit-core.xml` and `64bit-sse.xml`,
//! which `gdbstub_arch` encodes) wants the sixteen general registers in
//! its own order, RIP, a 32-bit EFLAGS, six segment selectors, the x87
//! stack, the x87 control words, XMM0-15 and MXCSR. KVM keeps them in three
//! structs: `kvm_regs`, `kvm_sregs` and `kvm_fpu` (the FXSAVE image). This
//! module is the one place the two meet.
//!
//! Two details need care. The x87 tag word: FXSAVE keeps only one bit per
//! register ("in use"), gdb wants the full two-bit tag, which the CPU would
//! derive from each register's value, so it is derived here the same way
//! (as gdb's own `i387_supply_fxsave` does). And segment selectors: on a
//! real CPU, loading a selector also loads the hidden base, limit and
//! attributes from the descriptor table, so a selector gdb writes is looked
//! up in the guest's GDT ([`load_segment`]) rather than set alone.

use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs, X87FpuInternalRegs};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

/// gdb's registers from KVM's.
pub fn to_gdb(regs: &kvm_regs, sregs: &kvm_sregs, fpu: &kvm_fpu) -> X86_64CoreRegs {
    let mut st = [[0u8; 10]; 8];
    for (st, fpr) in st.iter_mut().zip(&fpu.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    X86_64CoreRegs {
        regs: [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        // The upper half of RFLAGS is reserved (always zero).
        eflags: regs.rflags as u32,
        rip: regs.rip,
        segments: X86SegmentRegs {
            cs: u32::from(sregs.cs.selector),
            ss: u32::from(sregs.ss.selector),
            ds: u32::from(sregs.ds.selector),
            es: u32::from(sregs.es.selector),
            fs: u32::from(sregs.fs.selector),
            gs: u32::from(sregs.gs.selector),
        },
        st,
        fpu: X87FpuInternalRegs {
            fctrl: u32::from(fpu.fcw),
            fstat: u32::from(fpu.fsw),
            ftag: full_tag_word(fpu),
            // In 64-bit FXSAVE the instruction and operand pointers are
            // 64 bits, and gdb's amd64 layout keeps their top halves where
            // the selectors were.
            fiseg: (fpu.last_ip >> 32) as u32,
            fioff: fpu.last_ip as u32,
            foseg: (fpu.last_dp >> 32) as u32,
            fooff: fpu.last_dp as u32,
            fop: u32::from(fpu.last_opcode),
        },
        xmm: fpu.xmm.map(u128::from_le_bytes),
        mxcsr: fpu.mxcsr,
    }
}

/// KVM's general and FPU registers with gdb's values put in. Segments are
/// [`changed_segments`]' business.
pub fn from_gdb(gdb: &X86_64CoreRegs, regs: &mut kvm_regs, fpu: &mut kvm_fpu) {
    let r = &gdb.regs;
    (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (r[0], r[1], r[2], r[3]);
    (regs.rsi, regs.rdi, regs.rbp, regs.rsp) = (r[4], r[5], r[6], r[7]);
    (regs.r8, regs.r9, regs.r10, regs.r11) = (r[8], r[9], r[10], r[11]);
    (regs.r12, regs.r13, regs.r14, regs.r15) = (r[12], r[13], r[14], r[15]);
    regs.rip = gdb.rip;
    // Bit 1 is always set; the CPU refuses RFLAGS without it.
    regs.rflags = u64::from(gdb.eflags) | 0x2;
    for (fpr, st) in fpu.fpr.iter_mut().zip(&gdb.st) {
        fpr[..10].copy_from_slice(st);
    }
    fpu.fcw = gdb.fpu.fctrl as u16;
    fpu.fsw = gdb.fpu.fstat as u16;
    fpu.ftwx = abridged_tag(gdb.fpu.ftag);
    fpu.last_ip = (u64::from(gdb.fpu.fiseg) << 32) | u64::from(gdb.fpu.fioff);
    fpu.last_dp = (u64::from(gdb.fpu.foseg) << 32) | u64::from(gdb.fpu.fooff);
    fpu.last_opcode = gdb.fpu.fop as u16;
    fpu.xmm = gdb.xmm.map(u128::to_le_bytes);
    fpu.mxcsr = gdb.mxcsr;
}

/// The segment registers, by name, as gdb orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Cs,
    Ss,
    Ds,
    Es,
    Fs,
    Gs,
}

impl Segment {
    pub fn of(self, sregs: &mut kvm_sregs) -> &mut kvm_segment {
        match self {
            Segment::Cs => &mut sregs.cs,
            Segment::Ss => &mut sregs.ss,
            Segment::Ds => &mut sregs.ds,
            Segment::Es => &mut sregs.es,
            Segment::Fs => &mut sregs.fs,
            Segment::Gs => &mut sregs.gs,
        }
    }
}

/// The selectors gdb changed, with their new values.
pub fn changed_segments(gdb: &X86_64CoreRegs, sregs: &kvm_sregs) -> Vec<(Segment, u16)> {
    let s = &gdb.segments;
    [
        (Segment::Cs, s.cs, sregs.cs.selector),
        (Segment::Ss, s.ss, sregs.ss.selector),
        (Segment::Ds, s.ds, sregs.ds.selector),
        (Segment::Es, s.es, sregs.es.selector),
        (Segment::Fs, s.fs, sregs.fs.selector),
        (Segment::Gs, s.gs, sregs.gs.selector),
    ]
    .into_iter()
    .filter(|&(_, new, old)| new != u32::from(old))
    .map(|(segment, new, _)| (segment, new as u16))
    .collect()
}

/// Loads `selector` into `segment` as the CPU's `mov` to a segment register
/// would: its descriptor is read from the GDT (through `read_descriptor`,
/// given the descriptor's virtual address) and decoded. Null selectors make
/// a data segment unusable; LDT selectors are refused (Linux uses none in
/// the kernel), as is anything the CPU would fault on.
pub fn load_segment(
    segment: Segment,
    selector: u16,
    sregs: &kvm_sregs,
    read_descriptor: impl FnOnce(u64) -> Result<u64, String>,
) -> Result<kvm_segment, String> {
    const TABLE_INDICATOR: u16 = 1 << 2;
    if selector & TABLE_INDICATOR != 0 {
        return Err(format!(
            "selector {selector:#x} is in an LDT; lg loads segments from the GDT only"
        ));
    }
    let index = u64::from(selector >> 3);
    if index == 0 {
        if segment == Segment::Cs {
            return Err("CS cannot hold the null selector".into());
        }
        return Ok(kvm_segment {
            selector,
            unusable: 1,
            ..Default::default()
        });
    }
    if index * 8 + 7 > u64::from(sregs.gdt.limit) {
        return Err(format!(
            "selector {selector:#x} is past the end of the GDT (limit {:#x})",
            sregs.gdt.limit
        ));
    }
    let descriptor = read_descriptor(sregs.gdt.base.wrapping_add(index * 8))?;
    let loaded = switcher::cpu::segment(selector, descriptor);
    if loaded.present == 0 {
        return Err(format!(
            "the descriptor of selector {selector:#x} is not present"
        ));
    }
    if loaded.s == 0 {
        return Err(format!(
            "selector {selector:#x} names a system descriptor, not a code or data segment"
        ));
    }
    Ok(loaded)
}

/// Tags in the full x87 tag word.
const TAG_VALID: u32 = 0b00;
const TAG_ZERO: u32 = 0b01;
const TAG_SPECIAL: u32 = 0b10;
const TAG_EMPTY: u32 = 0b11;

/// The full tag word from FXSAVE's abridged one: an empty register is
/// empty; a used one is tagged by its value. The abridged bits are by
/// physical register, the values by stack position (ST(i) is physical
/// register TOP + i).
fn full_tag_word(fpu: &kvm_fpu) -> u32 {
    let top = (u32::from(fpu.fsw) >> 11) & 7;
    let mut word = 0;
    for physical in 0..8u32 {
        let tag = if fpu.ftwx & (1 << physical) == 0 {
            TAG_EMPTY
        } else {
            let st = ((physical + 8 - top) % 8) as usize;
            tag_of(&fpu.fpr[st])
        };
        word |= tag << (physical * 2);
    }
    word
}

/// How the CPU tags an 80-bit value in use.
fn tag_of(value: &[u8; 16]) -> u32 {
    let exponent = u16::from_le_bytes([value[8], value[9]]) & 0x7fff;
    let mantissa = u64::from_le_bytes(value[..8].try_into().unwrap_or([0; 8]));
    match exponent {
        0x7fff => TAG_SPECIAL,
        0 if mantissa == 0 => TAG_ZERO,
        0 => TAG_SPECIAL,
        _ if mantissa >> 63 == 1 => TAG_VALID,
        _ => TAG_SPECIAL,
    }
}

/// FXSAVE's abridged tag: one "in use" bit per register.
fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0, |bits, physical| {
        if (full >> (physical * 2)) & 3 == TAG_EMPTY {
            bits
        } else {
            bits | 1 << physical
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (kvm_regs, kvm_sregs, kvm_fpu) {
        let regs = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rbp: 7,
            rsp: 8,
            r8: 9,
            r15: 16,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x10;
        sregs.ss.selector = 0x18;
        sregs.gs.selector = 0x2b;
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x3800, // TOP = 7
            ftwx: 0b1000_0001,
            last_ip: 0x1234_5678_9abc_def0,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.xmm[3] = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_le_bytes();
        // ST(0) is physical register 7: 1.0 (exponent 0x3fff, integer bit).
        fpu.fpr[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        // ST(1) is physical register 0: zero.
        (regs, sregs, fpu)
    }

    #[test]
    fn general_registers_come_in_gdbs_order() {
        let (regs, sregs, fpu) = sample();
        let gdb = to_gdb(&regs, &sregs, &fpu);
        assert_eq!(gdb.regs[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((gdb.regs[8], gdb.regs[15]), (9, 16));
        assert_eq!(gdb.rip, 0xffff_ffff_8100_0000);
        assert_eq!(gdb.eflags, 0x246);
        assert_eq!(
            (gdb.segments.cs, gdb.segments.ss, gdb.segments.gs),
            (0x10, 0x18, 0x2b)
        );
        assert_eq!(gdb.xmm[3], 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        assert_eq!((gdb.fpu.fiseg, gdb.fpu.fioff), (0x1234_5678, 0x9abc_def0));
        assert_eq!(gdb.mxcsr, 0x1f80);
    }

    #[test]
    fn the_tag_word_is_derived_from_the_values() {
        let (regs, sregs, fpu) = sample();
        let gdb = to_gdb(&regs, &sregs, &fpu);
        // Physical 7 holds 1.0 (valid), physical 0 holds 0.0 (zero), the
        // rest are empty.
        let expected = (TAG_VALID << 14) | TAG_ZERO | 0b11_1111_1111_1100;
        assert_eq!(gdb.fpu.ftag, expected);
        assert_eq!(abridged_tag(expected), 0b1000_0001);
        assert_eq!(abridged_tag(0xffff), 0);
    }

    #[test]
    fn what_gdb_reads_it_can_write_back_unchanged() {
        let (regs, sregs, fpu) = sample();
        let gdb = to_gdb(&regs, &sregs, &fpu);
        let (mut regs2, mut fpu2) = (kvm_regs::default(), fpu);
        fpu2.xmm = Default::default();
        from_gdb(&gdb, &mut regs2, &mut fpu2);
        assert_eq!(regs2, regs);
        assert_eq!(fpu2, fpu);
        assert!(changed_segments(&gdb, &sregs).is_empty());
        let mut edited = gdb.clone();
        edited.segments.ds = 0x18;
        edited.eflags = 0;
        assert_eq!(changed_segments(&edited, &sregs), [(Segment::Ds, 0x18)]);
        from_gdb(&edited, &mut regs2, &mut fpu2);
        assert_eq!(regs2.rflags, 0x2);
    }

    /// A GDT as the kernel's: null, then flat 64-bit code at 0x10 and data at 0x18.
    fn gdt_sregs() -> kvm_sregs {
        let mut sregs = kvm_sregs::default();
        sregs.gdt.base = 0xffff_fe00_0000_1000;
        sregs.gdt.limit = 4 * 8 - 1;
        sregs
    }

    fn descriptor_at(address: u64) -> Result<u64, String> {
        match address {
            0xffff_fe00_0000_1010 => Ok(0x00af_9b00_0000_ffff),
            0xffff_fe00_0000_1018 => Ok(0x00cf_9300_0000_ffff),
            0xffff_fe00_0000_1008 => Ok(0x00cf_1300_0000_ffff), // not present
            other => Err(format!("unexpected read at {other:#x}")),
        }
    }

    #[test]
    fn a_selector_loads_its_descriptor_from_the_gdt() {
        let sregs = gdt_sregs();
        let cs = load_segment(Segment::Cs, 0x10, &sregs, descriptor_at).unwrap();
        assert_eq!((cs.selector, cs.l, cs.present, cs.type_), (0x10, 1, 1, 0xb));
        let ds = load_segment(Segment::Ds, 0x18, &sregs, descriptor_at).unwrap();
        assert_eq!((ds.db, ds.limit, ds.type_), (1, 0xffff_ffff, 0x3));
        let null = load_segment(Segment::Gs, 0, &sregs, descriptor_at).unwrap();
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn selectors_the_cpu_would_fault_on_are_refused() {
        let sregs = gdt_sregs();
        let refused =
            |segment, selector| load_segment(segment, selector, &sregs, descriptor_at).unwrap_err();
        assert!(refused(Segment::Cs, 0).contains("null"));
        assert!(refused(Segment::Ds, 0x1c).contains("LDT"));
        assert!(refused(Segment::Ds, 0x20).contains("past the end"));
        assert!(refused(Segment::Ds, 0x08).contains("not present"));
    }
}
