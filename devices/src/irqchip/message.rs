//! Interrupt messages on the (virtual) APIC bus: what an ICR write, an IOAPIC
//! redirection entry or an MSI asks the local APICs to do (SDM Vol. 3
//! §11.6.1, Figure 11-12).

/// How the targets handle the message (ICR bits 10:8, RTE bits 10:8, MSI
/// data bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    /// Delivered to one of the targets; see [`crate::irqchip::ApicBus`].
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    /// The vector comes from the 8259 (an INTA cycle); only meaningful on
    /// LINT0 and IOAPIC pins, never in an IPI.
    ExtInt,
    /// Encoding 011b.
    Reserved,
}

impl DeliveryMode {
    /// Decodes the 3-bit field in `bits` 2:0.
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            3 => Self::Reserved,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            _ => Self::ExtInt,
        }
    }

    /// The 3-bit encoding.
    pub fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Reserved => 3,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::StartUp => 6,
            Self::ExtInt => 7,
        }
    }
}

/// How the destination field is matched (SDM §11.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestMode {
    /// Against the APIC ID.
    Physical,
    /// Against the logical destination register (flat or cluster model).
    Logical,
}

impl DestMode {
    pub fn from_bit(logical: bool) -> Self {
        if logical {
            Self::Logical
        } else {
            Self::Physical
        }
    }
}

/// ICR bits 19:18: the destination shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

impl Shorthand {
    pub fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => Self::None,
            1 => Self::SelfOnly,
            2 => Self::AllIncludingSelf,
            _ => Self::AllExcludingSelf,
        }
    }
}

/// One interrupt message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptMessage {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub dest_mode: DestMode,
    /// Trigger mode: level (sets the target's TMR bit, so its EOI is
    /// broadcast to the IOAPIC) or edge.
    pub level_triggered: bool,
    /// ICR bit 14. Clear only in the obsolete "INIT level de-assert".
    pub assert: bool,
    pub shorthand: Shorthand,
    /// The destination field: 8 bits (xAPIC ICR, IOAPIC, MSI) or 32 bits
    /// (x2APIC ICR).
    pub dest: u32,
    /// Whether `dest` is an x2APIC (32-bit) destination. In the 8-bit
    /// format 0xFF is the broadcast ID, in the 32-bit one 0xFFFF_FFFF.
    pub x2apic_dest: bool,
}

impl InterruptMessage {
    /// A fixed, edge-triggered interrupt to the sender itself.
    pub fn self_ipi(vector: u8) -> Self {
        Self {
            vector,
            delivery: DeliveryMode::Fixed,
            dest_mode: DestMode::Physical,
            level_triggered: false,
            assert: true,
            shorthand: Shorthand::SelfOnly,
            dest: 0,
            x2apic_dest: true,
        }
    }

    /// Whether `dest` is the broadcast ID of its format.
    pub fn is_broadcast(&self) -> bool {
        if self.x2apic_dest {
            self.dest == u32::MAX
        } else {
            self.dest == 0xff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_round_trips() {
        for bits in 0..8 {
            assert_eq!(DeliveryMode::from_bits(bits).bits(), bits);
        }
        assert_eq!(DeliveryMode::from_bits(0xffff_fffd), DeliveryMode::Init);
    }
}
