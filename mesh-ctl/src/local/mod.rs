//! A mesh as an operator runs it on one machine and looks after it: `up` starts a local mesh of
//! real node processes, `status` shows members, partitions and health, `check` runs the
//! linkerd-style checklist (certificates, reachability, layout agreement, audit chains). `status`
//! and `check` work on any mesh directory, local or not.

pub mod check;
pub mod status;
pub mod up;
