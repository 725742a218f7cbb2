//! Sluice test rig: provider emulator, Qdrant stand-in, corpus generator, the fleet rig and the
//! `sluice-bench` machinery.
pub mod bench;
pub mod corpus;
pub mod emulator;
pub mod fleet;
pub mod hostile;
pub mod s3;
pub mod standin;
