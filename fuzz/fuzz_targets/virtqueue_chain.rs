//! The descriptor walk: a guest's queue, configured at the addresses the
//! input names, over RAM holding the input's bytes; every chain it makes
//! available is popped, checked against `virtqueue`'s promises, read,
//! written and returned, and the notification paths run, as a device
//! drives them. A panic or an out-of-bounds access anywhere is a finding;
//! an error is the crate refusing the guest, which is right.

#![no_main]

use lg_fuzz::{check_chain, guest_with, use_chain, Input, QueueSetup, MAX_POPS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = QueueSetup::read(&mut input);
    let mem = guest_with(input.rest());
    let Some(mut queue) = setup.enable(&mem) else {
        return;
    };
    if queue.disable_notification(&mem).is_err() {
        return;
    }
    for _ in 0..MAX_POPS {
        match queue.pop(&mem) {
            Ok(Some(chain)) => {
                check_chain(&mem, &chain);
                let written = use_chain(&mem, &chain);
                if queue.add_used(&mem, chain.head(), written).is_err() {
                    break;
                }
            }
            // Empty: the guest's turn to kick. A broken queue stops the
            // device, as every device thread does.
            Ok(None) | Err(_) => break,
        }
    }
    let _ = queue.needs_notification(&mem);
    let _ = queue.enable_notification(&mem);
});
