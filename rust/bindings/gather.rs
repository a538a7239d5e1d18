//! Python entry points for [`crate::gather`]: borrow the arrays, check the layout, release
//! the GIL for the kernel. Signatures are mirrored in `python/scvi_rs/_core.pyi`.

use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::guarded;

use super::arrays::{
    borrow_out, check_out_disjoint, out_byte_range, with_index, with_int, with_value, IndexArray,
    IntArray, ValueArray,
};
use crate::gather::{
    checked_rows, csr_row_spans, fill_csc_rows, fill_csr_rows, fill_dense_rows, SlotTable,
};

fn threads(n_threads: Option<i64>) -> PyResult<Option<usize>> {
    match n_threads {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(usize::try_from(n).ok()),
        Some(n) => Err(PyValueError::new_err(format!(
            "n_threads must be >= 1, got {n}"
        ))),
    }
}

fn check_out_rows(out_shape: &[usize], n_rows: usize) -> PyResult<()> {
    if out_shape[0] == n_rows {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "out.shape[0] = {} must equal len(rows) = {n_rows}",
            out_shape[0]
        )))
    }
}

/// Fill `out` (C-contiguous float32, `(len(rows), n_vars)`) with rows `rows` of a CSR matrix.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, rows, out, *, n_threads = None))]
pub fn gather_csr_rows(
    py: Python<'_>,
    indptr: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    n_threads: Option<i64>,
) -> PyResult<()> {
    let n_threads = threads(n_threads)?;
    let indptr = IndexArray::borrow(indptr, "indptr", 1)?;
    let indices = IndexArray::borrow(indices, "indices", 1)?;
    let data = ValueArray::borrow(data, "data", 1)?;
    let rows = IntArray::borrow(rows, "rows", 1)?;
    let mut out = borrow_out(out, "out", 2)?;
    check_out_disjoint(
        &out_byte_range(&out),
        &[
            ("indptr", indptr.byte_range()),
            ("indices", indices.byte_range()),
            ("data", data.byte_range()),
            ("rows", rows.byte_range()),
        ],
    )?;
    let (indptr, indices, data, rows) = (
        indptr.slice()?,
        indices.slice()?,
        data.slice()?,
        rows.slice()?,
    );
    let shape = out.shape().to_vec();
    check_out_rows(&shape, rows.len())?;
    let n_vars = shape[1];
    let out = out
        .as_slice_mut()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| {
        guarded(|| {
            let spans = with_index!(indptr, |p| with_int!(rows, |r| csr_row_spans(
                p,
                indices.len(),
                r
            )))?;
            with_index!(indices, |j| with_value!(data, |v| fill_csr_rows(
                j, v, &spans, n_vars, out, n_threads
            )))
        })
    })?;
    Ok(())
}

/// Fill `out` with rows `rows` of a CSC matrix with `n_rows` rows.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, rows, out, n_rows))]
pub fn gather_csc_rows(
    py: Python<'_>,
    indptr: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    n_rows: i64,
) -> PyResult<()> {
    let n_rows = usize::try_from(n_rows)
        .map_err(|_| PyValueError::new_err(format!("n_rows must be >= 0, got {n_rows}")))?;
    let indptr = IndexArray::borrow(indptr, "indptr", 1)?;
    let indices = IndexArray::borrow(indices, "indices", 1)?;
    let data = ValueArray::borrow(data, "data", 1)?;
    let rows = IntArray::borrow(rows, "rows", 1)?;
    let mut out = borrow_out(out, "out", 2)?;
    check_out_disjoint(
        &out_byte_range(&out),
        &[
            ("indptr", indptr.byte_range()),
            ("indices", indices.byte_range()),
            ("data", data.byte_range()),
            ("rows", rows.byte_range()),
        ],
    )?;
    let (indptr, indices, data, rows) = (
        indptr.slice()?,
        indices.slice()?,
        data.slice()?,
        rows.slice()?,
    );
    let shape = out.shape().to_vec();
    check_out_rows(&shape, rows.len())?;
    if indptr.len() != shape[1] + 1 {
        return Err(PyValueError::new_err(format!(
            "out.shape[1] = {} must equal the number of columns, len(indptr) - 1 = {}",
            shape[1],
            indptr.len().saturating_sub(1)
        )));
    }
    let out = out
        .as_slice_mut()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| {
        guarded(|| {
            let table = with_int!(rows, |r| SlotTable::new(r, n_rows))?;
            with_index!(indptr, |p| with_index!(indices, |j| with_value!(
                data,
                |v| fill_csc_rows(p, j, v, &table, out)
            )))
        })
    })?;
    Ok(())
}

/// Fill `out` with rows `rows` of the C-contiguous 2-D array `X`.
#[pyfunction]
#[pyo3(signature = (X, rows, out, *, n_threads = None))]
#[allow(non_snake_case)]
pub fn gather_dense_rows(
    py: Python<'_>,
    X: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    n_threads: Option<i64>,
) -> PyResult<()> {
    let n_threads = threads(n_threads)?;
    let x = ValueArray::borrow(X, "X", 2)?;
    let x_shape = super::arrays::ndarray(X, "X")?.shape().to_vec();
    let rows = IntArray::borrow(rows, "rows", 1)?;
    let mut out = borrow_out(out, "out", 2)?;
    check_out_disjoint(
        &out_byte_range(&out),
        &[("X", x.byte_range()), ("rows", rows.byte_range())],
    )?;
    let (x, rows) = (x.slice()?, rows.slice()?);
    let shape = out.shape().to_vec();
    check_out_rows(&shape, rows.len())?;
    if shape[1] != x_shape[1] {
        return Err(PyValueError::new_err(format!(
            "out.shape[1] = {} must equal X.shape[1] = {}",
            shape[1], x_shape[1]
        )));
    }
    let (n_rows, n_vars) = (x_shape[0], x_shape[1]);
    let out = out
        .as_slice_mut()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| {
        guarded(|| {
            let rows = with_int!(rows, |r| checked_rows(r, n_rows))?;
            with_value!(x, |v| fill_dense_rows(v, n_vars, &rows, out, n_threads))
        })
    })?;
    Ok(())
}
