//! rxvmm: VM assembly shared by every engine, and the pieces of the binary.

pub mod accel_select;
pub mod acpi;
pub mod bench;
pub mod cli;
pub mod console;
pub mod event_loop;
pub mod exit_code;
pub mod guests;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod vmm;
