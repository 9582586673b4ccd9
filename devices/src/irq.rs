//! The one interrupt interface devices raise interrupts through.

/// An interrupt input of the platform's interrupt controller (a GSI).
///
/// Under KVM this is an irqfd into the in-kernel IOAPIC; under TCG it is the
/// emulated IOAPIC pin. Edge semantics: each `trigger` delivers one interrupt.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}
