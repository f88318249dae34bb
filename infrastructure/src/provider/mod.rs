//! Model providers: adapters of the domain's [`ModelProvider`] port.
//!
//! [`ModelProvider`]: pantheon_domain::ports::ModelProvider

mod builtin;

pub use builtin::{BuiltinProvider, FAIL_MARKER};
