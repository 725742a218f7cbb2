//! Sluice test rig: provider emulator, Qdrant stand-in and the real-server launcher, TCP fault
//! proxy, corpus generator, the fleet rig and the `sluice-bench` machinery (benchmarks, chaos).
pub mod bench;
pub mod chaos;
pub mod corpus;
pub mod emulator;
pub mod faultproxy;
pub mod fleet;
pub mod qdrant_server;
pub mod s3;
pub mod standin;
