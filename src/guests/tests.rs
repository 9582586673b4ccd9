use std::io::Cursor;

use iced_x86::{CpuidFeature, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

fn load(image: &[u8]) -> (linux_loader::loader::KernelLoaderResult, GuestMemoryMmap) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let himem = GuestAddress(crate::layout::HIMEM_START);
    let result = Elf::load(&mem, None, &mut Cursor::new(image), Some(himem)).unwrap();
    (result, mem)
}

fn decode(bitness: u32, ip: u64, bytes: &[u8]) -> Vec<Instruction> {
    Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE).into_iter().collect()
}

#[test]
fn every_name_builds_and_loads() {
    assert_eq!(names().len(), 10);
    for &name in names() {
        let elf = build(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (result, mem) = load(&elf);
        assert_eq!(result.kernel_load, GuestAddress(LOAD_ADDR), "{name}");
        assert!(result.kernel_end > LOAD_ADDR && result.kernel_end <= LOAD_ADDR + 0x10_0000, "{name}");
        let expected_pvh = (name == "boot-report").then_some(GuestAddress(image::addr(image::CODE32_OFF)));
        match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(at) => assert_eq!(Some(at), expected_pvh, "{name}"),
            _ => assert_eq!(expected_pvh, None, "{name}"),
        }
        // The loaded bytes are the built image.
        let built = builder(name).unwrap()().unwrap();
        let mut back = vec![0u8; built.image.bytes().len()];
        mem.read_slice(&mut back, GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(back, built.image.bytes(), "{name}");
    }
}

#[test]
fn unknown_name_is_an_error() {
    let err = build("no-such-guest").unwrap_err();
    assert!(matches!(err, GuestError::Unknown(ref n) if n == "no-such-guest"));
    assert!(err.to_string().contains("boot-report"));
}

#[test]
fn hello_starts_as_expected() {
    let built = simple::hello().unwrap();
    assert_eq!(built.entry, LOAD_ADDR);
    let code = &built.image.bytes()[..64];
    let instrs = decode(64, LOAD_ADDR, code);
    let mnemonics: Vec<Mnemonic> = instrs.iter().take(5).map(|i| i.mnemonic()).collect();
    assert_eq!(mnemonics, [Mnemonic::Cli, Mnemonic::Mov, Mnemonic::Push, Mnemonic::Lea, Mnemonic::Call]);
    let mut text = String::new();
    IntelFormatter::new().format(&instrs[1], &mut text);
    assert_eq!(text, format!("mov rsp,{:X}h", image::addr(image::KSTACK_TOP_OFF)));
    let rip_target = instrs[3].memory_displacement64();
    let start = (rip_target - LOAD_ADDR) as usize;
    assert_eq!(&built.image.bytes()[start..start + HELLO_LINE.len() + 1], format!("{HELLO_LINE}\0").as_bytes());
}

/// Everything the guests execute, decoded: only instructions KVM's emulator
/// handles at CPL0 on a PVM host (8086..486 integer, x86-64, CPUID, MSRs).
#[test]
fn guests_use_only_emulator_friendly_instructions() {
    let allowed = [
        CpuidFeature::INTEL8086,
        CpuidFeature::INTEL186,
        CpuidFeature::INTEL286,
        CpuidFeature::INTEL386,
        CpuidFeature::INTEL486,
        CpuidFeature::X64,
        CpuidFeature::CPUID,
        CpuidFeature::MSR,
    ];
    for &name in names() {
        let built = builder(name).unwrap()().unwrap();
        assert!(!built.code.is_empty());
        for range in &built.code {
            let bytes = &built.image.bytes()[range.off..range.off + range.len];
            let instrs = decode(range.bitness, range.ip, bytes);
            let decoded: usize = instrs.iter().map(|i| i.len()).sum();
            assert_eq!(decoded, range.len, "{name}: code range decodes exactly");
            for i in &instrs {
                let mut text = String::new();
                IntelFormatter::new().format(i, &mut text);
                assert!(!i.is_invalid(), "{name}: invalid instruction at {:#x}", i.ip());
                assert!(!i.is_string_instruction(), "{name}: string instruction {text}");
                assert_ne!(i.mnemonic(), Mnemonic::Int3, "{name}");
                for f in i.cpuid_features() {
                    assert!(allowed.contains(f), "{name}: {text} needs {f:?}");
                }
            }
        }
    }
}

#[test]
fn boot_report_layout() {
    let built = boot_report::boot_report().unwrap();
    let pvh = built.pvh_entry.unwrap();
    assert_eq!(u64::from(pvh), image::addr(image::CODE32_OFF));
    let stub = &built.image.bytes()[image::CODE32_OFF..image::CODE32_OFF + 32];
    let first = decode(32, u64::from(pvh), stub);
    assert_eq!(first[0].mnemonic(), Mnemonic::Cli);
    // The last instruction of the stub is the far jump into 64-bit code.
    let range = built.code[1];
    let all = decode(32, range.ip, &built.image.bytes()[range.off..range.off + range.len]);
    let jump = all.last().unwrap();
    assert_eq!(jump.mnemonic(), Mnemonic::Jmp);
    assert_eq!(jump.far_branch_selector(), 0x08);
    assert!(u64::from(jump.far_branch32()) > LOAD_ADDR);
}

#[test]
fn apic_trampoline_is_reachable_from_real_mode() {
    let built = apic::apic_id().unwrap();
    let tramp = built.code[2];
    assert_eq!(tramp.bitness, 16);
    let all = decode(16, 0, &built.image.bytes()[tramp.off..tramp.off + tramp.len]);
    let jump = all.last().unwrap();
    assert_eq!(jump.far_branch_selector(), 0x38);
    assert_eq!(u64::from(jump.far_branch32()), image::addr(image::CODE32_OFF));
    // The GDTR copy the trampoline loads.
    let gdtr = &built.image.bytes()[image::CODE16_OFF + image::TRAMP_GDTR_OFF..][..6];
    assert_eq!(u16::from_le_bytes([gdtr[0], gdtr[1]]), 0x3f);
}

#[test]
fn user_result_matches_a_plain_implementation() {
    let sum: u64 = (1..=100_000u64).map(|i| i * i).sum();
    let mut x = sum;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    assert_eq!(BOOT_REPORT_USER_RESULT, hash);
}

#[test]
fn constants() {
    assert_eq!(ACPI_S5_VALUE, 0x34);
    assert_eq!(UNMAPPED_MMIO_LINE, format!("{UNMAPPED_MMIO_PREFIX}ffffffff\n"));
    assert!(HELLO_LINE.starts_with("rxvmm-hello: "));
}
