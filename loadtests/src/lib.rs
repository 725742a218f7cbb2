//! Sluice test rig: provider emulator, Qdrant stand-in, corpus generator and the fleet rig.
pub mod corpus;
pub mod emulator;
pub mod fleet;
pub mod s3;
pub mod standin;
