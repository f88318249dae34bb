//! One test's log lines, captured while other tests run in the same binary.
//!
//! `tracing` caches each callsite's interest process-wide, computed when the
//! callsite is first hit. While exactly one dispatcher is registered, that
//! interest is asked of the *hitting thread's* default subscriber: a sibling
//! test's thread (which has none) that reaches a callsite first caches
//! `never`, and the capture silently loses the line (it did, one run in
//! several, for `the_api_key_appears_in_no_log_line`). A second registered
//! dispatcher, held as long as the capture, makes every registration ask all
//! registered dispatchers, the capturing one included, and re-asks the
//! callsites registered before it.

use std::sync::{Arc, Mutex};

use tracing::Dispatch;
use tracing::subscriber::NoSubscriber;

/// Log output kept in memory.
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text().lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
    }
}

/// A plain-text subscriber writing into [`CapturedLogs`], to be installed as
/// the default of the threads under test (never globally).
#[derive(Debug)]
pub struct LogCapture {
    pub logs: CapturedLogs,
    pub dispatch: Dispatch,
    /// Registered after `dispatch`, for the reason in the module doc.
    _anchor: Dispatch,
}

impl LogCapture {
    /// Captures what `filter` (an `EnvFilter` directive) lets through.
    pub fn new(filter: &str) -> Self {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let dispatch = Dispatch::new(subscriber);
        let anchor = Dispatch::new(NoSubscriber::default());
        Self { logs, dispatch, _anchor: anchor }
    }
}
