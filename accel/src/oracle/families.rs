//! The instruction forms the generator draws from: every legacy-encoded
//! 64-bit-mode `Code` of the integer families, found through iced-x86's
//! op-code tables, with the operand slots the generator knows how to fill.

use std::sync::OnceLock;

use iced_x86::{Code, CpuidFeature, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind, Register};

/// What the generator must put in one operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A general register of this many bytes (1 includes AH..BH).
    Reg(u8),
    /// A register the encoding fixes (AL, AX, EAX, RAX, CL).
    Fixed(Register),
    /// A register or a memory operand of this many bytes.
    RegOrMem(u8),
    /// A memory operand (never a register) of this many bytes:
    /// CMPXCHG8B/16B, MOVBE.
    Mem(u8),
    /// LEA's address: computed, never accessed.
    Address,
    /// A `moffs` absolute 64-bit address (MOV AL/AX/EAX/RAX forms).
    MemOffs,
    /// An immediate; the kind says its encoding.
    Imm(Imm),
}

/// Immediate encodings, by the range of values they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Imm {
    /// The shift-by-one forms: always 1.
    One,
    /// 8-bit, zero- or sign-extended by the instruction itself.
    I8,
    /// 8-bit, sign-extended to the operand size.
    I8Sex,
    I16,
    I32,
    I64,
}

/// One form: a `Code` and its operand slots.
#[derive(Debug, Clone)]
pub(crate) struct Form {
    pub code: Code,
    pub slots: Vec<Slot>,
}

/// A family of forms and how often it is drawn.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub name: &'static str,
    pub weight: u64,
    pub forms: Vec<Form>,
}

use Mnemonic as M;

const SETCC: &[Mnemonic] = &[
    M::Seto,
    M::Setno,
    M::Setb,
    M::Setae,
    M::Sete,
    M::Setne,
    M::Setbe,
    M::Seta,
    M::Sets,
    M::Setns,
    M::Setp,
    M::Setnp,
    M::Setl,
    M::Setge,
    M::Setle,
    M::Setg,
];
const CMOVCC: &[Mnemonic] = &[
    M::Cmovo,
    M::Cmovno,
    M::Cmovb,
    M::Cmovae,
    M::Cmove,
    M::Cmovne,
    M::Cmovbe,
    M::Cmova,
    M::Cmovs,
    M::Cmovns,
    M::Cmovp,
    M::Cmovnp,
    M::Cmovl,
    M::Cmovge,
    M::Cmovle,
    M::Cmovg,
];

/// Families by name, weight, and mnemonics. Division is drawn rarely: it
/// ends most sequences (#DE) unless RDX happens to be small.
const FAMILIES: &[(&str, u64, &[Mnemonic])] = &[
    ("mov", 8, &[M::Mov]),
    ("movx", 4, &[M::Movzx, M::Movsx, M::Movsxd]),
    ("arith", 8, &[M::Add, M::Adc, M::Sub, M::Sbb]),
    ("logic", 5, &[M::And, M::Or, M::Xor]),
    ("compare", 4, &[M::Cmp, M::Test]),
    ("unary", 4, &[M::Inc, M::Dec, M::Neg, M::Not]),
    ("shift", 5, &[M::Shl, M::Sal, M::Shr, M::Sar]),
    ("double shift", 2, &[M::Shld, M::Shrd]),
    ("rotate", 4, &[M::Rol, M::Ror, M::Rcl, M::Rcr]),
    ("mul", 4, &[M::Mul, M::Imul]),
    ("div", 2, &[M::Div, M::Idiv]),
    ("bittest", 3, &[M::Bt, M::Bts, M::Btr, M::Btc]),
    ("bitscan", 3, &[M::Bsf, M::Bsr, M::Lzcnt, M::Tzcnt, M::Popcnt]),
    ("bswap", 1, &[M::Bswap, M::Movbe]),
    ("exchange", 3, &[M::Xchg, M::Xadd, M::Cmpxchg]),
    ("exchange wide", 1, &[M::Cmpxchg8b, M::Cmpxchg16b]),
    ("adx", 1, &[M::Adcx, M::Adox]),
    ("setcc", 3, SETCC),
    ("cmovcc", 3, CMOVCC),
    ("lea", 3, &[M::Lea]),
    ("stack", 3, &[M::Push, M::Pop]),
    ("convert", 2, &[M::Cbw, M::Cwde, M::Cdqe, M::Cwd, M::Cdq, M::Cqo]),
    ("flags", 2, &[M::Sahf, M::Lahf, M::Clc, M::Stc, M::Cmc, M::Cld, M::Std]),
];

/// Forms left out on purpose: undocumented aliases, and encodings whose
/// result the SDM leaves undefined (BSWAP r16; SHLD/SHRD r16 by CL, whose
/// count may exceed 16) or discourages (MOVSXD without REX.W).
const EXCLUDED: &[Code] = &[
    Code::Shld_rm16_r16_CL,
    Code::Shrd_rm16_r16_CL,
    Code::Test_rm8_imm8_F6r1,
    Code::Test_rm16_imm16_F7r1,
    Code::Test_rm32_imm32_F7r1,
    Code::Test_rm64_imm32_F7r1,
    Code::Bswap_r16,
    Code::Movsxd_r16_rm16,
    Code::Movsxd_r32_rm32,
];

/// `mem_bytes`: the size of the form's memory operand, if it has one.
fn slot(kind: OpCodeOperandKind, mnemonic: Mnemonic, mem_bytes: Option<u8>) -> Option<Slot> {
    use OpCodeOperandKind as K;
    Some(match kind {
        K::r8_reg | K::r8_opcode => Slot::Reg(1),
        K::r16_reg | K::r16_opcode => Slot::Reg(2),
        K::r32_reg | K::r32_opcode => Slot::Reg(4),
        K::r64_reg | K::r64_opcode => Slot::Reg(8),
        K::r8_or_mem => Slot::RegOrMem(1),
        K::r16_or_mem => Slot::RegOrMem(2),
        K::r32_or_mem => Slot::RegOrMem(4),
        K::r64_or_mem => Slot::RegOrMem(8),
        K::mem if mnemonic == Mnemonic::Lea => Slot::Address,
        K::mem => Slot::Mem(mem_bytes?),
        K::mem_offs => Slot::MemOffs,
        K::al => Slot::Fixed(Register::AL),
        K::ax => Slot::Fixed(Register::AX),
        K::eax => Slot::Fixed(Register::EAX),
        K::rax => Slot::Fixed(Register::RAX),
        K::cl => Slot::Fixed(Register::CL),
        K::imm8_const_1 => Slot::Imm(Imm::One),
        K::imm8 => Slot::Imm(Imm::I8),
        K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => Slot::Imm(Imm::I8Sex),
        K::imm16 => Slot::Imm(Imm::I16),
        K::imm32 | K::imm32sex64 => Slot::Imm(Imm::I32),
        K::imm64 => Slot::Imm(Imm::I64),
        _ => return None,
    })
}

/// Whether the host CPU runs instructions needing `feature`. Only the
/// optional integer extensions are checked; the rest is baseline x86-64.
fn host_has(feature: CpuidFeature) -> bool {
    match feature {
        CpuidFeature::LZCNT => std::arch::is_x86_feature_detected!("lzcnt"),
        CpuidFeature::BMI1 => std::arch::is_x86_feature_detected!("bmi1"),
        CpuidFeature::POPCNT => std::arch::is_x86_feature_detected!("popcnt"),
        CpuidFeature::ADX => std::arch::is_x86_feature_detected!("adx"),
        CpuidFeature::CMPXCHG16B => std::arch::is_x86_feature_detected!("cmpxchg16b"),
        CpuidFeature::MOVBE => host_has_movbe(),
        _ => true,
    }
}

/// CPUID.1:ECX.MOVBE[bit 22].
fn host_has_movbe() -> bool {
    let leaf1 = std::arch::x86_64::__cpuid(1);
    leaf1.ecx & (1 << 22) != 0
}

fn form(code: Code) -> Option<Form> {
    let op = code.op_code();
    let mut probe = Instruction::default();
    probe.set_code(code);
    if !op.is_instruction()
        || !op.mode64()
        || op.encoding() != EncodingKind::Legacy
        || EXCLUDED.contains(&code)
        || !probe.cpuid_features().iter().all(|f| host_has(*f))
    {
        return None;
    }
    let mem_bytes = u8::try_from(probe.memory_size().size()).ok().filter(|&n| n > 0);
    let slots =
        (0..op.op_count()).map(|i| slot(op.op_kind(i), code.mnemonic(), mem_bytes)).collect::<Option<Vec<_>>>()?;
    Some(Form { code, slots })
}

/// The families, built once per process from iced-x86's tables.
pub(crate) fn families() -> &'static [Family] {
    static TABLE: OnceLock<Vec<Family>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let all: Vec<Form> = Code::values().filter_map(form).collect();
        FAMILIES
            .iter()
            .map(|(name, weight, mnemonics)| Family {
                name,
                weight: *weight,
                forms: all.iter().filter(|f| mnemonics.contains(&f.code.mnemonic())).cloned().collect(),
            })
            .filter(|f| !f.forms.is_empty())
            .collect()
    })
}

/// The 16 Jcc near-branch forms (rel8) and their rel32 twins.
pub(crate) const JCC: &[(Code, Code)] = &[
    (Code::Jo_rel8_64, Code::Jo_rel32_64),
    (Code::Jno_rel8_64, Code::Jno_rel32_64),
    (Code::Jb_rel8_64, Code::Jb_rel32_64),
    (Code::Jae_rel8_64, Code::Jae_rel32_64),
    (Code::Je_rel8_64, Code::Je_rel32_64),
    (Code::Jne_rel8_64, Code::Jne_rel32_64),
    (Code::Jbe_rel8_64, Code::Jbe_rel32_64),
    (Code::Ja_rel8_64, Code::Ja_rel32_64),
    (Code::Js_rel8_64, Code::Js_rel32_64),
    (Code::Jns_rel8_64, Code::Jns_rel32_64),
    (Code::Jp_rel8_64, Code::Jp_rel32_64),
    (Code::Jnp_rel8_64, Code::Jnp_rel32_64),
    (Code::Jl_rel8_64, Code::Jl_rel32_64),
    (Code::Jge_rel8_64, Code::Jge_rel32_64),
    (Code::Jle_rel8_64, Code::Jle_rel32_64),
    (Code::Jg_rel8_64, Code::Jg_rel32_64),
    (Code::Jmp_rel8_64, Code::Jmp_rel32_64),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_forms_and_they_are_64_bit_legacy() {
        let fams = families();
        assert_eq!(
            fams.len(),
            FAMILIES.len(),
            "a family lost all its forms: {:?}",
            fams.iter().map(|f| f.name).collect::<Vec<_>>()
        );
        let count: usize = fams.iter().map(|f| f.forms.len()).sum();
        assert!(count > 300, "only {count} forms");
        let find = |c: Code| fams.iter().flat_map(|f| &f.forms).any(|f| f.code == c);
        assert!(find(Code::Add_rm8_r8) && find(Code::Mov_r64_imm64) && find(Code::Mov_AL_moffs8));
        assert!(find(Code::Imul_r64_rm64_imm32) && find(Code::Shl_rm16_CL));
        assert!(!find(Code::Inc_r32), "40+r is REX in 64-bit mode");
        assert!(!find(Code::Test_rm8_imm8_F6r1) && !find(Code::Bswap_r16));
        assert!(!find(Code::Pushq_FS), "segment registers are not generated");
    }
}
