//! The KVM engine.

/// Errors of the KVM engine (placeholder until the engine lands).
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
}
