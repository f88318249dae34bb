//! SeaORM entities, one module a table. They mirror the migrations and stay
//! inside this crate's adapters: the domain has its own types.

pub mod deleted_file;
pub mod session;
pub mod turn;
pub mod uploaded_file;
pub mod user;
pub mod user_storage;
