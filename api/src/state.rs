//! What every handler can reach: the services and the token verifier.
//! Besides the composition root, the one file of the HTTP front that names
//! adapters: the verifier and the database probe have no port of their own.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::{FileService, SessionService, TurnService};
use pantheon_infrastructure::auth::TokenVerifier;
use pantheon_infrastructure::db::DatabaseProbe;

use crate::metrics::Metrics;

/// Shared application state. Axum clones it for every request that
/// extracts it, so it is one `Arc`: one reference count, not one per
/// service handle inside.
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state over its parts.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct AppParts {
    /// Session use cases.
    pub sessions: SessionService,
    /// Turn use cases.
    pub turns: TurnService,
    /// File use cases.
    pub files: FileService,
    /// Bearer-token verification.
    pub verifier: Arc<TokenVerifier>,
    /// Readiness of the database.
    pub database: DatabaseProbe,
    /// `turns.max_input_chars`, checked while parsing the body.
    pub max_input_chars: usize,
    /// `turns.keep_alive_secs`: the comment interval of a silent stream.
    pub keep_alive: Duration,
    /// `turns.on_disconnect = cancel`: a stream whose client leaves
    /// cancels its turn.
    pub cancel_on_disconnect: bool,
    /// `server.body_read_timeout_ms`: enforced by the JSON extractors, so
    /// a late body is a `408` problem.
    pub body_read_timeout: Duration,
    /// The metrics, `None` when `server.metrics_addr` is off.
    pub metrics: Option<Arc<Metrics>>,
}
