//! The error of input that breaks a rule of the product: a leaf, so the
//! entities that validate themselves need not import the turn's errors.

use thiserror::Error;

/// Input that breaks a rule of the product; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field, as the client named it.
    pub field: &'static str,
    /// What is wrong with it, for a human.
    pub message: String,
}

impl ValidationError {
    /// A validation error on `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}
