//! The machine's ways out: every door a guest can use to end itself, each
//! tried by a kernel a few bytes long.
//!
//! A stock Linux picks one way to power off and one to reboot, so booting it
//! shows only those. Firmware, boot loaders and other kernels use the rest:
//! the keyboard controller's reset line, the 0xcf9 reset register, ACPI's
//! sleep control register, and the crash nobody asked for, a triple fault.
//! So this file builds, at test time, tiny ELF "kernels": one PT_LOAD
//! segment at 1 MiB holding a handful of hand-assembled x86-64
//! instructions, which lg enters in 64-bit mode with interrupts off. Each
//! knocks on one door and then halts forever, so a door lg does not open
//! shows up as a case killed by its time limit rather than as a wrong
//! status. One test host runs them all:
//!
//! - `triple`: loads an IDT with limit 0 and executes `int3`; nothing can be
//!   delivered, so the CPU shuts down, and lg says so in one line, status 2;
//! - `i8042`: command 0xfe to the keyboard controller (port 0x64): reset;
//! - `acpi_off`: SLP_TYP 5 with SLP_EN to the sleep control register
//!   (port 0x3c0): power off;
//! - `cf9`: 0x06 (reset CPU, full reset) to port 0xcf9: reset;
//! - `serial`: writes a line to COM1 byte by byte, which lg prints on its
//!   stdout, then powers off through port 0x3c0;
//! - `quiet`: writes a line to COM1 and halts, with no exit after it: lg
//!   keeps COM1's writes in KVM's coalesced ring until an exit, so only the
//!   ring's periodic replay can print this line (lg is killed after
//!   `QUIET_LIMIT`).
//!
//! lg ends with status 0 after each clean exit and writes nothing on its
//! stderr.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use lg_e2e::{case, script, start_once, test_host_limit, Case, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

/// Where each tiny kernel is loaded and entered: 1 MiB, the lowest address
/// lg loads a kernel at (below it sit the zero page, page tables and ACPI).
const LOAD_ADDR: u64 = 0x10_0000;

/// Where the code starts in the file: after the 64-byte ELF header and one
/// 56-byte program header, rounded up.
const CODE_OFFSET: usize = 0x80;

/// Guest RAM for each run, in MiB: far more than a few bytes need, and
/// above lg's minimum (2 MiB).
const MEMORY_MIB: u32 = 16;

/// What the `serial` kernel prints.
const SERIAL_LINE: &[u8] = b"LG_TINY_OK\n";

/// `hlt` and a jump back to it: with interrupts off, the vCPU sleeps for
/// good. Every kernel ends with this, so a request lg ignores leaves the
/// guest parked instead of running into whatever follows in memory.
const HALT_FOREVER: [u8; 3] = [
    0xf4, // hlt
    0xeb, 0xfd, // jmp rel8 -3: back to the hlt
];

/// `mov dx, port; mov al, value; out dx, al`: one byte to a 16-bit port.
fn out_byte(port: u16, value: u8) -> Vec<u8> {
    let [port_low, port_high] = port.to_le_bytes();
    let mut code = vec![0x66, 0xba, port_low, port_high]; // mov dx, imm16 (operand-size prefix)
    code.extend_from_slice(&[0xb0, value]); // mov al, imm8
    code.push(0xee); // out dx, al
    code
}

/// ACPI S5 with SLP_EN, `(5 << 2) | (1 << 5)`, to the hardware-reduced
/// sleep control register: what Linux's `acpi_power_off` writes.
fn acpi_power_off() -> Vec<u8> {
    out_byte(0x3c0, (5 << 2) | (1 << 5))
}

/// A triple fault: an IDT that holds no gate, then an exception.
fn triple() -> Vec<u8> {
    // lidt's operand is the 10-byte pseudo-descriptor right after the code;
    // its RIP-relative displacement counts from the end of the lidt (7 bytes).
    const LIDT_LEN: u32 = 7;
    const DESCRIPTOR_AT: u32 = LIDT_LEN + 1 + HALT_FOREVER.len() as u32; // after int3 and the halt
    let mut code = vec![0x0f, 0x01, 0x1d]; // lidt [rip + disp32] (0F 01 /3, ModRM 00 011 101)
    code.extend_from_slice(&(DESCRIPTOR_AT - LIDT_LEN).to_le_bytes()); // disp32
    code.push(0xcc); // int3: #BP finds no gate, nor does #GP, nor #DF: shutdown
    code.extend_from_slice(&HALT_FOREVER); // never reached
    assert_eq!(code.len(), DESCRIPTOR_AT as usize);
    code.extend_from_slice(&0u16.to_le_bytes()); // IDT limit: 0
    code.extend_from_slice(&0u64.to_le_bytes()); // IDT base: 0
    code
}

/// Reset through the keyboard controller, as old BIOSes and Linux's
/// `reboot=k` do.
fn i8042() -> Vec<u8> {
    let mut code = vec![
        0xb0, 0xfe, // mov al, 0xfe: pulse the reset line
        0xe6, 0x64, // out 0x64, al: the i8042 command port
    ];
    code.extend_from_slice(&HALT_FOREVER);
    code
}

fn acpi_off() -> Vec<u8> {
    let mut code = acpi_power_off();
    code.extend_from_slice(&HALT_FOREVER);
    code
}

/// Reset through the chipset's reset control register, Linux's `reboot=pci`.
fn cf9() -> Vec<u8> {
    let mut code = out_byte(0xcf9, 0x06); // SYS_RST | RST_CPU
    code.extend_from_slice(&HALT_FOREVER);
    code
}

/// `line` to COM1's transmit register, byte by byte, without polling LSR.
fn com1_line(line: &[u8]) -> Vec<u8> {
    let [port_low, port_high] = 0x3f8u16.to_le_bytes();
    let mut code = vec![0x66, 0xba, port_low, port_high]; // mov dx, 0x3f8
    for &byte in line {
        code.extend_from_slice(&[
            0xb0, byte, // mov al, byte
            0xee, // out dx, al
        ]);
    }
    code
}

/// A line to COM1's transmit register, then power off.
fn serial() -> Vec<u8> {
    let mut code = com1_line(SERIAL_LINE);
    code.extend_from_slice(&acpi_power_off());
    code.extend_from_slice(&HALT_FOREVER);
    code
}

/// What the `quiet` kernel prints.
const QUIET_LINE: &[u8] = b"LG_TINY_QUIET\n";

/// How long the `quiet` kernel's lg runs before it is killed (seconds).
const QUIET_LIMIT: u32 = 10;

/// A line to COM1's transmit register, then halt: no exit follows.
fn quiet() -> Vec<u8> {
    let mut code = com1_line(QUIET_LINE);
    code.extend_from_slice(&HALT_FOREVER);
    code
}

/// An x86-64 executable ELF whose one loadable segment is `code`, loaded and
/// entered at `LOAD_ADDR`.
fn elf(code: &[u8]) -> Vec<u8> {
    let mut file = Vec::new();
    // The ELF header.
    file.extend_from_slice(b"\x7fELF");
    file.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    file.extend_from_slice(&[0; 8]); // the rest of e_ident
    file.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    file.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    file.extend_from_slice(&1u32.to_le_bytes()); // e_version
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry: physical
    file.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    file.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    file.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    file.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    file.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    file.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    file.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    file.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    file.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(file.len(), 64);
    // The program header: one PT_LOAD, read and execute.
    file.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    file.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    file.extend_from_slice(&(CODE_OFFSET as u64).to_le_bytes()); // p_offset
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr: where lg loads it
    file.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    file.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    file.extend_from_slice(&16u64.to_le_bytes()); // p_align
    assert_eq!(file.len(), 64 + 56);
    file.resize(CODE_OFFSET, 0);
    file.extend_from_slice(code);
    file
}

/// A function that hand-assembles one tiny kernel's code.
type Code = fn() -> Vec<u8>;

/// Each tiny kernel: its name (case and file) and its code.
const KERNELS: [(&str, Code); 6] = [
    ("triple", triple),
    ("i8042", i8042),
    ("acpi_off", acpi_off),
    ("cf9", cf9),
    ("serial", serial),
    ("quiet", quiet),
];

/// Writes every tiny kernel into a fresh directory, `NAME.elf` each.
fn build_kernels() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lg-e2e-firmware-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for (name, code) in KERNELS {
        let path = dir.join(format!("{name}.elf"));
        fs::write(&path, elf(&code()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    dir
}

/// `lg_tiny NAME ARGS...`: the prelude's `lg_fail`, which keeps lg's stderr
/// apart from its stdout; these runs are not expected to fail, but every
/// one of them is checked for what lg says on stderr.
const LG_TINY: &str = "lg_tiny() { lg_fail \"$@\"; }\n";

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let kernels = build_kernels();
        let mut body = LG_TINY.to_string();
        for (name, _) in KERNELS {
            let run = format!("lg_tiny {name} run {MEMORY_MIB} /tiny/{name}.elf\n");
            if name == "quiet" {
                // The guest never ends itself: a short limit of its own.
                body.push_str(&format!(
                    "lg_fail_limit={QUIET_LIMIT}\n{run}lg_fail_limit={}\n",
                    lg_e2e::FAIL_LIMIT.as_secs()
                ));
            } else {
                body.push_str(&run);
            }
        }
        let run = TestHost::new()
            .file(&kernels, "/tiny")
            .timeout(test_host_limit(0, KERNELS.len() as u32))
            .silence_limit(SILENCE_LIMIT)
            // The "triple" kernel.
            .retry_lost_guests(1)
            .run(&script(&body))
            .map_err(|e| e.to_string());
        let _ = fs::remove_dir_all(&kernels);
        run
    })
}

/// Checks that case `name` ended with status 0 and lg said nothing on stderr.
fn assert_clean_exit(name: &str, how: &str) -> Case {
    let run = case(&test_host().output, name);
    assert_eq!(
        run.status,
        Some(0),
        "{how} should end lg with status 0\n{}",
        run.describe()
    );
    assert!(
        run.stderr.is_empty(),
        "lg should say nothing on stderr when the guest ends cleanly\n{}",
        run.describe()
    );
    run
}

#[test]
fn a_triple_fault_ends_lg_with_status_2_and_one_line_saying_so() {
    let triple = case(&test_host().output, "triple");
    assert_eq!(
        triple.status,
        Some(2),
        "a triple fault is a guest crash: status 2\n{}",
        triple.describe()
    );
    assert_eq!(
        triple.stderr.len(),
        1,
        "lg should explain the crash in one line\n{}",
        triple.describe()
    );
    let line = &triple.stderr[0];
    assert!(
        line.starts_with("lg: ") && line.contains("triple"),
        "lg's line should say the guest triple-faulted\n{}",
        triple.describe()
    );
}

#[test]
fn the_keyboard_controller_resets_the_guest() {
    assert_clean_exit("i8042", "command 0xfe to port 0x64");
}

#[test]
fn the_acpi_sleep_control_register_powers_off() {
    assert_clean_exit("acpi_off", "S5 with SLP_EN to port 0x3c0");
}

#[test]
fn the_cf9_register_resets_the_guest() {
    assert_clean_exit("cf9", "0x06 to port 0xcf9");
}

/// The console lines a tiny kernel printed (theirs all start `LG_TINY`).
fn tiny_lines(run: &Case) -> Vec<&String> {
    run.console
        .iter()
        .filter(|line| line.contains("LG_TINY"))
        .collect()
}

#[test]
fn bytes_written_to_com1_reach_lgs_stdout() {
    let serial = assert_clean_exit("serial", "a line to COM1, then S5");
    assert_eq!(
        tiny_lines(&serial),
        ["LG_TINY_OK"],
        "the guest's line should appear on lg's stdout, whole and once\n{}",
        serial.describe()
    );
}

#[test]
fn bytes_written_just_before_the_guest_goes_quiet_still_reach_lgs_stdout() {
    let quiet = case(&test_host().output, "quiet");
    assert_eq!(
        quiet.status,
        Some(lg_e2e::KILLED_BY_TIMEOUT),
        "the quiet kernel halts for good, so lg runs until it is killed\n{}",
        quiet.describe()
    );
    assert_eq!(
        tiny_lines(&quiet),
        ["LG_TINY_QUIET"],
        "a line the guest wrote before going quiet should reach lg's stdout, whole \
         and once, though no exit followed it\n{}",
        quiet.describe()
    );
}

#[test]
fn the_tiny_kernels_are_what_they_claim() {
    // Checked without a test host: each file's segment holds exactly its
    // code at the file offset the program header names, entered at its
    // first byte, and each kernel ends by parking the CPU.
    for (name, code) in KERNELS {
        let code = code();
        let file = elf(&code);
        let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
        assert_eq!(u64_at(24), LOAD_ADDR, "{name}: e_entry");
        assert_eq!(u64_at(64 + 8) as usize, CODE_OFFSET, "{name}: p_offset");
        assert_eq!(u64_at(64 + 24), LOAD_ADDR, "{name}: p_paddr");
        assert_eq!(u64_at(64 + 32) as usize, code.len(), "{name}: p_filesz");
        assert_eq!(&file[CODE_OFFSET..], &code[..], "{name}");
        if name != "triple" {
            assert!(code.ends_with(&HALT_FOREVER), "{name}");
        }
    }
    // The lidt operand: RIP after the 7-byte lidt plus disp32 is the
    // 10-byte descriptor, limit 0.
    let code = triple();
    let disp = u32::from_le_bytes(code[3..7].try_into().unwrap()) as usize;
    assert_eq!(&code[7 + disp..], &[0; 10]);
    assert_eq!(code[7], 0xcc);
    // Every byte of the line, in order, each to port 0x3f8.
    let code = serial();
    let sent: Vec<u8> = code[4..4 + 3 * SERIAL_LINE.len()]
        .chunks(3)
        .map(|op| {
            assert_eq!((op[0], op[2]), (0xb0, 0xee));
            op[1]
        })
        .collect();
    assert_eq!(sent, SERIAL_LINE);
}
