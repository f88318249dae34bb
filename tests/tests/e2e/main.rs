//! End-to-end tests: real HTTP against a real server on a random port, on
//! PostgreSQL and (for everything that touches storage) SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Runs a storage-touching test body (`async fn name(Backend)`) once per
/// database, as `name::postgres` and `name::sqlite`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(pantheon_tests::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(pantheon_tests::Backend::Sqlite).await
                }
            }
        )*
    };
}

/// Runs a limiter test body (`async fn name(Store)`) once per Redis
/// deployment, as `name::single_redis` and `name::cluster`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single_redis() {
                    super::$name(pantheon_tests::limiter::Store::Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name(pantheon_tests::limiter::Store::Cluster).await
                }
            }
        )*
    };
}

mod auth;
mod bad_input;
mod blob_store;
mod builtin_provider;
mod capacity_store;
mod charging;
mod concurrency;
mod connections;
mod crash_recovery;
mod database_outage;
mod file_repository;
mod file_tools;
mod http_surface;
mod idempotency;
mod limiter_abandoned;
mod limiter_actor;
mod limiter_cluster;
mod limiter_cluster_faults;
mod limiter_faults;
mod limiter_http;
mod limiter_leases;
mod limiter_log;
mod limiter_overload;
mod locked_begin;
mod metrics;
mod migrations;
mod openai_provider;
mod openai_tool_rounds;
mod openapi;
mod ownership;
mod playground;
mod provider_queue;
mod request_heads;
mod resume;
mod sessions;
mod shutdown;
mod simultaneous_start;
mod streaming;
mod tokens;
mod tokens_actor;
mod tool_rounds;
mod turn_writes;
mod turns;
mod upload_crash;
mod uploads;
