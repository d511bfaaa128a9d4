//! The DBA's migration from quote-built bars to trades bars, by phase of the plan:
//! legacy marking (legacy.rs), clean-up and the way back (archive.rs), verification
//! (verify.rs). Every function runs in one transaction: it finishes whole or changes nothing.

pub mod archive;
pub mod legacy;
pub mod verify;
