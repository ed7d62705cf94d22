//! Each vCPU: what CPUID tells the guest, and where the boot CPU starts.
//!
//! The Linux x86 boot protocol's 64-bit entry asks for a CPU already in long
//! mode: paging on with an identity map covering the kernel, the zero page
//! and the command line; a GDT whose selectors 0x10 and 0x18 are flat code
//! and data segments; interrupts off; and `%rsi` pointing at the zero page.
//! Firmware would normally get the CPU there through real and protected mode;
//! lg simply sets the registers, which is why a guest starts in milliseconds.

use hcall_abi::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_TOP,
    RESET_VECTOR_ADDR,
};
use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use shadow_mmu::{GuestAddress, GuestMemory};

use crate::vm::SwitcherError;

/// Where the boot CPU starts: what the kernel loader decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// The kernel's 64-bit entry point (`startup_64`), loaded into RIP.
    pub entry: GuestAddress,
    /// The zero page, passed in RSI.
    pub boot_params: GuestAddress,
    /// The identity-mapped boot page tables, loaded into CR3.
    pub page_table_root: GuestAddress,
}

/// One virtual CPU, ready for `KVM_RUN`.
pub struct Vcpu {
    pub(crate) fd: VcpuFd,
    pub(crate) index: u8,
}

impl Vcpu {
    /// The vCPU's number, which is also its APIC id.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Puts this vCPU (the boot CPU, made by
    /// [`Vm::create_vcpus_unstarted`](crate::Vm::create_vcpus_unstarted))
    /// in long mode at the kernel's entry.
    pub fn enter(&self, entry: &EntryState) -> Result<(), SwitcherError> {
        set_entry_state(&self.fd, entry)
    }
}

// The boot GDT's selectors, as the boot protocol names them.
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

// Descriptor access and flag bits in the layout `gdt_entry` takes: the
// access byte in bits 0-7, the flags nibble (G, D/B, L, AVL) in bits 12-15.
const CODE64_FLAGS: u16 = 0xa09b; // G, L; present, ring 0, code, execute/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, D/B; present, ring 0, data, read/write, accessed
const TSS_FLAGS: u16 = 0x808b; // G; present, ring 0, busy 64-bit TSS

const FLAT_LIMIT: u32 = 0xfffff;

/// The boot GDT: two null descriptors so the code and data segments land at
/// the selectors the protocol names, then code, data and a TSS.
fn boot_gdt() -> [u64; 5] {
    [
        0,
        0,
        gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
        gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),
        gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT),
    ]
}

/// Encodes a segment descriptor in the x86's scattered bit layout.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (base, limit, flags) = (u64::from(base), u64::from(limit), u64::from(flags));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The segment register contents KVM needs for a descriptor: what the CPU
/// loads into a segment register's hidden part (also how the gdb stub
/// loads a selector gdb writes).
pub fn segment(selector: u16, descriptor: u64) -> kvm_segment {
    let granular = (descriptor >> 55) & 1 == 1;
    let raw_limit = (((descriptor >> 32) & 0x000f_0000) | (descriptor & 0xffff)) as u32;
    kvm_segment {
        base: (((descriptor >> 32) & 0xff00_0000) | ((descriptor >> 16) & 0x00ff_ffff)),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: ((descriptor >> 47) & 1) as u8,
        dpl: ((descriptor >> 45) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((descriptor >> 44) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((descriptor >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT into guest memory. The kernel
/// reloads both early, but the CPU must have valid ones until it does.
pub(crate) fn write_boot_gdt(mem: &GuestMemory) -> Result<(), SwitcherError> {
    for (i, descriptor) in boot_gdt().iter().enumerate() {
        mem.write_obj(GuestAddress(BOOT_GDT_ADDR + 8 * i as u64), descriptor)?;
    }
    mem.write_obj(GuestAddress(BOOT_IDT_ADDR), &0u64)?;
    Ok(())
}

/// The only firmware lg has: real-mode code at the reset vector that asks
/// for a reset through the ACPI reset register, then halts. Linux reboots by
/// jumping here when nothing better is offered (see `RESET_VECTOR_ADDR`);
/// without it the vCPU would run through zeroed memory forever.
#[rustfmt::skip]
const RESET_VECTOR_CODE: [u8; 9] = [
    0xba, ACPI_RESET_PORT as u8, (ACPI_RESET_PORT >> 8) as u8, // mov dx, ACPI_RESET_PORT
    0xb0, ACPI_RESET_VALUE,                                    // mov al, ACPI_RESET_VALUE
    0xee,                                                      // out dx, al
    0xf4,                                                      // hlt
    0xeb, 0xfc,                                                // jmp back to the out
];

/// Writes the reset-vector code into guest memory.
pub(crate) fn write_reset_vector(mem: &GuestMemory) -> Result<(), SwitcherError> {
    if mem.contains(
        GuestAddress(RESET_VECTOR_ADDR),
        RESET_VECTOR_CODE.len() as u64,
    ) {
        mem.write(GuestAddress(RESET_VECTOR_ADDR), &RESET_VECTOR_CODE)?;
    }
    Ok(())
}

/// What KVM can offer the guest's CPUs on this host, read once for all vCPUs.
pub(crate) struct HostCpu {
    cpuid: CpuId,
    tsc_deadline: bool,
}

pub(crate) fn host_cpu(kvm: &Kvm) -> Result<HostCpu, SwitcherError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| SwitcherError::Kvm("report its supported CPUID", e))?;
    Ok(HostCpu {
        cpuid,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    })
}

// CPUID leaves and bits lg adjusts.
const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// KVM reports what the host can do; a VMM must still say which CPU this
/// is: its APIC id in every leaf that carries one, how many logical CPUs the
/// package has, and that a hypervisor is present (so the kernel looks for
/// KVM's paravirtual clock at leaf 0x40000000). KVM leaves the TSC-deadline
/// timer out of its list because it depends on the in-kernel local APIC;
/// lg has one, and on lg's hardware-reduced ACPI machine (no PIT tick) the
/// local APIC timer is the guest's clock event, so lg offers it.
fn adjust_cpuid(cpuid: &mut CpuId, index: u8, count: u8, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => entry.edx = u32::from(index),
            LEAF_AMD_TOPOLOGY => entry.eax = u32::from(index),
            _ => {}
        }
    }
    debug_assert!(cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_HYPERVISOR));
}

// Model-specific registers lg sets at start.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRINGS: u64 = 1;

// Control register and EFER bits for long mode.
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Local APIC registers (offsets into its 4 KiB page) and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

/// Creates vCPU `index` of `count`; the boot CPU also gets `entry`.
pub(crate) fn create_vcpu(
    vm: &VmFd,
    host: &HostCpu,
    index: u8,
    count: u8,
    entry: Option<&EntryState>,
) -> Result<Vcpu, SwitcherError> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| SwitcherError::Kvm("create a vCPU", e))?;
    let mut cpuid = host.cpuid.clone();
    adjust_cpuid(&mut cpuid, index, count, host.tsc_deadline);
    fd.set_cpuid2(&cpuid)
        .map_err(|e| SwitcherError::Kvm("set CPUID", e))?;

    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRINGS,
        ..Default::default()
    }])
    .map_err(|_| SwitcherError::MissingCapability("room for one MSR"))?;
    fd.set_msrs(&msrs)
        .map_err(|e| SwitcherError::Kvm("set MSRs", e))?;

    // Route the 8259 PIC through LINT0 and NMIs through LINT1, as a PC's
    // firmware does: until the kernel programs the IO-APIC, the PIC is how
    // timer and UART interrupts arrive.
    let mut lapic = fd
        .get_lapic()
        .map_err(|e| SwitcherError::Kvm("read the local APIC", e))?;
    set_lvt_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic)
        .map_err(|e| SwitcherError::Kvm("set the local APIC", e))?;

    if let Some(entry) = entry {
        set_entry_state(&fd, entry)?;
    }
    Ok(Vcpu { fd, index })
}

fn set_lvt_delivery_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Puts the boot CPU in long mode at the kernel's 64-bit entry point.
fn set_entry_state(fd: &VcpuFd, entry: &EntryState) -> Result<(), SwitcherError> {
    let mut sregs = fd
        .get_sregs()
        .map_err(|e| SwitcherError::Kvm("read segment registers", e))?;
    let gdt = boot_gdt();
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(BOOT_CS, gdt[2]);
    let data = segment(BOOT_DS, gdt[3]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_TSS, gdt[4]);
    sregs.cr3 = entry.page_table_root.0;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    fd.set_sregs(&sregs)
        .map_err(|e| SwitcherError::Kvm("set segment registers", e))?;

    let regs = kvm_regs {
        rflags: 0x2, // bit 1 is always set; IF clear: interrupts off
        rip: entry.entry.0,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: entry.boot_params.0,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(|e| SwitcherError::Kvm("set registers", e))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,    // the x87 control word after FNINIT
        mxcsr: 0x1f80, // all SSE exceptions masked, as after reset
        ..Default::default()
    };
    fd.set_fpu(&fpu)
        .map_err(|e| SwitcherError::Kvm("set the FPU", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_vector_code_fits_below_one_megabyte_and_loops_on_the_out() {
        assert!(RESET_VECTOR_ADDR + RESET_VECTOR_CODE.len() as u64 <= 0x10_0000);
        // The jump's target is the `out` (offset 5), from the end (offset 9).
        assert_eq!(RESET_VECTOR_CODE[5], 0xee);
        assert_eq!(9 + (RESET_VECTOR_CODE[8] as i8) as i64, 5);
    }

    #[test]
    fn code_segment_is_flat_64_bit_ring_0() {
        let cs = segment(BOOT_CS, boot_gdt()[2]);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!(
            (cs.l, cs.db, cs.dpl, cs.present, cs.s, cs.g),
            (1, 0, 0, 1, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
    }

    #[test]
    fn data_segment_is_flat_read_write() {
        let ds = segment(BOOT_DS, boot_gdt()[3]);
        assert_eq!(
            (ds.base, ds.limit, ds.type_, ds.db, ds.l),
            (0, 0xffff_ffff, 0x3, 1, 0)
        );
    }

    #[test]
    fn gdt_entry_matches_the_well_known_encoding() {
        // The flat 64-bit code descriptor every x86-64 boot loader uses.
        assert_eq!(
            gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn lvt_delivery_mode_keeps_the_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 2] = 0x01; // the mask bit (16)
        set_lvt_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
