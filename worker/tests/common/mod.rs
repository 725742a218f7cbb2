//! The shared fleet rig (`sluice_loadtests::fleet`).
#![allow(unused_imports)]
pub use sluice_loadtests::fleet::*;
