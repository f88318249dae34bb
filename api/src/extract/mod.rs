//! Extractors whose rejections are [`ApiError`](crate::error::ApiError)s, so
//! bad input gets the same problem responses as everything else.

mod auth;
mod json;
mod path;

pub use auth::Authenticated;
pub use json::{ApiJson, JsonOrEmpty};
pub use path::{ApiPath, ApiQuery};
