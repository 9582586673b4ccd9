//! The static [`Helper`] of every SSE/SSE2 operation, named after the
//! instruction (or the shared operation: `AND` serves ANDPS, ANDPD and
//! PAND). Each wraps one pure function of [`int`], [`shuffle`], [`float`]
//! or [`host`] in a runner of [`exec`].
//!
//! All may fault (#UD/#NM/#GP/#PF/#XM), read CR0/CR4 and the FPU state
//! (`SYSTEM`) and write the FPU state; COMIS also writes the flags.

use super::exec::{self, run_flags, run_value, run_xmm};
use super::float::{self, Format, F32, F64};
use super::post::{self, Kind, Shape};
use super::{host, int, shuffle};

const fn shape(kind: Kind, input: Format, elements: u32, output: Format) -> Shape {
    Shape { kind, input, elements, output }
}
const ADD_PS: Shape = shape(Kind::AddSub, F32, 4, F32);
const ADD_PD: Shape = shape(Kind::AddSub, F64, 2, F64);
const ADD_SS: Shape = shape(Kind::AddSub, F32, 1, F32);
const ADD_SD: Shape = shape(Kind::AddSub, F64, 1, F64);
const MUL_PS: Shape = shape(Kind::MulDiv, F32, 4, F32);
const MUL_PD: Shape = shape(Kind::MulDiv, F64, 2, F64);
const MUL_SS: Shape = shape(Kind::MulDiv, F32, 1, F32);
const MUL_SD: Shape = shape(Kind::MulDiv, F64, 1, F64);
const SD_TO_SS: Shape = shape(Kind::Convert, F64, 1, F32);
const PD_TO_PS: Shape = shape(Kind::Convert, F64, 2, F32);
use crate::tcg::ir::{Helper, HelperFn, StateParts};

const FLAGS_AND_SYSTEM: StateParts = StateParts::FLAGS.union(StateParts::SYSTEM);

const fn helper(name: &'static str, func: HelperFn, writes: StateParts) -> Helper {
    Helper { name, func, may_fault: true, reads: StateParts::SYSTEM, writes }
}

/// `NAME: "name" => kind f;` with kind one of
/// - `int`: `f(dst, src) -> dst` (no MXCSR),
/// - `imm`: `f(dst, src, imm8) -> dst` (no MXCSR),
/// - `fp`: `f(dst, src, mxcsr) -> (dst, flags)`,
/// - `post f, SHAPE`: an `fp` operation that can overflow or underflow
///   ([`post::run`] with its [`Shape`]),
/// - `cvt`: `f(dst, src_value_u64, mxcsr) -> (dst, flags)` (integer source),
/// - `count`: `f(dst, count_u64) -> dst` (shifts: the source's low qword).
macro_rules! xmm_helpers {
    ($($stat:ident: $name:literal => $kind:ident $f:expr $(, $shape:ident)?;)*) => {$(
        pub static $stat: Helper = helper(
            $name,
            |ctx, args| run_xmm(ctx, args, xmm_helpers!(@op $kind $f $(, $shape)?)),
            StateParts::SYSTEM,
        );
    )*};
    (@op int $f:expr) => { |a, b, _, _| ($f(a, b), 0) };
    (@op imm $f:expr) => { |a, b, i, _| ($f(a, b, i), 0) };
    (@op fp $f:expr) => { |a, b, _, m| $f(a, b, m) };
    (@op post $f:expr, $shape:ident) => { |a, b, _, m| post::run($f, $shape, a, b, m) };
    (@op cvt $f:expr) => { |a, b, _, m| $f(a, b as u64, m) };
    (@op count $f:expr) => { |a, b, _, _| ($f(a, b as u64), 0) };
    (@op raw $f:expr) => { $f };
}

/// `NAME: "name" => kind f;` returning a value: `plain` `f(src) -> u64`,
/// `imm` `f(src, imm8) -> u64`, `fp` `f(src, mxcsr) -> (u64, flags)`.
macro_rules! value_helpers {
    ($($stat:ident: $name:literal => $kind:ident $f:expr;)*) => {$(
        pub static $stat: Helper = helper(
            $name,
            |ctx, args| run_value(ctx, args, value_helpers!(@op $kind $f)),
            StateParts::SYSTEM,
        );
    )*};
    (@op plain $f:expr) => { |b, _, _| ($f(b), 0) };
    (@op imm $f:expr) => { |b, i, _| ($f(b, i), 0) };
    (@op fp $f:expr) => { |b, _, m| $f(b, m) };
}

xmm_helpers! {
    // Integer arithmetic.
    PADDB: "paddb" => int int::add8;
    PADDW: "paddw" => int int::add16;
    PADDD: "paddd" => int int::add32;
    PADDQ: "paddq" => int int::add64;
    PSUBB: "psubb" => int int::sub8;
    PSUBW: "psubw" => int int::sub16;
    PSUBD: "psubd" => int int::sub32;
    PSUBQ: "psubq" => int int::sub64;
    PADDSB: "paddsb" => int int::adds8;
    PADDSW: "paddsw" => int int::adds16;
    PADDUSB: "paddusb" => int int::addus8;
    PADDUSW: "paddusw" => int int::addus16;
    PSUBSB: "psubsb" => int int::subs8;
    PSUBSW: "psubsw" => int int::subs16;
    PSUBUSB: "psubusb" => int int::subus8;
    PSUBUSW: "psubusw" => int int::subus16;
    PCMPEQB: "pcmpeqb" => int int::cmpeq8;
    PCMPEQW: "pcmpeqw" => int int::cmpeq16;
    PCMPEQD: "pcmpeqd" => int int::cmpeq32;
    PCMPGTB: "pcmpgtb" => int int::cmpgt8;
    PCMPGTW: "pcmpgtw" => int int::cmpgt16;
    PCMPGTD: "pcmpgtd" => int int::cmpgt32;
    PMULLW: "pmullw" => int int::mullo16;
    PMULHW: "pmulhw" => int int::mulhi16;
    PMULHUW: "pmulhuw" => int int::mulhu16;
    PMULUDQ: "pmuludq" => int int::muludq;
    PMADDWD: "pmaddwd" => int int::maddwd;
    PMINUB: "pminub" => int int::minu8;
    PMAXUB: "pmaxub" => int int::maxu8;
    PMINSW: "pminsw" => int int::mins16;
    PMAXSW: "pmaxsw" => int int::maxs16;
    PAVGB: "pavgb" => int int::avg8;
    PAVGW: "pavgw" => int int::avg16;
    PSADBW: "psadbw" => int int::sadbw;
    AND: "and" => int int::and;
    ANDN: "andn" => int int::andn;
    OR: "or" => int int::or;
    XOR: "xor" => int int::xor;
    // Shifts (count from an xmm/m128 source's low qword, or an immediate).
    PSLLW: "psllw" => count int::sll::<2>;
    PSLLD: "pslld" => count int::sll::<4>;
    PSLLQ: "psllq" => count int::sll::<8>;
    PSRLW: "psrlw" => count int::srl::<2>;
    PSRLD: "psrld" => count int::srl::<4>;
    PSRLQ: "psrlq" => count int::srl::<8>;
    PSRAW: "psraw" => count int::sra::<2>;
    PSRAD: "psrad" => count int::sra::<4>;
    PSLLDQ: "pslldq" => count int::slldq;
    PSRLDQ: "psrldq" => count int::srldq;
    // Packs, unpacks, shuffles.
    PACKSSWB: "packsswb" => int shuffle::packsswb;
    PACKSSDW: "packssdw" => int shuffle::packssdw;
    PACKUSWB: "packuswb" => int shuffle::packuswb;
    PUNPCKLBW: "punpcklbw" => int shuffle::punpcklbw;
    PUNPCKLWD: "punpcklwd" => int shuffle::punpcklwd;
    PUNPCKLDQ: "punpckldq" => int shuffle::punpckldq;
    PUNPCKLQDQ: "punpcklqdq" => int shuffle::punpcklqdq;
    PUNPCKHBW: "punpckhbw" => int shuffle::punpckhbw;
    PUNPCKHWD: "punpckhwd" => int shuffle::punpckhwd;
    PUNPCKHDQ: "punpckhdq" => int shuffle::punpckhdq;
    PUNPCKHQDQ: "punpckhqdq" => int shuffle::punpckhqdq;
    PSHUFD: "pshufd" => imm |_, b, i| shuffle::pshufd(b, i);
    PSHUFLW: "pshuflw" => imm |_, b, i| shuffle::pshuflw(b, i);
    PSHUFHW: "pshufhw" => imm |_, b, i| shuffle::pshufhw(b, i);
    SHUFPS: "shufps" => imm shuffle::shufps;
    SHUFPD: "shufpd" => imm shuffle::shufpd;
    PINSRW: "pinsrw" => imm shuffle::pinsrw;
    // Moves into an XMM register.
    MOV: "mov" => int |_, b| b;
    MERGE_LO32: "merge_lo32" => int shuffle::merge_lo32;
    MERGE_LO64: "merge_lo64" => int shuffle::merge_lo64;
    LO_TO_HI: "lo_to_hi" => int shuffle::lo_to_hi;
    HI_TO_LO: "hi_to_lo" => int shuffle::hi_to_lo;
    ZEXT32: "zext32" => int |_, b| shuffle::zext32(b);
    ZEXT64: "zext64" => int |_, b| shuffle::zext64(b);
    // Floating point (host instruction, guest MXCSR).
    ADDPS: "addps" => post host::addps, ADD_PS;
    ADDPD: "addpd" => post host::addpd, ADD_PD;
    ADDSS: "addss" => post host::addss, ADD_SS;
    ADDSD: "addsd" => post host::addsd, ADD_SD;
    SUBPS: "subps" => post host::subps, ADD_PS;
    SUBPD: "subpd" => post host::subpd, ADD_PD;
    SUBSS: "subss" => post host::subss, ADD_SS;
    SUBSD: "subsd" => post host::subsd, ADD_SD;
    MULPS: "mulps" => post host::mulps, MUL_PS;
    MULPD: "mulpd" => post host::mulpd, MUL_PD;
    MULSS: "mulss" => post host::mulss, MUL_SS;
    MULSD: "mulsd" => post host::mulsd, MUL_SD;
    DIVPS: "divps" => post host::divps, MUL_PS;
    DIVPD: "divpd" => post host::divpd, MUL_PD;
    DIVSS: "divss" => post host::divss, MUL_SS;
    DIVSD: "divsd" => post host::divsd, MUL_SD;
    MINPS: "minps" => fp host::minps;
    MINPD: "minpd" => fp host::minpd;
    MINSS: "minss" => fp host::minss;
    MINSD: "minsd" => fp host::minsd;
    MAXPS: "maxps" => fp host::maxps;
    MAXPD: "maxpd" => fp host::maxpd;
    MAXSS: "maxss" => fp host::maxss;
    MAXSD: "maxsd" => fp host::maxsd;
    SQRTPS: "sqrtps" => fp host::sqrtps;
    SQRTPD: "sqrtpd" => fp host::sqrtpd;
    SQRTSS: "sqrtss" => fp host::sqrtss;
    SQRTSD: "sqrtsd" => fp host::sqrtsd;
    RCPPS: "rcpps" => fp host::rcpps;
    RCPSS: "rcpss" => fp host::rcpss;
    RSQRTPS: "rsqrtps" => fp host::rsqrtps;
    RSQRTSS: "rsqrtss" => fp host::rsqrtss;
    CVTSS2SD: "cvtss2sd" => fp host::cvtss2sd;
    CVTSD2SS: "cvtsd2ss" => post host::cvtsd2ss, SD_TO_SS;
    CVTDQ2PS: "cvtdq2ps" => fp host::cvtdq2ps;
    CVTPS2DQ: "cvtps2dq" => fp host::cvtps2dq;
    CVTTPS2DQ: "cvttps2dq" => fp host::cvttps2dq;
    CVTDQ2PD: "cvtdq2pd" => fp host::cvtdq2pd;
    CVTPD2DQ: "cvtpd2dq" => fp host::cvtpd2dq;
    CVTTPD2DQ: "cvttpd2dq" => fp host::cvttpd2dq;
    CVTPS2PD: "cvtps2pd" => fp host::cvtps2pd;
    CVTPD2PS: "cvtpd2ps" => post host::cvtpd2ps, PD_TO_PS;
    CVTSI2SS32: "cvtsi2ss32" => cvt host::cvtsi2ss32;
    CVTSI2SS64: "cvtsi2ss64" => cvt host::cvtsi2ss64;
    CVTSI2SD32: "cvtsi2sd32" => cvt host::cvtsi2sd32;
    CVTSI2SD64: "cvtsi2sd64" => cvt host::cvtsi2sd64;
    // Compares (portable).
    CMPPS: "cmpps" => raw |a, b, i, m| float::cmp(F32, false, a, b, i, m);
    CMPPD: "cmppd" => raw |a, b, i, m| float::cmp(F64, false, a, b, i, m);
    CMPSS: "cmpss" => raw |a, b, i, m| float::cmp(F32, true, a, b, i, m);
    CMPSD: "cmpsd" => raw |a, b, i, m| float::cmp(F64, true, a, b, i, m);
}

value_helpers! {
    MOVD_OUT: "movd_out" => plain |b: u128| b as u32 as u64;
    MOVQ_OUT: "movq_out" => plain |b: u128| b as u64;
    MOVMSKPS: "movmskps" => plain shuffle::movmskps;
    MOVMSKPD: "movmskpd" => plain shuffle::movmskpd;
    PMOVMSKB: "pmovmskb" => plain shuffle::pmovmskb;
    PEXTRW: "pextrw" => imm shuffle::pextrw;
    CVTSS2SI32: "cvtss2si32" => fp host::cvtss2si32;
    CVTSS2SI64: "cvtss2si64" => fp host::cvtss2si64;
    CVTTSS2SI32: "cvttss2si32" => fp host::cvttss2si32;
    CVTTSS2SI64: "cvttss2si64" => fp host::cvttss2si64;
    CVTSD2SI32: "cvtsd2si32" => fp host::cvtsd2si32;
    CVTSD2SI64: "cvtsd2si64" => fp host::cvtsd2si64;
    CVTTSD2SI32: "cvttsd2si32" => fp host::cvttsd2si32;
    CVTTSD2SI64: "cvttsd2si64" => fp host::cvttsd2si64;
}

pub static COMISS: Helper =
    helper("comiss", |c, a| run_flags(c, a, |x, y, m| float::comi(F32, x, y, m, true)), FLAGS_AND_SYSTEM);
pub static UCOMISS: Helper =
    helper("ucomiss", |c, a| run_flags(c, a, |x, y, m| float::comi(F32, x, y, m, false)), FLAGS_AND_SYSTEM);
pub static COMISD: Helper =
    helper("comisd", |c, a| run_flags(c, a, |x, y, m| float::comi(F64, x, y, m, true)), FLAGS_AND_SYSTEM);
pub static UCOMISD: Helper =
    helper("ucomisd", |c, a| run_flags(c, a, |x, y, m| float::comi(F64, x, y, m, false)), FLAGS_AND_SYSTEM);

/// Stores (part of) an XMM register to memory.
pub static STORE: Helper = helper("sse_store", exec::run_store, StateParts::NONE);
pub static MASKMOVDQU: Helper = helper("maskmovdqu", exec::run_maskmov, StateParts::NONE);
