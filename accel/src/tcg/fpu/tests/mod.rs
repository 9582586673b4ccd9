//! Tests of the FPU semantics, most of them against the host CPU: x87
//! instructions run natively in the test process (`host`) on the same
//! operands and the results, bit for bit, are compared.

mod arith;
mod compare;
mod host;
mod misc;
mod state;
