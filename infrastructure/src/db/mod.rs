//! Storage on SeaORM: the connection pool and the repositories, the same
//! code on PostgreSQL and SQLite.

mod connect;
pub mod entity;
mod error;
mod file_deletions;
mod file_repository;
mod file_rows;
mod session_repository;
mod turn_batch;
mod turn_repository;

pub use connect::{DatabaseProbe, connect, connect_options, is_sqlite, pool_size};
pub use file_repository::SeaOrmFileRepository;
pub use session_repository::SeaOrmSessionRepository;
pub use turn_batch::WriterTask;
pub use turn_repository::SeaOrmTurnRepository;
