//! The TCG engine: an in-process x86-64 emulator (not built yet).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::{AccelKind, Accelerator, Error, Result, Vm, VmConfig};

/// Placeholder that keeps TCG's place in `--accel` until the engine lands.
pub struct Tcg;

impl Accelerator for Tcg {
    fn kind(&self) -> AccelKind {
        AccelKind::Tcg
    }

    fn create_vm(&self, _memory: &GuestMemoryMmap, _config: &VmConfig) -> Result<Arc<dyn Vm>> {
        Err(Error::TcgNotBuilt)
    }
}
