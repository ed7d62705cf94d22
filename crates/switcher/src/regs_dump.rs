//! A vCPU's registers as a kernel developer reads them, for `lg regs`.
//!
//! When a guest hangs, the first question is where it is and in what mode:
//! the instruction pointer, the stack, which paging and protection features
//! the kernel turned on, which segment bases hold per-CPU data. KVM hands
//! these over as two structs of numbers; this module lays them out the way
//! the kernel's own oops (`__show_regs`) and gdb's `info registers` do, so
//! they can be compared with a crash log at a glance, and names every set
//! control bit so nobody has to look up what `CR4: 00000000003706f0` means.
//!
//! Only set bits are named, highest first, as gdb does (`[ IF ZF PF ]`); a
//! set bit without a name is shown as `bitN` rather than hidden.

use std::fmt::Write as _;

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

/// Bits of RFLAGS, by position. Bit 1 is always set and IOPL is a two-bit
/// number; both are handled apart.
const RFLAGS_BITS: &[(u32, &str)] = &[
    (0, "CF"),
    (2, "PF"),
    (4, "AF"),
    (6, "ZF"),
    (7, "SF"),
    (8, "TF"),
    (9, "IF"),
    (10, "DF"),
    (11, "OF"),
    (14, "NT"),
    (16, "RF"),
    (17, "VM"),
    (18, "AC"),
    (19, "VIF"),
    (20, "VIP"),
    (21, "ID"),
];
const RFLAGS_ALWAYS_ONE: u64 = 1 << 1;
const RFLAGS_IOPL_SHIFT: u32 = 12;
const RFLAGS_IOPL_MASK: u64 = 0b11 << RFLAGS_IOPL_SHIFT;

const CR0_BITS: &[(u32, &str)] = &[
    (0, "PE"),
    (1, "MP"),
    (2, "EM"),
    (3, "TS"),
    (4, "ET"),
    (5, "NE"),
    (16, "WP"),
    (18, "AM"),
    (29, "NW"),
    (30, "CD"),
    (31, "PG"),
];

const CR4_BITS: &[(u32, &str)] = &[
    (0, "VME"),
    (1, "PVI"),
    (2, "TSD"),
    (3, "DE"),
    (4, "PSE"),
    (5, "PAE"),
    (6, "MCE"),
    (7, "PGE"),
    (8, "PCE"),
    (9, "OSFXSR"),
    (10, "OSXMMEXCPT"),
    (11, "UMIP"),
    (12, "LA57"),
    (13, "VMXE"),
    (14, "SMXE"),
    (16, "FSGSBASE"),
    (17, "PCIDE"),
    (18, "OSXSAVE"),
    (19, "KL"),
    (20, "SMEP"),
    (21, "SMAP"),
    (22, "PKE"),
    (23, "CET"),
    (24, "PKS"),
    (25, "UINTR"),
    (28, "LAM_SUP"),
];

const EFER_BITS: &[(u32, &str)] = &[
    (0, "SCE"),
    (8, "LME"),
    (10, "LMA"),
    (11, "NXE"),
    (12, "SVME"),
    (13, "LMSLE"),
    (14, "FFXSR"),
    (15, "TCE"),
    (21, "AUTOIBRS"),
];

/// The flag bits of the IA32_APIC_BASE MSR; bits 12 and up are the
/// APIC's physical address, not flags.
const APIC_BASE_BITS: &[(u32, &str)] = &[(8, "BSP"), (10, "EXTD"), (11, "EN")];
const APIC_BASE_ADDRESS_MASK: u64 = !0xfff;

/// The registers of one vCPU, one group per line, ending in `\n`.
pub fn format_registers(regs: &kvm_regs, sregs: &kvm_sregs) -> String {
    let mut out = String::new();
    // writeln! into a String cannot fail.
    let _ = writeln!(
        out,
        "RIP: {:04x}:{:016x} RFLAGS: {:08x} {}",
        sregs.cs.selector,
        regs.rip,
        regs.rflags,
        rflags_names(regs.rflags)
    );
    let _ = writeln!(out, "RSP: {:04x}:{:016x}", sregs.ss.selector, regs.rsp);
    let general = [
        ("RAX", regs.rax),
        ("RBX", regs.rbx),
        ("RCX", regs.rcx),
        ("RDX", regs.rdx),
        ("RSI", regs.rsi),
        ("RDI", regs.rdi),
        ("RBP", regs.rbp),
        ("R08", regs.r8),
        ("R09", regs.r9),
        ("R10", regs.r10),
        ("R11", regs.r11),
        ("R12", regs.r12),
        ("R13", regs.r13),
        ("R14", regs.r14),
        ("R15", regs.r15),
    ];
    for line in general.chunks(3) {
        let cells: Vec<String> = line
            .iter()
            .map(|(name, value)| format!("{name}: {value:016x}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" "));
    }
    let segments = [
        ("CS", &sregs.cs),
        ("DS", &sregs.ds),
        ("ES", &sregs.es),
        ("FS", &sregs.fs),
        ("GS", &sregs.gs),
        ("SS", &sregs.ss),
        ("TR", &sregs.tr),
        ("LDTR", &sregs.ldt),
    ];
    for (name, segment) in segments {
        let _ = writeln!(out, "{}", format_segment(name, segment));
    }
    let _ = writeln!(
        out,
        "{}   {}",
        format_table("GDT", &sregs.gdt),
        format_table("IDT", &sregs.idt)
    );
    let _ = writeln!(
        out,
        "CR0: {:016x} {}",
        sregs.cr0,
        bit_names(sregs.cr0, CR0_BITS, 0)
    );
    let _ = writeln!(
        out,
        "CR2: {:016x} CR3: {:016x} CR8: {:016x}",
        sregs.cr2, sregs.cr3, sregs.cr8
    );
    let _ = writeln!(
        out,
        "CR4: {:016x} {}",
        sregs.cr4,
        bit_names(sregs.cr4, CR4_BITS, 0)
    );
    let _ = writeln!(
        out,
        "EFER: {:016x} {}",
        sregs.efer,
        bit_names(sregs.efer, EFER_BITS, 0)
    );
    let _ = writeln!(
        out,
        "APIC base: {:016x} {}",
        sregs.apic_base,
        bit_names(sregs.apic_base, APIC_BASE_BITS, APIC_BASE_ADDRESS_MASK)
    );
    let pending = pending_interrupts(&sregs.interrupt_bitmap);
    if !pending.is_empty() {
        let _ = writeln!(out, "Pending interrupt vectors: {pending}");
    }
    out
}

/// One segment register as the hidden part of it that the CPU really uses:
/// base, limit and the attribute bits of its descriptor.
fn format_segment(name: &str, segment: &kvm_segment) -> String {
    let mut line = format!(
        "{:<5} {:04x} base {:016x} limit {:08x} type {:x} s{} dpl{} p{} l{} db{} g{}",
        format!("{name}:"),
        segment.selector,
        segment.base,
        segment.limit,
        segment.type_,
        segment.s,
        segment.dpl,
        segment.present,
        segment.l,
        segment.db,
        segment.g,
    );
    if segment.avl != 0 {
        line.push_str(" avl1");
    }
    if segment.unusable != 0 {
        line.push_str(" unusable");
    }
    line
}

fn format_table(name: &str, table: &kvm_dtable) -> String {
    format!("{name}: base {:016x} limit {:04x}", table.base, table.limit)
}

fn rflags_names(rflags: u64) -> String {
    let mut names = set_bits(rflags, RFLAGS_BITS, RFLAGS_ALWAYS_ONE | RFLAGS_IOPL_MASK);
    let iopl = (rflags & RFLAGS_IOPL_MASK) >> RFLAGS_IOPL_SHIFT;
    if iopl != 0 {
        names.push((RFLAGS_IOPL_SHIFT, format!("IOPL={iopl}")));
    }
    bracketed(names)
}

/// `[ NAME ... ]` for each set bit of `value` outside `ignored`.
fn bit_names(value: u64, known: &[(u32, &str)], ignored: u64) -> String {
    bracketed(set_bits(value, known, ignored))
}

fn set_bits(value: u64, known: &[(u32, &str)], ignored: u64) -> Vec<(u32, String)> {
    (0..64)
        .filter(|bit| value & !ignored & (1 << bit) != 0)
        .map(|bit| {
            let name = known
                .iter()
                .find(|(position, _)| *position == bit)
                .map_or_else(|| format!("bit{bit}"), |(_, name)| name.to_string());
            (bit, name)
        })
        .collect()
}

/// Highest bit first, as gdb prints flags.
fn bracketed(mut names: Vec<(u32, String)>) -> String {
    names.sort_by_key(|(bit, _)| std::cmp::Reverse(*bit));
    let mut text = String::from("[ ");
    for (_, name) in names {
        text.push_str(&name);
        text.push(' ');
    }
    text.push(']');
    text
}

/// The vectors KVM holds for injection, from its 256-bit bitmap.
fn pending_interrupts(bitmap: &[u64; 4]) -> String {
    let vectors: Vec<String> = (0..256usize)
        .filter(|vector| bitmap[vector / 64] & (1 << (vector % 64)) != 0)
        .map(|vector| format!("{vector:#04x}"))
        .collect();
    vectors.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit kernel caught in its idle loop, as a crash log would show it.
    fn idle_kernel() -> (kvm_regs, kvm_sregs) {
        let regs = kvm_regs {
            rip: 0xffff_ffff_81a2_b3c4,
            rflags: 0x246,
            rsp: 0xffff_c900_0000_3f28,
            rax: 0x1,
            r8: 0x8,
            r15: 0xffff_8880_0000_0015,
            ..Default::default()
        };
        let code = kvm_segment {
            selector: 0x10,
            limit: 0xffff_ffff,
            type_: 0xb,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: 0x18,
            limit: 0xffff_ffff,
            type_: 0x3,
            present: 1,
            s: 1,
            db: 1,
            g: 1,
            ..Default::default()
        };
        let sregs = kvm_sregs {
            cs: code,
            ds: data,
            es: data,
            ss: data,
            fs: kvm_segment {
                selector: 0,
                ..data
            },
            gs: kvm_segment {
                selector: 0,
                base: 0xffff_8880_7dc0_0000,
                ..data
            },
            ldt: kvm_segment {
                unusable: 1,
                ..Default::default()
            },
            gdt: kvm_dtable {
                base: 0xffff_fe00_0000_1000,
                limit: 0x7f,
                ..Default::default()
            },
            idt: kvm_dtable {
                base: 0xffff_fe00_0000_0000,
                limit: 0xfff,
                ..Default::default()
            },
            cr0: 0x8005_0033,
            cr3: 0x1c1_0000,
            cr4: 0x0037_06f0,
            efer: 0xd01,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        (regs, sregs)
    }

    fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starts with {prefix:?} in\n{text}"))
    }

    #[test]
    fn rip_line_reads_like_an_oops() {
        let (regs, sregs) = idle_kernel();
        let text = format_registers(&regs, &sregs);
        assert_eq!(
            text.lines().next().unwrap(),
            "RIP: 0010:ffffffff81a2b3c4 RFLAGS: 00000246 [ IF ZF PF ]"
        );
        assert_eq!(text.lines().nth(1).unwrap(), "RSP: 0018:ffffc90000003f28");
    }

    #[test]
    fn general_registers_are_sixteen_hex_digits_three_a_line() {
        let (regs, sregs) = idle_kernel();
        let text = format_registers(&regs, &sregs);
        assert_eq!(
            line_starting(&text, "RAX:"),
            "RAX: 0000000000000001 RBX: 0000000000000000 RCX: 0000000000000000"
        );
        assert_eq!(
            line_starting(&text, "RBP:"),
            "RBP: 0000000000000000 R08: 0000000000000008 R09: 0000000000000000"
        );
        assert_eq!(
            line_starting(&text, "R13:"),
            "R13: 0000000000000000 R14: 0000000000000000 R15: ffff888000000015"
        );
    }

    #[test]
    fn segments_show_their_hidden_parts() {
        let (regs, sregs) = idle_kernel();
        let text = format_registers(&regs, &sregs);
        assert_eq!(
            line_starting(&text, "CS:"),
            "CS:   0010 base 0000000000000000 limit ffffffff type b s1 dpl0 p1 l1 db0 g1"
        );
        assert_eq!(
            line_starting(&text, "GS:"),
            "GS:   0000 base ffff88807dc00000 limit ffffffff type 3 s1 dpl0 p1 l0 db1 g1"
        );
        assert!(line_starting(&text, "LDTR:").ends_with(" unusable"));
        assert_eq!(
            line_starting(&text, "GDT:"),
            "GDT: base fffffe0000001000 limit 007f   IDT: base fffffe0000000000 limit 0fff"
        );
    }

    #[test]
    fn control_registers_name_their_set_bits() {
        let (regs, sregs) = idle_kernel();
        let text = format_registers(&regs, &sregs);
        assert_eq!(
            line_starting(&text, "CR0:"),
            "CR0: 0000000080050033 [ PG AM WP NE ET MP PE ]"
        );
        assert_eq!(
            line_starting(&text, "CR2:"),
            "CR2: 0000000000000000 CR3: 0000000001c10000 CR8: 0000000000000000"
        );
        assert_eq!(
            line_starting(&text, "CR4:"),
            "CR4: 00000000003706f0 [ SMAP SMEP OSXSAVE PCIDE FSGSBASE OSXMMEXCPT OSFXSR PGE MCE PAE PSE ]"
        );
        assert_eq!(
            line_starting(&text, "EFER:"),
            "EFER: 0000000000000d01 [ NXE LMA LME SCE ]"
        );
        assert_eq!(
            line_starting(&text, "APIC base:"),
            "APIC base: 00000000fee00900 [ EN BSP ]"
        );
        assert!(!text.contains("Pending"));
    }

    #[test]
    fn every_cr4_feature_has_its_name() {
        let sregs = kvm_sregs {
            cr4: CR4_BITS.iter().fold(0, |cr4, (bit, _)| cr4 | 1 << bit),
            ..Default::default()
        };
        let text = format_registers(&kvm_regs::default(), &sregs);
        let line = line_starting(&text, "CR4:");
        for (_, name) in CR4_BITS {
            assert!(line.contains(&format!(" {name} ")), "{name} in {line}");
        }
        assert!(line.contains("[ LAM_SUP UINTR PKS CET PKE SMAP"), "{line}");
        assert!(!line.contains("bit"), "{line}");
    }

    #[test]
    fn unnamed_bits_are_shown_not_hidden() {
        let sregs = kvm_sregs {
            cr0: 1 << 31 | 1 << 7,
            ..Default::default()
        };
        let text = format_registers(&kvm_regs::default(), &sregs);
        assert_eq!(
            line_starting(&text, "CR0:"),
            "CR0: 0000000080000080 [ PG bit7 ]"
        );
    }

    #[test]
    fn rflags_shows_iopl_as_a_number_and_nothing_for_nothing() {
        let regs = kvm_regs {
            rflags: 0x3002 | 1 << 21 | 1 << 17 | 1,
            ..Default::default()
        };
        let text = format_registers(&regs, &kvm_sregs::default());
        assert_eq!(
            text.lines().next().unwrap(),
            "RIP: 0000:0000000000000000 RFLAGS: 00223003 [ ID VM IOPL=3 CF ]"
        );
        let regs = kvm_regs {
            rflags: 0x2,
            ..Default::default()
        };
        let text = format_registers(&regs, &kvm_sregs::default());
        assert!(text.starts_with("RIP: 0000:0000000000000000 RFLAGS: 00000002 [ ]\n"));
    }

    #[test]
    fn apic_address_bits_are_not_flags() {
        let sregs = kvm_sregs {
            apic_base: 0xfee0_0000 | 1 << 11 | 1 << 10,
            ..Default::default()
        };
        let text = format_registers(&kvm_regs::default(), &sregs);
        assert_eq!(
            line_starting(&text, "APIC base:"),
            "APIC base: 00000000fee00c00 [ EN EXTD ]"
        );
    }

    #[test]
    fn pending_interrupts_are_listed_only_when_there_are_some() {
        let mut sregs = kvm_sregs::default();
        sregs.interrupt_bitmap[0] = 1 << 0x30;
        sregs.interrupt_bitmap[3] = 1 << (0xec - 192);
        let text = format_registers(&kvm_regs::default(), &sregs);
        assert_eq!(
            line_starting(&text, "Pending"),
            "Pending interrupt vectors: 0x30 0xec"
        );
    }

    #[test]
    fn every_line_ends_with_a_newline() {
        let (regs, sregs) = idle_kernel();
        let text = format_registers(&regs, &sregs);
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 21);
    }
}
