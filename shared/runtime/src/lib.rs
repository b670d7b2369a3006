//! The runtime every Custodian service shares, so that each one starts, is
//! observed, is limited and stops the same way.
//!
//! A service crate provides a [`server::ServiceModule`]; the `custodian` binary
//! (or a test) hands modules to [`server::Application`], which owns the
//! listener, the tower stack, health, reflection and graceful shutdown.

pub mod config;
pub mod database;
pub mod error;
pub mod metrics;
pub mod paging;
pub mod server;
pub mod telemetry;
pub mod time;

pub use config::Config;
pub use database::{Backend, Database};
pub use error::ApiError;
pub use server::{Application, Deadline, Gate, HttpRoutes, ServiceModule, Verdict};
