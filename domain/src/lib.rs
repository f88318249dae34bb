//! Pantheon's domain: the chat entities, the ports the adapters implement, the
//! errors a turn can end in, and the services that order the work of a request.
//!
//! Nothing here knows HTTP, SQL or Redis: the `api` crate adapts requests to
//! these types and the `infrastructure` crate implements the ports, so the
//! rules of the product (the order of work of a turn, what counts as valid
//! input, what a failed reply leaves behind) live in one place and are tested
//! without a server.

pub mod capacity;
pub mod clock;
pub mod error;
pub mod file;
pub mod files;
pub mod idempotency;
pub mod ids;
mod lifecycle;
pub mod limiter;
pub mod live;
pub mod observe;
pub mod page;
pub mod ports;
pub mod session;
pub mod session_service;
pub mod tokens;
pub mod tool;
pub mod turn;
pub mod turn_run;
pub mod turn_service;
mod turn_task;
pub mod validation;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ProviderError, StorageError, TurnError, ValidationError};
pub use file::{NewUpload, StorageUsage, StoredFile, Uploaded};
pub use files::{FilePolicy, FileService};
pub use ids::{Caller, FileId, SessionId, TurnId, UserId};
pub use observe::{Endpoint, LimiterObserver, TurnObserver};
pub use page::{Page, PageRequest};
pub use session::{NewSession, Session};
pub use session_service::SessionService;
pub use tokens::{OutputMeter, TokenCounter};
pub use turn::{FailureKind, FinishReason, NewTurn, Turn, TurnEnd, TurnFailure, TurnStatus, Usage};
pub use turn_run::{TurnEvent, TurnRun};
pub use turn_service::{Submitted, TurnService};
pub use turn_task::TurnPolicy;
