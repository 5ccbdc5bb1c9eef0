//! Helpers shared by integration tests: the brute-force feature reference and the one worker
//! harness.
#![allow(dead_code)]

pub mod reference;
pub mod worker;
