//! Dead state-store elimination on compiled ops: a store to a state field
//! that a later store to the same field overwrites, with nothing in between
//! that could observe the state, is dropped. Observers: a state load of
//! the field, a helper call, any op that may fault or leave the block, and
//! branches (the later store may not run).

use super::X;

/// Drops state stores that a later store to the same field overwrites
/// before anything can observe the state: a state load of it, a helper,
/// an op that may fault or leave the block, or a branch.
pub(super) fn drop_dead_env_stores(out: &[X], needed: &mut [bool]) {
    // Full-width stores ahead (in execution order) of the current op.
    let mut ahead: Vec<u32> = Vec::new();
    for i in (0..out.len()).rev() {
        if !needed[i] {
            continue;
        }
        let (off, size) = match out[i] {
            X::StEnv64 { off, .. } => (off, 8),
            X::StEnv { off, size, .. } | X::StEnvI { off, size, .. } => (off, size.bytes() as u32),
            X::LdEnv64 { off, .. } => {
                ahead.retain(|&o| o + 8 <= off || o >= off + 8);
                continue;
            }
            X::LdEnv { off, size, .. } => {
                ahead.retain(|&o| o + 8 <= off || o >= off + size.bytes() as u32);
                continue;
            }
            X::Load { .. }
            | X::Store { .. }
            | X::StoreI { .. }
            | X::Call { .. }
            | X::SmcCheck { .. }
            | X::Exit { .. }
            | X::Raise { .. }
            | X::GotoTb { .. }
            | X::Br { .. }
            | X::BrCond { .. }
            | X::BrCondI { .. } => {
                ahead.clear();
                continue;
            }
            _ => continue,
        };
        if ahead.iter().any(|&o| o <= off && off + size <= o + 8) {
            needed[i] = false;
        } else if size == 8 {
            ahead.push(off);
        }
    }
}
