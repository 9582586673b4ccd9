//! ACPI platform devices.

pub mod power;

pub use power::{AcpiPower, ACPI_POWER_PORT, RESET_VALUE, S5_SLEEP_CONTROL, S5_SLEEP_TYPE};
