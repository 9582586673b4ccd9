//! The real instructions on this x86-64 host, each run with chosen arithmetic
//! flags in (`popfq`) and RFLAGS captured right after (`pushfq`).
//!
//! Every asm block only touches the registers it names and the stack with a
//! balanced push/pop (no `nostack`, so the compiler keeps the red zone clear).

use core::arch::asm;

use super::super::OpSize;
use super::ARITH_IN;

/// Flags to load before the instruction: arithmetic bits of `f`, plus bit 1.
fn fin(f: u64) -> u64 {
    (f & ARITH_IN) | 2
}

/// `asm!` for one instruction between flags load and flags capture.
macro_rules! flagged {
    ($fin:expr, [$($tmpl:expr),+], $($operands:tt)*) => {{
        let f: u64;
        // SAFETY: the instruction touches only the named registers (and memory
        // the caller passes a valid pointer to); push/popfq and pushfq/pop are
        // balanced, and popfq loads only the arithmetic flags and bit 1.
        unsafe {
            asm!("push {fi}", "popfq", $($tmpl,)+ "pushfq", "pop {f}",
                fi = in(reg) fin($fin), f = lateout(reg) f, $($operands)*)
        };
        f
    }};
}

/// `fn(size, a, b, flags) -> (a', flags')` for `mn a, b` (two registers).
macro_rules! binop {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, u64) {
            let mut x = a;
            let f = match size {
                OpSize::B1 => flagged!(flags, [concat!($mn, " {x:l}, {y:l}")], x = inout(reg) x, y = in(reg) b),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}, {y:x}")], x = inout(reg) x, y = in(reg) b),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}")], x = inout(reg) x, y = in(reg) b),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}")], x = inout(reg) x, y = in(reg) b),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, flags) -> (a', flags')` for `mn a`.
macro_rules! unop {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, flags: u64) -> (u64, u64) {
            let mut x = a;
            let f = match size {
                OpSize::B1 => flagged!(flags, [concat!($mn, " {x:l}")], x = inout(reg) x),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}")], x = inout(reg) x),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}")], x = inout(reg) x),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}")], x = inout(reg) x),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, count, flags) -> (a', flags')` for `mn a, cl` (shifts, rotates).
macro_rules! by_cl {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, count: u8, flags: u64) -> (u64, u64) {
            let mut x = a;
            let f = match size {
                OpSize::B1 => flagged!(flags, [concat!($mn, " {x:l}, cl")], x = inout(reg) x, in("cl") count),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}, cl")], x = inout(reg) x, in("cl") count),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, cl")], x = inout(reg) x, in("cl") count),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, cl")], x = inout(reg) x, in("cl") count),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, b, count, flags) -> (a', flags')` for `mn a, b, cl` (16/32/64).
macro_rules! double_shift {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, count: u8, flags: u64) -> (u64, u64) {
            let mut x = a;
            let f = match size {
                OpSize::B1 => unreachable!("no 8-bit form"),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}, {y:x}, cl")], x = inout(reg) x, y = in(reg) b, in("cl") count),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}, cl")], x = inout(reg) x, y = in(reg) b, in("cl") count),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}, cl")], x = inout(reg) x, y = in(reg) b, in("cl") count),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, flags) -> (dst, flags')` for `mn dst, a` (16/32/64).
macro_rules! count_op {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, flags: u64) -> (u64, u64) {
            // BSF/BSR leave the destination alone for a zero source; start at 0.
            let mut x = 0u64;
            let f = match size {
                OpSize::B1 => unreachable!("no 8-bit form"),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}, {y:x}")], x = inout(reg) x, y = in(reg) a),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}")], x = inout(reg) x, y = in(reg) a),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}")], x = inout(reg) x, y = in(reg) a),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, flags) -> (dst, flags')` for the VEX form `mn dst, a` (32/64).
macro_rules! vex2 {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, flags: u64) -> (u64, u64) {
            let x: u64;
            let f = match size {
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}")], x = lateout(reg) x, y = in(reg) a),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}")], x = lateout(reg) x, y = in(reg) a),
                _ => unreachable!("VEX forms are 32/64-bit"),
            };
            (x & size.mask(), f)
        }
    };
}

/// `fn(size, a, b, flags) -> (dst, flags')` for the VEX form `mn dst, a, b` (32/64).
macro_rules! vex3 {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, u64) {
            let x: u64;
            let f = match size {
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}, {z:e}")], x = lateout(reg) x, y = in(reg) a, z = in(reg) b),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}, {z}")], x = lateout(reg) x, y = in(reg) a, z = in(reg) b),
                _ => unreachable!("VEX forms are 32/64-bit"),
            };
            (x & size.mask(), f)
        }
    };
}

binop!(add, "add");
binop!(adc, "adc");
binop!(sub, "sub");
binop!(sbb, "sbb");
binop!(and, "and");
binop!(or, "or");
binop!(xor, "xor");
unop!(inc, "inc");
unop!(dec, "dec");
unop!(neg, "neg");
by_cl!(shl, "shl");
by_cl!(shr, "shr");
by_cl!(sar, "sar");
by_cl!(rol, "rol");
by_cl!(ror, "ror");
by_cl!(rcl, "rcl");
by_cl!(rcr, "rcr");
double_shift!(shld, "shld");
double_shift!(shrd, "shrd");
count_op!(bsf, "bsf");
count_op!(bsr, "bsr");
count_op!(tzcnt, "tzcnt");
count_op!(lzcnt, "lzcnt");
count_op!(popcnt, "popcnt");
vex2!(blsi, "blsi");
vex2!(blsmsk, "blsmsk");
vex2!(blsr, "blsr");
vex3!(andn, "andn");
vex3!(bzhi, "bzhi");

/// `fn(size, a, bit, flags) -> (a', flags')` for BT/BTS/BTR/BTC with a
/// register bit offset (16/32/64).
macro_rules! bit_test {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, u64) {
            let mut x = a;
            let f = match size {
                OpSize::B1 => unreachable!("no 8-bit form"),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {x:x}, {y:x}")], x = inout(reg) x, y = in(reg) b),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {x:e}, {y:e}")], x = inout(reg) x, y = in(reg) b),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {x}, {y}")], x = inout(reg) x, y = in(reg) b),
            };
            (x & size.mask(), f)
        }
    };
}

bit_test!(bt, "bt");
bit_test!(bts, "bts");
bit_test!(btr, "btr");
bit_test!(btc, "btc");

/// Two-operand IMUL `a *= b` (16/32/64).
pub fn imul2(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, u64) {
    let mut x = a;
    let f = match size {
        OpSize::B1 => unreachable!("no 8-bit form"),
        OpSize::B2 => flagged!(flags, ["imul {x:x}, {y:x}"], x = inout(reg) x, y = in(reg) b),
        OpSize::B4 => flagged!(flags, ["imul {x:e}, {y:e}"], x = inout(reg) x, y = in(reg) b),
        OpSize::B8 => flagged!(flags, ["imul {x}, {y}"], x = inout(reg) x, y = in(reg) b),
    };
    (x & size.mask(), f)
}

/// One-operand MUL/IMUL of the accumulator by `b`: `(low, high, flags)`.
macro_rules! widening {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, u64, u64) {
            let mut lo = a;
            let mut hi = 0u64;
            let f = match size {
                OpSize::B1 => flagged!(flags, [concat!($mn, " {y:l}")], inout("rax") lo, inout("rdx") hi, y = in(reg) b),
                OpSize::B2 => flagged!(flags, [concat!($mn, " {y:x}")], inout("rax") lo, inout("rdx") hi, y = in(reg) b),
                OpSize::B4 => flagged!(flags, [concat!($mn, " {y:e}")], inout("rax") lo, inout("rdx") hi, y = in(reg) b),
                OpSize::B8 => flagged!(flags, [concat!($mn, " {y}")], inout("rax") lo, inout("rdx") hi, y = in(reg) b),
            };
            if size == OpSize::B1 {
                // AX = AH:AL.
                hi = lo >> 8;
            }
            (lo & size.mask(), hi & size.mask(), f)
        }
    };
}

widening!(mul, "mul");
widening!(imul1, "imul");

/// DIV of `0:a` by `b` (64-bit; `b` must be non-zero): flags after.
pub fn div64(a: u64, b: u64, flags: u64) -> u64 {
    flagged!(flags, ["div {y}"], inout("rax") a => _, inout("rdx") 0u64 => _, y = in(reg) b)
}

/// IDIV of sign-extended `a` by `b` (64-bit; `b` must not be 0 and the
/// quotient must fit, so not `i64::MIN / -1`): flags after.
pub fn idiv64(a: u64, b: u64, flags: u64) -> u64 {
    let high = ((a as i64) >> 63) as u64;
    flagged!(flags, ["idiv {y}"], inout("rax") a => _, inout("rdx") high => _, y = in(reg) b)
}

/// `mn a, b` (CMP or TEST) followed by all 16 SETcc: `(flags, setcc bytes)`.
macro_rules! compare_setcc {
    ($name:ident, $mn:literal) => {
        pub fn $name(size: OpSize, a: u64, b: u64, flags: u64) -> (u64, [u8; 16]) {
            let mut out = [0u8; 16];
            let p = out.as_mut_ptr();
            // The pushfq after the SETcc still sees the compare's flags: SETcc
            // writes none.
            let f = match size {
                OpSize::B1 => compare_setcc!(@run flags, concat!($mn, " {x:l}, {y:l}"), a, b, p),
                OpSize::B2 => compare_setcc!(@run flags, concat!($mn, " {x:x}, {y:x}"), a, b, p),
                OpSize::B4 => compare_setcc!(@run flags, concat!($mn, " {x:e}, {y:e}"), a, b, p),
                OpSize::B8 => compare_setcc!(@run flags, concat!($mn, " {x}, {y}"), a, b, p),
            };
            (f, out)
        }
    };
    (@run $flags:expr, $cmp:expr, $a:expr, $b:expr, $p:expr) => {{
        let f: u64;
        // SAFETY: as `flagged!`; the SETcc stores go to `out`, 16 writable bytes.
        unsafe {
            asm!("push {fi}", "popfq", $cmp,
                "seto byte ptr [{p}]",
                "setno byte ptr [{p} + 1]",
                "setb byte ptr [{p} + 2]",
                "setae byte ptr [{p} + 3]",
                "sete byte ptr [{p} + 4]",
                "setne byte ptr [{p} + 5]",
                "setbe byte ptr [{p} + 6]",
                "seta byte ptr [{p} + 7]",
                "sets byte ptr [{p} + 8]",
                "setns byte ptr [{p} + 9]",
                "setp byte ptr [{p} + 10]",
                "setnp byte ptr [{p} + 11]",
                "setl byte ptr [{p} + 12]",
                "setge byte ptr [{p} + 13]",
                "setle byte ptr [{p} + 14]",
                "setg byte ptr [{p} + 15]",
                "pushfq", "pop {f}",
                fi = in(reg) fin($flags), f = lateout(reg) f,
                x = in(reg) $a, y = in(reg) $b, p = in(reg) $p)
        };
        f
    }};
}

compare_setcc!(cmp_setcc, "cmp");
compare_setcc!(test_setcc, "test");
