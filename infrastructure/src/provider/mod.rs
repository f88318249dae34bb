//! Model providers: adapters of the domain's [`ModelProvider`] port.
//!
//! - [`BuiltinProvider`]: offline and deterministic;
//! - [`OpenAiProvider`]: an OpenAI-compatible `/chat/completions` upstream.
//!
//! [`ModelProvider`]: pantheon_domain::ports::ModelProvider

mod builtin;
mod openai;

pub use builtin::{BuiltinProvider, FAIL_MARKER, READ_LENGTH};
pub use openai::OpenAiProvider;
