//! Python entry points for [`crate::split`]. Warnings the reference emits are emitted here
//! as `UserWarning` with the caller's `stacklevel`.

use std::ffi::CString;

use numpy::{PyArray1, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList, PyTuple};

use super::arrays::{dtype_str, IntArray};
use crate::split;

fn warn(py: Python<'_>, msg: Option<String>, stacklevel: i32) -> PyResult<()> {
    if let Some(msg) = msg {
        let msg = CString::new(msg).expect("warning texts have no NUL");
        PyErr::warn(py, &py.get_type::<PyUserWarning>(), &msg, stacklevel)?;
    }
    Ok(())
}

fn non_negative(n: i64, name: &str) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {n}")))
}

/// `(n_train, n_val)` exactly as scvi-tools' `validate_data_split`.
///
/// `drop_last` and `train_size_is_none` default to `False` and `True` (an explicit `None`
/// reads as the default). Like the reference, only the `False` object counts as not
/// dropping the last batch.
#[pyfunction]
#[pyo3(signature = (
    n_samples, train_size, validation_size = None, batch_size = None, drop_last = None,
    train_size_is_none = None, *, stacklevel = 2
), text_signature = "(n_samples, train_size, validation_size=None, batch_size=None, \
    drop_last=False, train_size_is_none=True, *, stacklevel=2)")]
#[allow(clippy::too_many_arguments)]
pub fn split_sizes(
    py: Python<'_>,
    n_samples: i64,
    train_size: f64,
    validation_size: Option<f64>,
    batch_size: Option<i64>,
    drop_last: Option<&Bound<'_, PyAny>>,
    train_size_is_none: Option<&Bound<'_, PyAny>>,
    stacklevel: i32,
) -> PyResult<(usize, usize)> {
    let n = non_negative(n_samples, "n_samples")?;
    // The reference tests `drop_last is False`; omitted means False.
    let drop_last = drop_last.is_some_and(|d| !d.is(PyBool::new(py, false)));
    let train_size_is_none = match train_size_is_none {
        None => true,
        Some(t) => t.is_truthy()?,
    };
    let s = split::split_sizes(
        n,
        train_size,
        validation_size,
        batch_size,
        drop_last,
        train_size_is_none,
    )?;
    warn(py, s.warning, stacklevel)?;
    Ok((s.n_train, s.n_val))
}

/// `numpy.random.RandomState(seed).permutation(n)` as int64.
#[pyfunction]
pub fn legacy_permutation<'py>(
    py: Python<'py>,
    n: i64,
    seed: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let n = non_negative(n, "n")?;
    let seed = if seed.is_none() {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b)
            .map_err(|e| PyValueError::new_err(format!("OS random source failed: {e}")))?;
        u32::from_le_bytes(b)
    } else {
        let idx = seed
            .call_method0("__index__")
            .map_err(|_| PyTypeError::new_err("seed must be an integer or None"))?;
        let value: i128 = match idx.extract::<i64>() {
            Ok(v) => i128::from(v),
            Err(_) => i128::MAX, // beyond int64: out of range either way
        };
        split::legacy_seed(value)?
    };
    let perm = py.detach(|| split::legacy_permutation(n, seed))?;
    Ok(PyArray1::from_vec(py, perm))
}

/// `(train, valid, test)` int64 arrays after scvi-tools' external-indexing checks.
#[pyfunction]
#[pyo3(
    signature = (n_samples, external_indexing, batch_size = None, drop_last = None, *, stacklevel = 2),
    text_signature = "(n_samples, external_indexing, batch_size=None, drop_last=False, *, stacklevel=2)"
)]
pub fn validate_external_indexing<'py>(
    py: Python<'py>,
    n_samples: i64,
    external_indexing: &Bound<'py, PyAny>,
    batch_size: Option<i64>,
    drop_last: Option<&Bound<'py, PyAny>>,
    stacklevel: i32,
) -> PyResult<Bound<'py, PyTuple>> {
    let n = non_negative(n_samples, "n_samples")?;
    let list = external_indexing
        .cast::<PyList>()
        .map_err(|_| PyValueError::new_err("External indexing is not of list type"))?;
    if list.len() > 3 {
        return Err(PyValueError::new_err(format!(
            "External indexing must have at most 3 arrays (train, valid, test), got {}",
            list.len()
        )));
    }
    let mut items: Vec<Option<Bound<'py, PyAny>>> =
        list.iter().map(|o| (!o.is_none()).then_some(o)).collect();
    items.resize(3, None);
    if items
        .iter()
        .flatten()
        .any(|o| o.cast::<PyUntypedArray>().is_err())
    {
        return Err(PyValueError::new_err(
            "One of the given external indexing arrays is not a np.array",
        ));
    }
    let names = ["train", "valid", "test"];
    let mut sets: Vec<Vec<i64>> = Vec::with_capacity(3);
    for (item, name) in items.iter().zip(names) {
        let Some(obj) = item else {
            sets.push(Vec::new());
            continue;
        };
        let arr = obj.cast::<PyUntypedArray>()?;
        if arr.len() == 0 {
            // `np.array([])` (float64) is how the reference pads missing sets.
            sets.push(Vec::new());
            continue;
        }
        if arr.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "the {name} external indexing array must be 1-dimensional, got {} dimensions",
                arr.ndim()
            )));
        }
        let ints = IntArray::borrow_any(obj, name).map_err(|_| {
            PyTypeError::new_err(format!(
                "the {name} external indexing array must hold integers, got dtype {}",
                dtype_str(arr)
            ))
        })?;
        sets.push(ints.to_i64_vec(name)?);
    }
    let drop_last = drop_last.is_some_and(|d| !d.is(PyBool::new(py, false)));
    let res = py.detach(|| {
        split::validate_external_indexing(n, [&sets[0], &sets[1], &sets[2]], batch_size, drop_last)
    })?;
    warn(py, res.warning, stacklevel)?;
    let [train, val, test]: [Vec<i64>; 3] = sets.try_into().expect("three sets");
    PyTuple::new(
        py,
        [
            PyArray1::from_vec(py, train),
            PyArray1::from_vec(py, val),
            PyArray1::from_vec(py, test),
        ],
    )
}
