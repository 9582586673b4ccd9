//! Legacy PC devices: serial, i8042, CMOS RTC, debug port.
