//! What only the TCG engine can run, against the tiny guests of `harness`:
//! x87 and SSE at CPL0 (KVM-on-PVM emulates CPL0 and can't do either), and
//! instructions the engine must refuse with #UD. The cases both engines
//! share (integer work, self-modifying code, guest-handled page faults, …)
//! are in engines.rs.

mod harness;

use accel::tcg::Tcg;
use accel::{DescriptorTable, VcpuExit};
use harness::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn undecodable_and_unimplemented_instructions_raise_ud() {
    // With no IDT the #UD escalates to a triple fault: no panic anywhere.
    for bytes in [&[0x0f, 0x0b][..], &[0x0f, 0xff, 0xff][..], &[0x0f, 0x37][..]] {
        let mut g = boot(&Tcg::default(), 1, bytes);
        assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Shutdown, "{bytes:x?}");
        assert_eq!(g.vcpu.cpu_state().unwrap().rip, CODE);
    }
}

#[test]
fn sse2_dot_product_strlen_and_memcpy() {
    const A: u64 = DATA;
    const B: u64 = DATA + 0x40;
    const TEXT: u64 = DATA + 0x103; // unaligned on purpose
    const COPY: u64 = DATA + 0x200;
    let text = b"The quick brown fox jumps over the lazy dog, twice over: SSE2 strlen!";
    let code = assemble(|a| {
        // CR4.OSFXSR | OSXMMEXCPT: SSE enabled by the "OS".
        a.mov(rax, cr4)?;
        a.or(eax, 0x600)?;
        a.mov(cr4, rax)?;
        a.mov(edx, u32::from(SERIAL))?;
        // Dot product of two 16-float vectors, four lanes at a time.
        let mut dot = a.create_label();
        a.xorps(xmm0, xmm0)?;
        a.xor(ecx, ecx)?;
        a.set_label(&mut dot)?;
        a.movaps(xmm1, xmmword_ptr(rcx + A as i32))?;
        a.mulps(xmm1, xmmword_ptr(rcx + B as i32))?;
        a.addps(xmm0, xmm1)?;
        a.add(ecx, 16)?;
        a.cmp(ecx, 64)?;
        a.jne(dot)?;
        a.movhlps(xmm1, xmm0)?;
        a.addps(xmm0, xmm1)?;
        a.movaps(xmm1, xmm0)?;
        a.shufps(xmm1, xmm1, 0x55)?;
        a.addss(xmm0, xmm1)?;
        a.movd(eax, xmm0)?;
        a.out(dx, eax)?;
        // strlen with PCMPEQB + PMOVMSKB + BSF.
        let (mut scan, mut found) = (a.create_label(), a.create_label());
        a.mov(rdi, TEXT)?;
        a.pxor(xmm2, xmm2)?;
        a.set_label(&mut scan)?;
        a.movdqu(xmm3, xmmword_ptr(rdi))?;
        a.pcmpeqb(xmm3, xmm2)?;
        a.pmovmskb(eax, xmm3)?;
        a.test(eax, eax)?;
        a.jnz(found)?;
        a.add(rdi, 16)?;
        a.jmp(scan)?;
        a.set_label(&mut found)?;
        a.bsf(eax, eax)?;
        a.add(rax, rdi)?;
        a.mov(rsi, TEXT)?;
        a.sub(rax, rsi)?;
        a.out(dx, eax)?;
        // memcpy of the string (rounded up to 16-byte chunks).
        let mut copy = a.create_label();
        a.mov(rcx, rax)?;
        a.add(rcx, 15)?;
        a.shr(rcx, 4)?;
        a.mov(rdi, COPY)?;
        a.set_label(&mut copy)?;
        a.movdqu(xmm4, xmmword_ptr(rsi))?;
        a.movdqa(xmmword_ptr(rdi), xmm4)?;
        a.add(rsi, 16)?;
        a.add(rdi, 16)?;
        a.dec(rcx)?;
        a.jnz(copy)?;
        // Doubles and conversions: round(sqrt(2) * 1e6), and UCOMISD flags.
        a.mov(eax, 2u32)?;
        a.cvtsi2sd(xmm5, eax)?;
        a.sqrtsd(xmm5, xmm5)?;
        a.mov(eax, 1_000_000u32)?;
        a.cvtsi2sd(xmm6, eax)?;
        a.mulsd(xmm5, xmm6)?;
        a.cvtsd2si(eax, xmm5)?;
        a.out(dx, eax)?;
        a.ucomisd(xmm5, xmm6)?;
        a.seta(al)?;
        a.movzx(eax, al)?;
        a.out(dx, eax)
    });
    let mut g = boot(&Tcg::default(), 1, &code);
    let a: Vec<f32> = (0..16).map(|i| i as f32 * 0.75 + 0.1).collect();
    let b: Vec<f32> = (0..16).map(|i| 1.0 / (i as f32 + 3.0)).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    g.memory.write_slice(&bytes(&a), GuestAddress(A)).unwrap();
    g.memory.write_slice(&bytes(&b), GuestAddress(B)).unwrap();
    g.memory.write_slice(text, GuestAddress(TEXT)).unwrap();
    run_to_done(&mut g);
    // The same operation order in f32: per-lane sums, then the horizontal add.
    let mut acc = [0f32; 4];
    for i in 0..16 {
        acc[i % 4] += a[i] * b[i];
    }
    let dot = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    let root = (2f64.sqrt() * 1e6).round() as u32;
    assert_eq!(serial_words(&g), vec![dot.to_bits(), text.len() as u32, root, 1], "\n{}", g.vcpu.dump_state());
    let mut copy = vec![0u8; text.len() + 1];
    g.memory.read_slice(&mut copy, GuestAddress(COPY)).unwrap();
    assert_eq!(&copy[..text.len()], text);
    assert_eq!(copy[text.len()], 0);
}

#[test]
fn x87_arithmetic_lazy_fpu_trap_and_fxsave_in_a_guest() {
    const IDT: u64 = 0x3000;
    const HANDLER: u64 = 0x10_8000;
    let code = assemble(|a| {
        a.mov(edx, u32::from(SERIAL))?;
        // CR4.OSFXSR | OSXMMEXCPT, then CR0.TS: the first FPU instruction
        // traps (#NM) and the handler does CLTS, as lazy FPU switching does.
        a.mov(rax, cr4)?;
        a.or(eax, 0x600u32)?;
        a.mov(cr4, rax)?;
        a.mov(rax, cr0)?;
        a.or(eax, 8u32)?;
        a.mov(cr0, rax)?;
        a.fninit()?;
        // sqrt(3 * (pi + 1)), stored as a double and rounded to an integer.
        a.fld1()?;
        a.fldpi()?;
        a.faddp(st1, st0)?;
        a.fild(dword_ptr(DATA))?;
        a.fmulp(st1, st0)?;
        a.fsqrt()?;
        a.fst(qword_ptr(DATA + 8))?;
        a.fld1()?;
        a.fcomip(st0, st1)?; // 1 < x: CF set
        a.setb(al)?;
        a.movzx(eax, al)?;
        a.out(dx, eax)?;
        a.fistp(dword_ptr(DATA + 16))?;
        a.fnstsw(ax)?; // stack empty again
        a.movzx(eax, ax)?;
        a.out(dx, eax)?;
        a.fnstcw(word_ptr(DATA + 20))?;
        a.ldmxcsr(dword_ptr(DATA + 24))?;
        a.stmxcsr(dword_ptr(DATA + 28))?;
        a.fldln2()?;
        a.fxsave64(ptr(DATA + 0x100))?;
        a.mov(eax, 0x600du32)?;
        a.out(dx, eax)
    });
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(eax, 0x4e4du32).unwrap();
    h.out(dx, eax).unwrap();
    h.clts().unwrap();
    h.iretq().unwrap();
    let handler = h.assemble(HANDLER).unwrap();
    let mut g = boot(&Tcg::default(), 1, &code);
    g.memory.write_slice(&handler, GuestAddress(HANDLER)).unwrap();
    let gate_lo = (HANDLER & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((HANDLER >> 16) & 0xffff) << 48);
    write_u64(&g.memory, IDT + 7 * 16, gate_lo);
    write_u64(&g.memory, IDT + 7 * 16 + 8, HANDLER >> 32);
    g.memory.write_slice(&3u32.to_le_bytes(), GuestAddress(DATA)).unwrap();
    g.memory.write_slice(&0x7f80u32.to_le_bytes(), GuestAddress(DATA + 24)).unwrap();
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: 16 * 32 - 1 };
    g.vcpu.set_cpu_state(&state).unwrap();
    run_to_done(&mut g);
    // One #NM, CF from FCOMIP, FSW = PE and C1 (FISTP rounded 3.52 up)
    // with TOP 0, done.
    assert_eq!(serial_words(&g), vec![0x4e4d, 1, 0x220, 0x600d]);
    let mut buf = [0u8; 32];
    g.memory.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    let x = f64::from_le_bytes(buf[8..16].try_into().unwrap());
    let want = (3.0 * (std::f64::consts::PI + 1.0)).sqrt();
    assert!((x - want).abs() < 1e-15, "{x} vs {want}");
    assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 4);
    assert_eq!(u16::from_le_bytes(buf[20..22].try_into().unwrap()), 0x037f);
    assert_eq!(u32::from_le_bytes(buf[28..32].try_into().unwrap()), 0x7f80);
    // The FXSAVE image: FCW, FSW (TOP 7 after FLDLN2), one valid tag, MXCSR,
    // MXCSR_MASK and ST0 = ln 2.
    let mut img = [0u8; 512];
    g.memory.read_slice(&mut img, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!(u16::from_le_bytes([img[0], img[1]]), 0x037f);
    assert_eq!(u16::from_le_bytes([img[2], img[3]]) & 0x3800, 7 << 11);
    assert_eq!(img[4], 0x80);
    assert_eq!(u32::from_le_bytes(img[24..28].try_into().unwrap()), 0x7f80);
    assert_eq!(u32::from_le_bytes(img[28..32].try_into().unwrap()), 0xffbf);
    assert_eq!(&img[32..42], &[0xac, 0x79, 0xcf, 0xd1, 0xf7, 0x17, 0x72, 0xb1, 0xfe, 0x3f]);
}

#[test]
fn fxsave_fxrstor_and_fstp_m80_faults_leave_no_trace() {
    const IDT: u64 = 0x3000;
    const PF_HANDLER: u64 = 0x10_8000;
    const GP_HANDLER: u64 = 0x10_8100;
    const HOLE: u64 = 0x60_0000; // its 2 MiB page is made not-present
    let code = assemble(|a| {
        a.mov(edx, u32::from(SERIAL))?;
        a.fninit()?;
        a.fldpi()?;
        // r15 = the length of the faulting instruction (the handlers skip it).
        a.mov(rbx, HOLE - 0x100)?;
        a.mov(r15d, 4u32)?;
        a.fxsave64(ptr(rbx))?; // second page faults
        a.mov(rbx, HOLE - 8)?;
        a.mov(r15d, 2u32)?;
        a.fstp(tword_ptr(rbx))?; // bytes 8 and 9 fault
        a.mov(rbx, HOLE - 0xf8)?;
        a.mov(r15d, 4u32)?;
        a.fxsave64(ptr(rbx))?; // misaligned: #GP(0)
        a.mov(rbx, DATA + 0x200)?;
        a.fxrstor64(ptr(rbx))?; // reserved MXCSR bit: #GP(0)
        a.fnstsw(ax)?; // still one register pushed: TOP = 7
        a.movzx(eax, ax)?;
        a.out(dx, eax)?;
        a.mov(eax, 0x600du32)?;
        a.out(dx, eax)
    });
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(rax, cr2).unwrap();
    h.out(dx, eax).unwrap();
    h.pop(rax).unwrap();
    h.out(dx, eax).unwrap();
    h.add(qword_ptr(rsp), r15).unwrap();
    h.iretq().unwrap();
    let pf = h.assemble(PF_HANDLER).unwrap();
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(eax, 0xdu32).unwrap();
    h.out(dx, eax).unwrap();
    h.pop(rax).unwrap();
    h.out(dx, eax).unwrap();
    h.add(qword_ptr(rsp), r15).unwrap();
    h.iretq().unwrap();
    let gp = h.assemble(GP_HANDLER).unwrap();
    let mut g = boot(&Tcg::default(), 1, &code);
    g.memory.write_slice(&pf, GuestAddress(PF_HANDLER)).unwrap();
    g.memory.write_slice(&gp, GuestAddress(GP_HANDLER)).unwrap();
    for (vector, handler) in [(14u64, PF_HANDLER), (13, GP_HANDLER)] {
        let gate_lo = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((handler >> 16) & 0xffff) << 48);
        write_u64(&g.memory, IDT + vector * 16, gate_lo);
        write_u64(&g.memory, IDT + vector * 16 + 8, handler >> 32);
    }
    write_u64(&g.memory, PD + 8 * (HOLE >> 21), 0);
    g.memory.write_slice(&[0xaa; 0x100], GuestAddress(HOLE - 0x100)).unwrap();
    let mut image = [0u8; 512];
    image[24..28].copy_from_slice(&0x1_1f80u32.to_le_bytes());
    g.memory.write_slice(&image, GuestAddress(DATA + 0x200)).unwrap();
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: 16 * 32 - 1 };
    g.vcpu.set_cpu_state(&state).unwrap();
    run_to_done(&mut g);
    // Two write #PFs at the hole (not present, write), two #GP(0), TOP 7.
    let hole = HOLE as u32;
    assert_eq!(serial_words(&g), vec![hole, 2, hole, 2, 0xd, 0, 0xd, 0, 0x3800, 0x600d]);
    let mut below = [0u8; 0x100];
    g.memory.read_slice(&mut below, GuestAddress(HOLE - 0x100)).unwrap();
    assert!(below.iter().all(|&b| b == 0xaa), "nothing stored below the hole");
}
