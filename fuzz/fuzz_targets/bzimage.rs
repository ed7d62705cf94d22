//! The bzImage parser and loader: any file that carries a setup header
//! ("HdrS" at 0x202, which this target puts there), checked by
//! `bzimage-loader` and, if it passes, placed in a guest with a command
//! line from the input. A file the person names may be anything; lg must
//! refuse a bad one with an error, never a panic or a write outside RAM.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lg_fuzz::kernel::open_and_load(data, |file| {
        if let Some(magic) = file.get_mut(0x202..0x206) {
            magic.copy_from_slice(b"HdrS");
        }
    });
});
