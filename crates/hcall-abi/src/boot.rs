//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst).
//! Written by the bzimage-loader work; placeholder module until then.
