//! The transport's side of the hypervisor, faked for the device crates'
//! tests that drive a device through its BAR as Linux would (`test-util`
//! feature): MSI vectors that are never used (such a test leaves MSI-X
//! off), doorbells refused so that kicks arrive as BAR writes, and an INTx
//! pin the test watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{IntxLine, MsiSink, TransportHooks};

pub struct Sink;

impl MsiSink for Sink {
    fn set_message(&self, _: Option<(u64, u32)>) {}
    fn trigger(&self) {}
}

pub struct Hooks;

impl TransportHooks for Hooks {
    fn msi_vector(&self) -> Result<Box<dyn MsiSink>, String> {
        Ok(Box::new(Sink))
    }
    fn register_doorbell(&self, _: u64, _: &EventFd) -> Result<(), String> {
        Err("no ioeventfds in a unit test".into())
    }
    fn unregister_doorbell(&self, _: u64, _: &EventFd) {}
}

/// The INTx pin, its level shared with the test.
pub struct Pin(pub Arc<AtomicBool>);

impl IntxLine for Pin {
    fn set_level(&self, asserted: bool) {
        self.0.store(asserted, Ordering::SeqCst);
    }
}
