//! `--accel`: which engine runs the guest, and why.

use accel::kvm::{self, KvmHost};
use accel::tcg::JitPolicy;
use accel::Accelerator;

use crate::cli::AccelChoice;

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--accel kvm: {0}")]
    KvmUnavailable(String),
    #[error(transparent)]
    Accel(#[from] accel::Error),
}

/// Set to hide /dev/kvm from `--accel auto` (tests of the fallback path).
pub const NO_KVM_ENV: &str = "RXVMM_NO_KVM";

/// Picks the engine for `choice`, saying on stderr what was picked and why.
pub fn select(choice: AccelChoice) -> Result<Box<dyn Accelerator>, SelectError> {
    let host = if std::env::var_os(NO_KVM_ENV).is_some() {
        KvmHost::Unavailable(format!("hidden by {NO_KVM_ENV}"))
    } else {
        kvm::probe()
    };
    match choice {
        AccelChoice::Tcg => Ok(tcg()),
        AccelChoice::Kvm => match host {
            KvmHost::Unavailable(why) => Err(SelectError::KvmUnavailable(why)),
            KvmHost::Pvm => {
                log::warn!(
                    "/dev/kvm is PVM-emulated: guest kernel code runs in KVM's instruction \
                     emulator and unmodified guest kernels can't run on it"
                );
                Ok(Box::new(kvm::Kvm::new().map_err(accel::Error::from)?))
            }
            KvmHost::Hardware => Ok(Box::new(kvm::Kvm::new().map_err(accel::Error::from)?)),
        },
        AccelChoice::Auto => match host {
            KvmHost::Hardware => {
                eprintln!("rxvmm: using KVM (hardware virtualization)");
                Ok(Box::new(kvm::Kvm::new().map_err(accel::Error::from)?))
            }
            KvmHost::Pvm => {
                eprintln!("rxvmm: /dev/kvm is PVM-emulated; unmodified guest kernels can't run on it; using TCG");
                Ok(tcg())
            }
            KvmHost::Unavailable(why) => {
                eprintln!("rxvmm: KVM unavailable ({why}); using TCG");
                Ok(tcg())
            }
        },
    }
}

/// TCG with the JIT policy `RXVMM_TCG_JIT` asks for: `off` (interpret
/// everything), `always` (compile every block before it runs) or a hotness
/// threshold (runs before a block is compiled); the engine's default
/// otherwise.
fn tcg() -> Box<dyn Accelerator> {
    Box::new(accel::tcg::Tcg { jit: jit_policy(std::env::var("RXVMM_TCG_JIT").ok().as_deref()) })
}

fn jit_policy(setting: Option<&str>) -> JitPolicy {
    match setting {
        Some("off") | Some("0") => JitPolicy::Off,
        Some("always") => JitPolicy::Always,
        Some(n) => match n.parse() {
            Ok(threshold) => JitPolicy::Hot(threshold),
            Err(_) => {
                log::warn!("RXVMM_TCG_JIT={n:?} is neither `off` nor a number; using the default");
                JitPolicy::default()
            }
        },
        None => JitPolicy::default(),
    }
}
