//! What every handler can reach: the services and the token verifier.

use std::sync::Arc;

use pantheon_domain::{SessionService, TurnService};
use pantheon_infrastructure::auth::TokenVerifier;
use pantheon_infrastructure::db::DatabaseProbe;

/// Shared, cheaply cloned application state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Session use cases.
    pub sessions: SessionService,
    /// Turn use cases.
    pub turns: TurnService,
    /// Bearer-token verification.
    pub verifier: Arc<TokenVerifier>,
    /// Readiness of the database.
    pub database: DatabaseProbe,
    /// `turns.max_input_chars`, checked while parsing the body.
    pub max_input_chars: usize,
}
