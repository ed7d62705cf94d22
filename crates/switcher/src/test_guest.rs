//! For tests: a real vCPU about to run a few real-mode instructions, with
//! no kernel (even these machines' kvm_pvm runs them). `None` where there
//! is no /dev/kvm that can; the tests then skip, with a word.

use kvm_bindings::kvm_regs;
use kvm_ioctls::{Kvm, VmFd};
use shadow_mmu::{GuestAddress, GuestMemory};

use crate::cpu::Vcpu;

/// A VM with 1 MiB of RAM holding `code` at `at`, and vCPU 0 about to run
/// it in real mode (CS base 0, RIP `at`).
pub fn real_mode_guest(code: &[u8], at: u64) -> Option<(VmFd, GuestMemory, Vcpu)> {
    let vm = Kvm::new().ok()?.create_vm().ok()?;
    let memory = GuestMemory::new(1 << 20).ok()?;
    memory.register(&vm).ok()?;
    memory.write(GuestAddress(at), code).ok()?;
    let fd = vm.create_vcpu(0).ok()?;
    let mut sregs = fd.get_sregs().ok()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).ok()?;
    fd.set_regs(&kvm_regs {
        rip: at,
        rflags: 0x2,
        ..Default::default()
    })
    .ok()?;
    Some((vm, memory, Vcpu { fd, index: 0 }))
}
