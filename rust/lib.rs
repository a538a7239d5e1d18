//! scvi-rs hot data path. Kernels are plain Rust over slices; the PyO3 bindings live in
//! `bindings/` behind the default `python` feature, so `cargo test --no-default-features`
//! needs no Python.
//!
//! - [`gather`]: CSR/CSC/dense row gather into a caller-owned dense `f32` buffer.
//! - [`checks`]: the first NaN, infinite or negative stored value.
//! - [`categorical`]: category codes against a mapping, and pandas' category order.
//! - [`registry`]: stable registry fingerprint (SHA-256 of canonical JSON), UUIDs.
//! - [`split`]: split sizes, NumPy-identical permutations, external split validation.
//! - [`errors`]: the one error type, mapped once to Python exceptions.
//! - [`num`]: index/value element traits; [`pyfmt`]: Python-style `repr` for messages.

pub mod categorical;
pub mod checks;
pub mod errors;
pub mod gather;
pub mod num;
pub mod pyfmt;
pub mod registry;
pub mod split;

#[cfg(feature = "python")]
mod bindings;
