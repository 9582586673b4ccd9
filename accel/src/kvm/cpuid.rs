//! Per-vCPU CPUID, normalised like Firecracker's from what
//! `KVM_GET_SUPPORTED_CPUID` offers: topology (1 thread per core, all vCPUs
//! cores of one socket), APIC IDs, the hypervisor bit, and no feature bits
//! the host KVM can't honour.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Host CPUID: `(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
pub(crate) type HostCpuid = fn(u32, u32) -> [u32; 4];

/// The real host CPUID instruction.
pub(crate) fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    /// AMD and Hygon share AMD's topology leaves.
    Amd,
    Other,
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    *reg = (*reg & !(1 << bit)) | (u32::from(on) << bit);
}

/// Writes `value` into bits `lo..=hi`, saturating it to the field width.
fn set_field(reg: &mut u32, lo: u32, hi: u32, value: u32) {
    let width = hi - lo + 1;
    let max = if width == 32 { u32::MAX } else { (1 << width) - 1 };
    let mask = max << lo;
    *reg = (*reg & !mask) | (value.min(max) << lo);
}

fn entry_mut(entries: &mut [kvm_cpuid_entry2], function: u32, index: u32) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| e.function == function && e.index == index)
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

// CPUID.(7,0) bits whose state components must be enabled in XCR0.
const LEAF7_EBX_AVX512: &[u32] = &[16, 17, 21, 26, 27, 28, 30, 31];
const LEAF7_ECX_AVX512: &[u32] = &[1, 6, 11, 12, 14];
const LEAF7_EDX_AVX512: &[u32] = &[2, 3, 8, 23];
const LEAF7_EDX_AMX: &[u32] = &[22, 24, 25];
/// CPUID.(7,0):EDX bit for IA32_ARCH_CAPABILITIES.
pub(crate) const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 29;
const XCR0_AVX512: u64 = 0b111 << 5;
const XCR0_AMX: u64 = 0b11 << 17;

/// Normalises `entries` (KVM's supported CPUID) for vCPU `id` of `vcpus`.
pub(crate) fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, id: u8, vcpus: u8, host: HostCpuid) {
    let vendor = vendor(entries);
    let vcpus = u32::from(vcpus.max(1));
    // Bits of the APIC ID that number the cores of the socket.
    let core_bits = vcpus.next_power_of_two().trailing_zeros();
    update_feature_info(entries, id, vcpus);
    for leaf in [0xb, 0x1f] {
        if entries.iter().any(|e| e.function == leaf) {
            set_extended_topology(entries, leaf, id, vcpus, core_bits);
        }
    }
    filter_xsave_dependent_features(entries);
    fill_brand_string(entries, host);
    match vendor {
        Vendor::Intel => normalize_intel(entries, vcpus),
        Vendor::Amd => normalize_amd(entries, id, vcpus, core_bits),
        Vendor::Other => {}
    }
}

/// Leaf 1: APIC ID, logical processor count, CLFLUSH size, and the bits a
/// VM always has (hypervisor, TSC-deadline timer) or never has (PDCM: no
/// IA32_PERF_CAPABILITIES).
fn update_feature_info(entries: &mut [kvm_cpuid_entry2], id: u8, vcpus: u32) {
    let Some(leaf1) = entry_mut(entries, 1, 0) else {
        return;
    };
    set_field(&mut leaf1.ebx, 8, 15, 8);
    set_field(&mut leaf1.ebx, 16, 23, vcpus.next_power_of_two());
    set_field(&mut leaf1.ebx, 24, 31, u32::from(id));
    set_bit(&mut leaf1.ecx, 15, false);
    set_bit(&mut leaf1.ecx, 24, true);
    set_bit(&mut leaf1.ecx, 31, true);
    set_bit(&mut leaf1.edx, 28, vcpus > 1);
}

/// Leaves 0xB/0x1F: SMT level (1 thread per core), core level (all vCPUs),
/// then the terminating invalid level; EDX is the x2APIC ID everywhere.
/// KVM reports only subleaf 0, so the subleaves are rebuilt.
fn set_extended_topology(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, id: u8, vcpus: u32, core_bits: u32) {
    entries.retain(|e| e.function != leaf);
    let levels = [(0, 1, 1), (core_bits, vcpus, 2), (0, 0, 0)];
    for (index, (shift, count, kind)) in (0u32..).zip(levels) {
        entries.push(kvm_cpuid_entry2 {
            function: leaf,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: shift,
            ebx: count,
            ecx: index | (kind << 8),
            edx: u32::from(id),
            ..Default::default()
        });
    }
}

/// Drops AVX-512 and AMX bits when KVM doesn't offer their XSAVE state
/// components: a guest would see the feature but fault enabling it.
fn filter_xsave_dependent_features(entries: &mut [kvm_cpuid_entry2]) {
    let xcr0 = entries
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
    let Some(leaf7) = entry_mut(entries, 7, 0) else {
        return;
    };
    if xcr0 & XCR0_AVX512 != XCR0_AVX512 {
        LEAF7_EBX_AVX512.iter().for_each(|&b| set_bit(&mut leaf7.ebx, b, false));
        LEAF7_ECX_AVX512.iter().for_each(|&b| set_bit(&mut leaf7.ecx, b, false));
        LEAF7_EDX_AVX512.iter().for_each(|&b| set_bit(&mut leaf7.edx, b, false));
    }
    if xcr0 & XCR0_AMX != XCR0_AMX {
        LEAF7_EDX_AMX.iter().for_each(|&b| set_bit(&mut leaf7.edx, b, false));
    }
}

/// Removes IA32_ARCH_CAPABILITIES from CPUID (the vCPU can't hold the MSR).
pub(crate) fn clear_arch_capabilities(entries: &mut [kvm_cpuid_entry2]) {
    if let Some(leaf7) = entry_mut(entries, 7, 0) {
        set_bit(&mut leaf7.edx, LEAF7_EDX_ARCH_CAPABILITIES, false);
    }
}

/// Whether CPUID advertises IA32_ARCH_CAPABILITIES.
pub(crate) fn has_arch_capabilities(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| e.function == 7 && e.index == 0 && e.edx & (1 << LEAF7_EDX_ARCH_CAPABILITIES) != 0)
}

/// KVM leaves the brand string empty on some hosts; guests print it, so
/// pass the host's through (Firecracker does too).
fn fill_brand_string(entries: &mut [kvm_cpuid_entry2], host: HostCpuid) {
    if host(0x8000_0000, 0)[0] < 0x8000_0004 {
        return;
    }
    let brand_leaves = 0x8000_0002..=0x8000_0004;
    let empty = entries
        .iter()
        .filter(|e| brand_leaves.contains(&e.function))
        .all(|e| e.eax == 0 && e.ebx == 0 && e.ecx == 0 && e.edx == 0);
    if !empty {
        return;
    }
    for leaf in brand_leaves {
        if let Some(e) = entry_mut(entries, leaf, 0) {
            [e.eax, e.ebx, e.ecx, e.edx] = host(leaf, 0);
        }
    }
}

/// Intel: cache sharing in leaf 4, no turbo/EPB (leaf 6), no PMU (leaf 0xA).
fn normalize_intel(entries: &mut [kvm_cpuid_entry2], vcpus: u32) {
    for e in entries.iter_mut().filter(|e| e.function == 4) {
        if e.eax & 0x1f == 0 {
            continue; // no more caches
        }
        let level = (e.eax >> 5) & 0x7;
        // L1/L2 are per core (1 thread); L3 is shared by the whole socket.
        let sharing = if level <= 2 { 0 } else { vcpus - 1 };
        set_field(&mut e.eax, 14, 25, sharing);
        set_field(&mut e.eax, 26, 31, vcpus - 1);
    }
    if let Some(leaf6) = entry_mut(entries, 6, 0) {
        set_bit(&mut leaf6.eax, 1, false);
        set_bit(&mut leaf6.ecx, 3, false);
    }
    if let Some(leafa) = entry_mut(entries, 0xa, 0) {
        (leafa.eax, leafa.ebx, leafa.ecx, leafa.edx) = (0, 0, 0, 0);
    }
}

/// AMD: core count and APIC ID size (0x8000_0008), topology extensions
/// (0x8000_001D cache sharing, 0x8000_001E extended APIC ID), and no
/// IA32_ARCH_CAPABILITIES, which AMD CPUs don't have.
fn normalize_amd(entries: &mut [kvm_cpuid_entry2], id: u8, vcpus: u32, core_bits: u32) {
    clear_arch_capabilities(entries);
    if let Some(e) = entry_mut(entries, 0x8000_0008, 0) {
        set_field(&mut e.ecx, 0, 7, vcpus - 1);
        set_field(&mut e.ecx, 12, 15, core_bits);
    }
    for e in entries.iter_mut().filter(|e| e.function == 0x8000_001d) {
        if e.eax & 0x1f == 0 {
            continue;
        }
        let level = (e.eax >> 5) & 0x7;
        let sharing = if level <= 2 { 0 } else { vcpus - 1 };
        set_field(&mut e.eax, 14, 25, sharing);
    }
    if let Some(e) = entry_mut(entries, 0x8000_001e, 0) {
        e.eax = u32::from(id);
        // Threads per core - 1 = 0; core ID = APIC ID.
        e.ebx = u32::from(id) & 0xff;
        e.ecx = 0;
        e.edx = 0;
    }
    // TOPOEXT tells the guest the two leaves above are valid.
    let has_topology_leaves = entries.iter().any(|e| e.function == 0x8000_001e);
    if let Some(e) = entry_mut(entries, 0x8000_0001, 0) {
        set_bit(&mut e.ecx, 22, has_topology_leaves);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn fake_host(leaf: u32, _: u32) -> [u32; 4] {
        match leaf {
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0002 => [u32::from_le_bytes(*b"Test"), 0, 0, 0],
            _ => [0; 4],
        }
    }

    /// A trimmed copy of what a PVM host's KVM_GET_SUPPORTED_CPUID returned.
    fn intel_supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0x24, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x000a_0671, 0x0102_0800, 0x8120_2000, 0x0f8b_fbff]),
            entry(4, 0, [0x0400_0121, 0x02c0_003f, 0x3f, 0]),
            entry(4, 3, [0x0400_4163, 0x03c0_003f, 0x0007_7fff, 0]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(6, 0, [0x6, 0, 0x8, 0]),
            entry(7, 0, [0x2, 0x0180_2852, 0x1a01_0104, 0x2541_0000]),
            entry(0xa, 0, [0x0703_0105, 0, 0, 0x603]),
            entry(0xb, 0, [0, 0, 0, 1]),
            entry(0xd, 0, [0x7, 0xa80, 0xa80, 0]),
            entry(0x8000_0002, 0, [0; 4]),
            entry(0x8000_0003, 0, [0; 4]),
            entry(0x8000_0004, 0, [0; 4]),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *entries.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn leaf1_identifies_the_vcpu() {
        let mut e = intel_supported();
        normalize(&mut e, 3, 4, fake_host);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "initial APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH line size / 8");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT with several vCPUs");
        normalize(&mut e, 0, 1, fake_host);
        assert_eq!(find(&e, 1, 0).edx & (1 << 28), 0, "no HTT with one vCPU");
    }

    #[test]
    fn extended_topology_has_thread_core_and_end_levels() {
        let mut e = intel_supported();
        normalize(&mut e, 2, 3, fake_host);
        let smt = find(&e, 0xb, 0);
        let core = find(&e, 0xb, 1);
        let end = find(&e, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
        assert!(e.iter().filter(|x| x.function == 0xb).all(|x| x.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
    }

    #[test]
    fn leaf4_reports_cores_per_package_and_l3_sharing() {
        let mut e = intel_supported();
        normalize(&mut e, 0, 4, fake_host);
        let l1d = find(&e, 4, 0);
        let l3 = find(&e, 4, 3);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(find(&e, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn pmu_turbo_and_missing_xsave_state_features_are_dropped() {
        let mut e = intel_supported();
        normalize(&mut e, 0, 1, fake_host);
        let a = find(&e, 0xa, 0);
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
        assert_eq!(find(&e, 6, 0).eax & 2, 0);
        let l7 = find(&e, 7, 0);
        // XCR0 0x7 has no AVX-512 or AMX state: their bits go.
        assert_eq!(l7.ebx & (1 << 16), 0);
        assert_eq!(l7.edx & (1 << 24), 0);
        // Unrelated bits (arch_capabilities is decided per vCPU) stay.
        assert_ne!(l7.edx & (1 << LEAF7_EDX_ARCH_CAPABILITIES), 0);
        clear_arch_capabilities(&mut e);
        assert!(!has_arch_capabilities(&e));
    }

    #[test]
    fn empty_brand_string_comes_from_the_host() {
        let mut e = intel_supported();
        normalize(&mut e, 0, 1, fake_host);
        assert_eq!(find(&e, 0x8000_0002, 0).eax.to_le_bytes(), *b"Test");
    }

    #[test]
    fn amd_topology_leaves() {
        let mut e = vec![
            entry(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(7, 0, [0, 0, 0, 1 << 29]),
            entry(0x8000_0001, 0, [0; 4]),
            entry(0x8000_0008, 0, [0x3030, 0, 0, 0]),
            entry(0x8000_001e, 0, [0; 4]),
        ];
        normalize(&mut e, 5, 6, fake_host);
        assert!(!has_arch_capabilities(&e));
        assert_eq!(find(&e, 0x8000_0008, 0).ecx, 5 | (3 << 12));
        assert_eq!(find(&e, 0x8000_001e, 0).eax, 5);
        assert_ne!(find(&e, 0x8000_0001, 0).ecx & (1 << 22), 0);
    }
}
