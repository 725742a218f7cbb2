//! Helpers shared by the integration tests: each file here starts one real test process.
pub mod emulator;
pub mod standin;
