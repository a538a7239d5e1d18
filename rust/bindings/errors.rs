//! The single conversion from [`CoreError`] to a Python exception.

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyTypeError, PyValueError, PyWarning};
use pyo3::PyErr;

use crate::errors::{CoreError, ErrorKind};

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        let msg = err.to_string();
        match err.kind() {
            ErrorKind::Index => PyIndexError::new_err(msg),
            ErrorKind::Value => PyValueError::new_err(msg),
            ErrorKind::Type => PyTypeError::new_err(msg),
            ErrorKind::Warning => PyWarning::new_err(msg),
            ErrorKind::Memory => PyMemoryError::new_err(msg),
        }
    }
}
