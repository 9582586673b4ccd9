//! Legacy PC devices: serial, i8042, CMOS RTC, debug port.

pub mod boot_marker;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use boot_marker::BootMarker;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::Serial;
