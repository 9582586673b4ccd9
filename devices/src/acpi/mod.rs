//! ACPI platform devices.
