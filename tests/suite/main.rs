//! The contract tests, one binary: the real service in process, driven through
//! the generated client (and raw HTTP for what it cannot send), one module per
//! concern. One binary links once; a test that needs state global to its process
//! (`tests/log_secrets.rs`, a tracing subscriber) is a binary of its own.

#![allow(clippy::unwrap_used)]

mod admin;
mod api;
mod auth_table;
mod change_feed;
mod errors;
mod faults;
mod gateway;
mod jwt_attacks;
mod keys;
mod limits;
mod php_client;
mod polling;
mod postgres_tls;
mod store;
