//! Every implemented instruction form, run on the host and as a guest from
//! the same random registers, MXCSR (all four rounding modes, DAZ and FTZ
//! on and off, exceptions masked) and memory: XMM registers, GPRs, the
//! arithmetic flags, MXCSR and the data bytes must all match.

use iced_x86::code_asm::*;

use super::machine::{run_guest, Data, HostStub, Regs, CODE};
use super::Rng;
use crate::tcg::interp::TbExit;

type Enc = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Input shaping for forms whose interesting cases random bits rarely hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tweak {
    None,
    /// XMM2's and the memory operand's low qword: a shift count 0..70.
    SmallCount,
}

struct Form {
    name: String,
    bytes: Vec<u8>,
    rsi_offset: usize,
    tweak: Tweak,
}

#[derive(Default)]
struct Forms(Vec<Form>);

impl Forms {
    fn add(&mut self, name: &str, enc: Enc) -> &mut Self {
        self.add_with(name, enc, 0, Tweak::None)
    }
    fn add_with(&mut self, name: &str, enc: Enc, rsi_offset: usize, tweak: Tweak) -> &mut Self {
        let mut a = CodeAssembler::new(64).unwrap();
        enc(&mut a).unwrap();
        let bytes = a.assemble(CODE).unwrap();
        self.0.push(Form { name: name.to_string(), bytes, rsi_offset, tweak });
        self
    }
}

/// Register and memory forms of `mn xmm1, xmm2/m`.
macro_rules! rm {
    ($f:expr, $mem:ident: $($mn:ident),* $(,)?) => {$(
        $f.add(concat!(stringify!($mn), " xmm1, xmm2"), |a| a.$mn(xmm1, xmm2));
        $f.add(concat!(stringify!($mn), " xmm1, [rsi]"), |a| a.$mn(xmm1, $mem(rsi)));
    )*};
}

/// `mn xmm1, xmm2, imm` and `mn xmm1, [rsi], imm` for each imm.
macro_rules! rm_imm {
    ($f:expr, $mem:ident: $mn:ident [$($imm:literal),*]) => {$(
        $f.add(concat!(stringify!($mn), " xmm1, xmm2, ", $imm), |a| a.$mn(xmm1, xmm2, $imm));
        $f.add(concat!(stringify!($mn), " xmm1, [rsi], ", $imm), |a| a.$mn(xmm1, $mem(rsi), $imm));
    )*};
}

/// `mn xmm1, imm` for each imm.
macro_rules! by_imm {
    ($f:expr, $mn:ident [$($imm:literal),*]) => {$(
        $f.add(concat!(stringify!($mn), " xmm1, ", $imm), |a| a.$mn(xmm1, $imm));
    )*};
}

fn random_regs(rng: &mut Rng) -> Regs {
    let xmm = std::array::from_fn(|_| rng.xmm());
    const INTS: [u64; 8] = [0, 1, u64::MAX, 0x7fff_ffff, 0x8000_0000, 0x8000_0000_0000_0000, 0xffff_ffff, 1 << 53];
    let gpr = std::array::from_fn(|_| {
        let r = rng.next();
        match r & 3 {
            0 => INTS[(r >> 8) as usize % INTS.len()],
            1 => (r >> 8) as i32 as i64 as u64,
            2 => r >> (r >> 58),
            _ => r,
        }
    });
    let rc = (rng.below(4) as u32) << 13;
    let daz = if rng.below(4) == 0 { 1 << 6 } else { 0 };
    let ftz = if rng.below(4) == 0 { 1 << 15 } else { 0 };
    let sticky = if rng.below(4) == 0 { rng.next() as u32 & 0x3f } else { 0 };
    Regs::new(xmm, gpr, rng.next(), 0x1f80 | rc | daz | ftz | sticky)
}

fn check(forms: &Forms, cases: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for form in &forms.0 {
        let stub = HostStub::new(&form.bytes);
        for case in 0..cases {
            let mut input = random_regs(&mut rng);
            let mut data = Data([0; 64]);
            for chunk in data.0.chunks_mut(16) {
                chunk.copy_from_slice(&rng.xmm().to_le_bytes());
            }
            if form.tweak == Tweak::SmallCount {
                let count = rng.below(70) as u128;
                input.xmm[2] = (input.xmm[2] & !u128::from(u64::MAX)) | count;
                data.0[form.rsi_offset..form.rsi_offset + 8].copy_from_slice(&(count as u64).to_le_bytes());
            }
            let (mut host, mut host_data) = (input, data);
            stub.run(&mut host, &mut host_data, form.rsi_offset);
            let (mut guest, mut guest_data) = (input, data);
            let exit = run_guest(&form.bytes, &mut guest, &mut guest_data, form.rsi_offset);
            assert!(matches!(exit, TbExit::Halt), "{}: case {case}: exit {exit:?}\ninput {input:x?}", form.name);
            if (host, host_data) != (guest, guest_data) {
                let diff: Vec<String> = (0..16)
                    .filter(|&i| host.xmm[i] != guest.xmm[i])
                    .map(|i| format!("xmm{i}: host {:032x} guest {:032x}", host.xmm[i], guest.xmm[i]))
                    .collect();
                panic!(
                    "{}: case {case}\ninput xmm1 {:032x} xmm2 {:032x} mem {:02x?}\nmxcsr in {:#x}: host {:#x} guest {:#x}\n\
                     gpr in {:x?}: host {:x?} guest {:x?}\nflags host {:#x} guest {:#x}\n{}\nmemory equal: {}",
                    form.name,
                    input.xmm[1],
                    input.xmm[2],
                    &data.0[form.rsi_offset..form.rsi_offset + 16],
                    input.mxcsr,
                    host.mxcsr,
                    guest.mxcsr,
                    input.gpr,
                    host.gpr,
                    guest.gpr,
                    host.rflags,
                    guest.rflags,
                    diff.join("\n"),
                    host_data == guest_data,
                );
            }
        }
    }
}

const CASES: usize = 300;

#[test]
fn integer_ops_match_the_host() {
    let mut f = Forms::default();
    rm!(f, xmmword_ptr: paddb, paddw, paddd, paddq, psubb, psubw, psubd, psubq);
    rm!(f, xmmword_ptr: paddsb, paddsw, paddusb, paddusw, psubsb, psubsw, psubusb, psubusw);
    rm!(f, xmmword_ptr: pcmpeqb, pcmpeqw, pcmpeqd, pcmpgtb, pcmpgtw, pcmpgtd);
    rm!(f, xmmword_ptr: pmullw, pmulhw, pmulhuw, pmuludq, pmaddwd);
    rm!(f, xmmword_ptr: pminub, pmaxub, pminsw, pmaxsw, pavgb, pavgw, psadbw);
    rm!(f, xmmword_ptr: pand, pandn, por, pxor, andps, andnps, orps, xorps, andpd, andnpd, orpd, xorpd);
    rm!(f, xmmword_ptr: packsswb, packssdw, packuswb);
    rm!(f, xmmword_ptr: punpcklbw, punpcklwd, punpckldq, punpcklqdq, punpckhbw, punpckhwd, punpckhdq, punpckhqdq);
    rm!(f, xmmword_ptr: unpcklps, unpckhps, unpcklpd, unpckhpd);
    check(&f, CASES, 0x5eed_0001);
}

#[test]
fn shifts_and_shuffles_match_the_host() {
    let mut f = Forms::default();
    f.add_with("psllw xmm1, xmm2", |a| a.psllw(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("pslld xmm1, xmm2", |a| a.pslld(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psllq xmm1, xmm2", |a| a.psllq(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psrlw xmm1, xmm2", |a| a.psrlw(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psrld xmm1, xmm2", |a| a.psrld(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psrlq xmm1, xmm2", |a| a.psrlq(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psraw xmm1, xmm2", |a| a.psraw(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psrad xmm1, xmm2", |a| a.psrad(xmm1, xmm2), 0, Tweak::SmallCount)
        .add_with("psllw xmm1, [rsi]", |a| a.psllw(xmm1, xmmword_ptr(rsi)), 0, Tweak::SmallCount)
        .add_with("psrad xmm1, [rsi]", |a| a.psrad(xmm1, xmmword_ptr(rsi)), 0, Tweak::SmallCount);
    rm!(f, xmmword_ptr: psllw, psrlq, psraw);
    by_imm!(f, psllw[0, 1, 15, 16, 200]);
    by_imm!(f, pslld[0, 7, 31, 32]);
    by_imm!(f, psllq[1, 63, 64]);
    by_imm!(f, psrlw[3, 15, 16]);
    by_imm!(f, psrld[5, 31, 33]);
    by_imm!(f, psrlq[9, 63, 64, 255]);
    by_imm!(f, psraw[1, 15, 16, 100]);
    by_imm!(f, psrad[4, 31, 32]);
    by_imm!(f, pslldq[0, 1, 7, 15, 16, 255]);
    by_imm!(f, psrldq[0, 3, 8, 15, 16, 128]);
    rm_imm!(f, xmmword_ptr: pshufd[0x1b, 0xe4, 0x4e, 0x00, 0x93]);
    rm_imm!(f, xmmword_ptr: pshuflw[0x1b, 0xff, 0x39]);
    rm_imm!(f, xmmword_ptr: pshufhw[0x1b, 0x00, 0xc6]);
    rm_imm!(f, xmmword_ptr: shufps[0x1b, 0xe4, 0x4e, 0x72]);
    rm_imm!(f, xmmword_ptr: shufpd[0, 1, 2, 3, 0xfe]);
    f.add("pinsrw xmm1, ecx, 0", |a| a.pinsrw(xmm1, ecx, 0))
        .add("pinsrw xmm1, ecx, 5", |a| a.pinsrw(xmm1, ecx, 5))
        .add("pinsrw xmm1, ecx, 15", |a| a.pinsrw(xmm1, ecx, 15))
        .add("pinsrw xmm1, [rsi], 7", |a| a.pinsrw(xmm1, word_ptr(rsi), 7))
        .add("pextrw eax, xmm2, 0", |a| a.pextrw(eax, xmm2, 0))
        .add("pextrw eax, xmm2, 6", |a| a.pextrw(eax, xmm2, 6))
        .add("pextrw rax, xmm2, 11", |a| a.pextrw(rax, xmm2, 11));
    check(&f, CASES, 0x5eed_0002);
}

#[test]
fn moves_match_the_host() {
    let mut f = Forms::default();
    rm!(f, xmmword_ptr: movaps, movups, movapd, movupd, movdqa, movdqu);
    f.add("movaps [rsi], xmm1", |a| a.movaps(xmmword_ptr(rsi), xmm1))
        .add("movapd [rsi], xmm1", |a| a.movapd(xmmword_ptr(rsi), xmm1))
        .add("movdqa [rsi], xmm1", |a| a.movdqa(xmmword_ptr(rsi), xmm1))
        .add("movntps [rsi], xmm1", |a| a.movntps(xmmword_ptr(rsi), xmm1))
        .add("movntpd [rsi], xmm1", |a| a.movntpd(xmmword_ptr(rsi), xmm1))
        .add("movntdq [rsi], xmm1", |a| a.movntdq(xmmword_ptr(rsi), xmm1))
        .add_with("movups [rsi+3], xmm1", |a| a.movups(xmmword_ptr(rsi), xmm1), 3, Tweak::None)
        .add_with("movupd xmm1, [rsi+5]", |a| a.movupd(xmm1, xmmword_ptr(rsi)), 5, Tweak::None)
        .add_with("movdqu [rsi+9], xmm1", |a| a.movdqu(xmmword_ptr(rsi), xmm1), 9, Tweak::None)
        .add_with("movdqu xmm1, [rsi+15]", |a| a.movdqu(xmm1, xmmword_ptr(rsi)), 15, Tweak::None)
        // The store encodings (0F 29, 0F 11, F3 0F 7F) with a register destination.
        .add("movaps xmm3, xmm1 (29)", |a| a.db(&[0x0f, 0x29, 0xcb]))
        .add("movups xmm3, xmm1 (11)", |a| a.db(&[0x0f, 0x11, 0xcb]))
        .add("movdqu xmm3, xmm1 (7f)", |a| a.db(&[0xf3, 0x0f, 0x7f, 0xcb]))
        .add("movss xmm1, xmm2", |a| a.movss(xmm1, xmm2))
        .add("movss xmm1, [rsi]", |a| a.movss(xmm1, dword_ptr(rsi)))
        .add("movss [rsi], xmm1", |a| a.movss(dword_ptr(rsi), xmm1))
        .add("movss xmm3, xmm1 (11)", |a| a.db(&[0xf3, 0x0f, 0x11, 0xcb]))
        .add("movsd xmm1, xmm2", |a| a.movsd_2(xmm1, xmm2))
        .add("movsd xmm1, [rsi]", |a| a.movsd_2(xmm1, qword_ptr(rsi)))
        .add("movsd [rsi], xmm1", |a| a.movsd_2(qword_ptr(rsi), xmm1))
        .add("movsd xmm3, xmm1 (11)", |a| a.db(&[0xf2, 0x0f, 0x11, 0xcb]))
        .add("movlps xmm1, [rsi]", |a| a.movlps(xmm1, qword_ptr(rsi)))
        .add("movlps [rsi], xmm1", |a| a.movlps(qword_ptr(rsi), xmm1))
        .add("movhps xmm1, [rsi]", |a| a.movhps(xmm1, qword_ptr(rsi)))
        .add("movhps [rsi], xmm1", |a| a.movhps(qword_ptr(rsi), xmm1))
        .add("movlpd xmm1, [rsi]", |a| a.movlpd(xmm1, qword_ptr(rsi)))
        .add("movlpd [rsi], xmm1", |a| a.movlpd(qword_ptr(rsi), xmm1))
        .add("movhpd xmm1, [rsi]", |a| a.movhpd(xmm1, qword_ptr(rsi)))
        .add("movhpd [rsi], xmm1", |a| a.movhpd(qword_ptr(rsi), xmm1))
        .add("movlhps xmm1, xmm2", |a| a.movlhps(xmm1, xmm2))
        .add("movhlps xmm1, xmm2", |a| a.movhlps(xmm1, xmm2))
        .add("movd xmm1, ecx", |a| a.movd(xmm1, ecx))
        .add("movd xmm1, [rsi]", |a| a.movd(xmm1, dword_ptr(rsi)))
        .add("movd eax, xmm2", |a| a.movd(eax, xmm2))
        .add("movd [rsi], xmm2", |a| a.movd(dword_ptr(rsi), xmm2))
        .add("movq xmm1, rcx", |a| a.movq(xmm1, rcx))
        .add("movq rax, xmm2", |a| a.movq(rax, xmm2))
        .add("movq xmm1, xmm2", |a| a.movq(xmm1, xmm2))
        .add("movq xmm1, [rsi]", |a| a.movq(xmm1, qword_ptr(rsi)))
        .add("movq [rsi], xmm2", |a| a.movq(qword_ptr(rsi), xmm2))
        .add("movq xmm3, xmm1 (d6)", |a| a.db(&[0x66, 0x0f, 0xd6, 0xcb]))
        .add("movq [rsi], xmm1 (66 REX.W 7e)", |a| a.db(&[0x66, 0x48, 0x0f, 0x7e, 0x0e]))
        .add("movq xmm1, [rsi] (66 REX.W 6e)", |a| a.db(&[0x66, 0x48, 0x0f, 0x6e, 0x0e]))
        .add("movmskps eax, xmm2", |a| a.movmskps(eax, xmm2))
        .add("movmskpd eax, xmm2", |a| a.movmskpd(eax, xmm2))
        .add("pmovmskb eax, xmm2", |a| a.pmovmskb(eax, xmm2))
        .add("pmovmskb rax, xmm2", |a| a.pmovmskb(rax, xmm2))
        .add("movnti [rsi], ecx", |a| a.movnti(dword_ptr(rsi), ecx))
        .add("movnti [rsi], rcx", |a| a.movnti(qword_ptr(rsi), rcx))
        // REX-extended registers.
        .add("movdqa xmm15, xmm8", |a| a.movdqa(xmm15, xmm8))
        .add("paddd xmm9, [rsi]", |a| a.paddd(xmm9, xmmword_ptr(rsi)))
        .add("movd r11d, xmm12", |a| a.movd(r11d, xmm12));
    check(&f, CASES, 0x5eed_0003);
}

#[test]
fn float_arithmetic_matches_the_host() {
    let mut f = Forms::default();
    rm!(f, xmmword_ptr: addps, addpd, subps, subpd, mulps, mulpd, divps, divpd);
    rm!(f, xmmword_ptr: minps, minpd, maxps, maxpd, sqrtps, sqrtpd, rcpps, rsqrtps);
    rm!(f, dword_ptr: addss, subss, mulss, divss, minss, maxss, sqrtss, rcpss, rsqrtss);
    rm!(f, qword_ptr: addsd, subsd, mulsd, divsd, minsd, maxsd, sqrtsd);
    check(&f, CASES, 0x5eed_0004);
}

#[test]
fn compares_match_the_host() {
    let mut f = Forms::default();
    rm_imm!(f, xmmword_ptr: cmpps[0, 1, 2, 3, 4, 5, 6, 7, 0xf9]);
    rm_imm!(f, xmmword_ptr: cmppd[0, 1, 2, 3, 4, 5, 6, 7]);
    rm_imm!(f, dword_ptr: cmpss[0, 1, 2, 3, 4, 5, 6, 7]);
    rm_imm!(f, qword_ptr: cmpsd_3[0, 1, 2, 3, 4, 5, 6, 7]);
    rm!(f, dword_ptr: comiss, ucomiss);
    rm!(f, qword_ptr: comisd, ucomisd);
    check(&f, CASES, 0x5eed_0005);
}

#[test]
fn conversions_match_the_host() {
    let mut f = Forms::default();
    f.add("cvtsi2ss xmm1, ecx", |a| a.cvtsi2ss(xmm1, ecx))
        .add("cvtsi2ss xmm1, rcx", |a| a.cvtsi2ss(xmm1, rcx))
        .add("cvtsi2ss xmm1, dword [rsi]", |a| a.cvtsi2ss(xmm1, dword_ptr(rsi)))
        .add("cvtsi2ss xmm1, qword [rsi]", |a| a.cvtsi2ss(xmm1, qword_ptr(rsi)))
        .add("cvtsi2sd xmm1, ecx", |a| a.cvtsi2sd(xmm1, ecx))
        .add("cvtsi2sd xmm1, rcx", |a| a.cvtsi2sd(xmm1, rcx))
        .add("cvtsi2sd xmm1, dword [rsi]", |a| a.cvtsi2sd(xmm1, dword_ptr(rsi)))
        .add("cvtsi2sd xmm1, qword [rsi]", |a| a.cvtsi2sd(xmm1, qword_ptr(rsi)))
        .add("cvtss2si eax, xmm2", |a| a.cvtss2si(eax, xmm2))
        .add("cvtss2si rax, xmm2", |a| a.cvtss2si(rax, xmm2))
        .add("cvtss2si eax, [rsi]", |a| a.cvtss2si(eax, dword_ptr(rsi)))
        .add("cvttss2si eax, xmm2", |a| a.cvttss2si(eax, xmm2))
        .add("cvttss2si rax, [rsi]", |a| a.cvttss2si(rax, dword_ptr(rsi)))
        .add("cvtsd2si eax, xmm2", |a| a.cvtsd2si(eax, xmm2))
        .add("cvtsd2si rax, xmm2", |a| a.cvtsd2si(rax, xmm2))
        .add("cvtsd2si rax, [rsi]", |a| a.cvtsd2si(rax, qword_ptr(rsi)))
        .add("cvttsd2si eax, [rsi]", |a| a.cvttsd2si(eax, qword_ptr(rsi)))
        .add("cvttsd2si rax, xmm2", |a| a.cvttsd2si(rax, xmm2));
    rm!(f, dword_ptr: cvtss2sd);
    rm!(f, qword_ptr: cvtsd2ss, cvtdq2pd, cvtps2pd);
    rm!(f, xmmword_ptr: cvtdq2ps, cvtps2dq, cvttps2dq, cvtpd2dq, cvttpd2dq, cvtpd2ps);
    check(&f, CASES, 0x5eed_0006);
}
