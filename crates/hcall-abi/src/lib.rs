//! # hcall-abi: the contract between a guest and lg
//!
//! lguest had a header, `lguest_hcall.h`, listing every way the guest and the
//! launcher talked to each other. On KVM the guest is an unmodified Linux
//! kernel, so the "hypercalls" are the interfaces Linux already knows: the x86
//! boot protocol (the zero page and its setup header), the e820 memory map, and
//! the fixed addresses and I/O ports of the machine lg builds.
//!
//! This crate holds all of them as `#[repr(C)]` types that derive `zerocopy`'s
//! traits, plus constants. It holds no logic: the crates above it decide what to
//! put in these structures. Keeping every guest-visible layout in one place
//! means a reader can check lg against the Linux documentation without reading
//! any code.

pub mod boot;
pub mod layout;
