//! Python entry point for [`crate::checks`].

use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::arrays::{ndarray, with_value, ValueArray};
use crate::checks::find_invalid;

/// `(flat position, kind)` of the first NaN, infinite or negative value of the
/// C-contiguous array `data` (any shape), or `None`.
#[pyfunction]
pub fn find_invalid_value(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Option<(usize, &'static str)>> {
    let arr = ValueArray::borrow_any(data, "data")?;
    if !ndarray(data, "data")?.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "data must be C-contiguous; pass numpy.ascontiguousarray(data)",
        ));
    }
    let values = arr.slice()?;
    let found = py.detach(|| with_value!(values, |v| find_invalid(v)));
    Ok(found.map(|(pos, why)| (pos, why.name())))
}
