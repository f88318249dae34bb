//! Pantheon's adapters: how the domain's ports meet the outside world.
//!
//! - [`settings`]: the typed configuration, loaded and validated once;
//! - [`db`]: the SeaORM connection and the repositories on PostgreSQL/SQLite;
//! - [`auth`]: bearer-token verification and minting;
//! - [`provider`]: model providers;
//! - [`tokenizer`]: the domain's `TokenCounter`, with OpenAI's encodings.

pub mod auth;
pub mod bus;
pub mod db;
pub mod limiter;
pub mod provider;
pub mod settings;
pub mod tokenizer;

pub use settings::{Settings, SettingsError};
