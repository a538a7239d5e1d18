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

/// Run a kernel so that a panic (a bug, never bad input) becomes a `RuntimeError` instead
/// of pyo3's `PanicException`, which derives from `BaseException` and so escapes
/// `except Exception`.
pub fn guarded<T>(kernel: impl FnOnce() -> crate::errors::Result<T>) -> pyo3::PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(kernel)) {
        Ok(result) => result.map_err(PyErr::from),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "internal error in scvi_rs._core (please report it): {what}"
            )))
        }
    }
}
