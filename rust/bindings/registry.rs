//! Python entry points for [`crate::registry`].

use pyo3::prelude::*;

use crate::registry;

/// Lower-case hex SHA-256 of the canonical form of `json_text`; `ValueError` if invalid.
#[pyfunction]
pub fn registry_fingerprint(py: Python<'_>, json_text: &str) -> PyResult<String> {
    Ok(py.detach(|| registry::registry_fingerprint(json_text))?)
}

/// Whether `text` is a UUID in canonical 8-4-4-4-12 hex form (any case).
#[pyfunction]
pub fn validate_uuid(text: &str) -> bool {
    registry::validate_uuid(text)
}

/// A new random UUID4 string (lower case), from the OS random source.
#[pyfunction]
pub fn new_uuid() -> PyResult<String> {
    Ok(registry::new_uuid()?)
}
