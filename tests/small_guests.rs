//! The built-in small guests, run through the whole VMM (`rxvmm` binary)
//! under every engine by one macro (crosvm's `hypervisor/tests` idea): each
//! test asserts what the guest printed and the exit code.

mod common;

use std::time::Duration;

use common::*;
use rxvmm::guests;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs built-in guest `name` under `accel` with extra rxvmm `args`.
fn run_guest(accel: &str, name: &str, args: &[&str]) -> Run {
    let kernel = builtin_guest(name);
    let kernel = kernel.to_string_lossy();
    let mut all = vec!["--accel", accel, "--kernel", &kernel, "--mem", "64"];
    all.extend_from_slice(args);
    run_rxvmm(&all, None, TIMEOUT)
}

/// Whether `accel` can run here; prints a SKIP line when it can't.
fn engine_available(accel: &str, test: &str) -> bool {
    match accel {
        "kvm" => kvm_or_skip(test),
        _ => true,
    }
}

/// Defines `mod <engine> { #[test] fn <case>() }` for each engine, so every
/// engine gets every case.
macro_rules! engine_tests {
    ($($engine:ident),+) => {$(
        mod $engine {
            use super::*;
            const ACCEL: &str = stringify!($engine);

            #[test]
            fn hello_prints_marks_boot_and_resets() {
                if !engine_available(ACCEL, "hello") { return; }
                run_guest(ACCEL, "hello", &[]).assert_code(EXIT_REBOOT).assert_stdout_has(guests::HELLO_LINE);
            }

            #[test]
            fn acpi_poweroff_exits_zero() {
                if !engine_available(ACCEL, "poweroff") { return; }
                run_guest(ACCEL, "poweroff", &[]).assert_code(EXIT_POWEROFF).assert_stdout_has(guests::POWEROFF_LINE);
            }

            #[test]
            fn triple_fault_is_a_guest_crash() {
                if !engine_available(ACCEL, "triple-fault") { return; }
                run_guest(ACCEL, "triple-fault", &[])
                    .assert_code(EXIT_GUEST_CRASH)
                    .assert_stdout_has(guests::TRIPLE_FAULT_LINE)
                    .assert_stderr_has("triple fault")
                    .assert_stderr_has("RIP=");
            }

            #[test]
            fn unmapped_mmio_reads_all_ones_and_drops_writes() {
                if !engine_available(ACCEL, "unmapped-mmio") { return; }
                run_guest(ACCEL, "unmapped-mmio", &[])
                    .assert_code(EXIT_POWEROFF)
                    .assert_stdout_has(&format!("{}ffffffff", guests::UNMAPPED_MMIO_PREFIX));
            }

            #[test]
            fn pio_and_mmio_loops_complete() {
                if !engine_available(ACCEL, "pio-loop") { return; }
                for name in ["pio-loop", "mmio-loop"] {
                    run_guest(ACCEL, name, &[])
                        .assert_code(EXIT_REBOOT)
                        .assert_stdout_has(guests::BENCH_START_LINE)
                        .assert_stdout_has(guests::BENCH_DONE_LINE);
                }
            }

            #[test]
            fn every_vcpu_runs() {
                if !engine_available(ACCEL, "apic-id") { return; }
                for cpus in [2u8, 4] {
                    let n = cpus.to_string();
                    let run = run_guest(ACCEL, "apic-id", &["--cpus", &n]);
                    run.assert_code(EXIT_POWEROFF)
                        .assert_stdout_has("rxvmm-apic: bsp 0\n")
                        .assert_stdout_has(&format!("rxvmm-apic: madt-cpus {cpus}\n"))
                        .assert_stdout_has(&format!("rxvmm-apic: cpus {cpus}\n"));
                    for ap in 1..cpus {
                        run.assert_stdout_has(&format!("rxvmm-apic: ap {ap}\n"));
                    }
                }
            }

            #[test]
            fn linux64_entry_gets_the_promised_state() {
                if !engine_available(ACCEL, "boot-report-linux64") { return; }
                let run = run_guest(ACCEL, "boot-report-linux64", &[]);
                run.assert_code(EXIT_POWEROFF);
                for line in [
                    "entry=linux64",
                    "cr0=0000000080000031",
                    "cr3=0000000000009000",
                    "cr4=0000000000000020",
                    "efer=0000000000000500",
                    "cs=0000000000000008",
                    "ds=0000000000000010",
                    "ss=0000000000000010",
                    "gdt_base=0000000000000500",
                    "bootinfo=0000000000007000",
                ] {
                    run.assert_stdout_has(&format!("{}{line}\n", guests::BOOT_REPORT_PREFIX));
                }
                assert_boot_report_common(&run);
            }

            #[test]
            fn pvh_entry_gets_the_promised_state() {
                if !engine_available(ACCEL, "boot-report") { return; }
                let run = run_guest(ACCEL, "boot-report", &[]);
                run.assert_code(EXIT_POWEROFF);
                for line in [
                    "entry=pvh",
                    "cr0=0000000000000011",
                    "cr4=0000000000000000",
                    "efer=0000000000000000",
                    "cs=0000000000000008",
                    "gdt_base=0000000000000500",
                    "bootinfo=0000000000006000",
                ] {
                    run.assert_stdout_has(&format!("{}{line}\n", guests::BOOT_REPORT_PREFIX));
                }
                assert_boot_report_common(&run);
            }
        }
    )+};
}

/// What both boot entries report the same: the e820 map for 64 MiB, the
/// RSDP, and the computation done at CPL3.
fn assert_boot_report_common(run: &Run) {
    let p = guests::BOOT_REPORT_PREFIX;
    for e820 in [
        "0000000000000000 000000000009fc00 0000000000000001",
        "000000000009fc00 0000000000000400 0000000000000002",
        "00000000000e0000 0000000000020000 0000000000000002",
        "0000000000100000 0000000003f00000 0000000000000001",
    ] {
        run.assert_stdout_has(&format!("{p}e820: {e820}\n"));
    }
    run.assert_stdout_has(&format!("{p}rsdp=00000000000e0000\n"));
    run.assert_stdout_has(&format!("{p}rsdp_sig=RSD PTR \n"));
    run.assert_stdout_has(&format!("{p}user cs=0000000000000023\n"));
    run.assert_stdout_has(&format!("{p}user result={:016x}\n", guests::BOOT_REPORT_USER_RESULT));
}

engine_tests!(kvm, tcg);
