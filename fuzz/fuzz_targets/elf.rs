//! The ELF (vmlinux) parser and loader: any file that starts with the ELF
//! magic (which this target puts there), its headers and segments checked
//! by `bzimage-loader` and, if they pass, its segments copied and zeroed
//! into a guest. A file the person names may be anything; lg must refuse a
//! bad one with an error, never a panic or a write outside RAM.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lg_fuzz::kernel::open_and_load(data, |file| {
        let n = file.len().min(4);
        file[..n].copy_from_slice(&b"\x7fELF"[..n]);
    });
});
