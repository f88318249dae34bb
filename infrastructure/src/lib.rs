//! Pantheon's adapters: how the domain's ports meet the outside world.
//!
//! - [`settings`]: the typed configuration, loaded and validated once;
//! - [`db`]: the SeaORM connection and the repositories on PostgreSQL/SQLite;
//! - [`files`]: the bytes of uploaded files, in a directory or an S3 bucket;
//! - [`auth`]: bearer-token verification and minting;
//! - [`capacity`]: the provider's capacity shared by every instance, in fair order;
//! - [`provider`]: model providers;
//! - [`tokenizer`]: the domain's `TokenCounter`, with OpenAI's encodings;
//! - [`tools`]: the tools a model may call (`file_read`).

pub mod auth;
pub mod bus;
pub mod capacity;
pub mod db;
pub mod files;
pub mod limiter;
pub mod provider;
pub mod settings;
pub mod tokenizer;
pub mod tools;

pub use settings::{Settings, SettingsError};
