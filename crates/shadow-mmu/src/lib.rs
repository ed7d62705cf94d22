//! # shadow-mmu: guest memory, and lg's view of the guest's MMU
//!
//! lguest's "shadow page tables" kept a copy of the guest's page tables that
//! the host CPU could use. KVM does that in hardware now (nested paging), so
//! what is left for lg is the other half of the job: owning guest-physical
//! memory, and walking the guest's own page tables in software so that
//! `lg translate`, `lg dump-pagetables` and the gdb stub can see what the
//! guest sees.
//!
//! Guest RAM is one anonymous mapping, handed to KVM as one or two memory
//! slots (below and above the 32-bit PCI hole). Nothing outside this crate
//! ever gets a raw pointer into it: every access goes through
//! [`GuestMemory::read`] and [`GuestMemory::write`] (or their typed forms),
//! which check the guest-physical range first. A guest-controlled address that
//! is out of range is an error value, never a wild access.
//!
//! The [`pagetable`] module is the walker: lg's software model of the x86-64
//! MMU in long mode. [`translate`] follows one virtual address down the
//! guest's 4- or 5-level tables, [`mappings`] lists every present page in a
//! range, and [`merged_ranges`] folds them into kernel-dump-style ranges. It
//! reads the tables only through [`GuestMemory`], and bounds its work, so a
//! guest's tables, however broken or looped, yield faults and not panics.

mod memory;
pub mod pagetable;

pub use memory::{GuestAddress, GuestMemory, MemoryError, MemoryRegion};
pub use pagetable::{
    mappings, merged_ranges, translate, Flags, Mapping, MergeRule, PageSize, PagingMode, Range,
    Translation, Walk, WalkFault, WalkStep,
};
