//! Borrowing NumPy arrays by dtype: each accepted dtype is one enum variant holding a
//! read-only borrow, so kernels get plain slices with no cast or copy. Layout errors are
//! `ValueError`s, type and dtype errors `TypeError`s, all naming the argument.

use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// `obj` as an ndarray, or a `TypeError` naming `name`.
pub fn ndarray<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    name: &str,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        PyTypeError::new_err(format!("{name} must be a numpy.ndarray, got {ty}"))
    })
}

/// Check `ndim` and C-contiguity (`ValueError` otherwise).
pub fn check_layout(arr: &Bound<'_, PyUntypedArray>, name: &str, ndim: usize) -> PyResult<()> {
    if arr.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{name} must be {ndim}-dimensional, got {} dimensions",
            arr.ndim()
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name} must be C-contiguous; pass numpy.ascontiguousarray({name})"
        )));
    }
    Ok(())
}

pub fn dtype_str(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype()
        .str()
        .map_or_else(|_| "?".to_string(), |s| s.to_string())
}

fn is<T: Element>(arr: &Bound<'_, PyUntypedArray>) -> bool {
    arr.dtype().is_equiv_to(&numpy::dtype::<T>(arr.py()))
}

fn borrow<'py, T: Element>(
    arr: &Bound<'py, PyUntypedArray>,
    name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let typed = arr.cast::<PyArrayDyn<T>>()?;
    typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name} cannot be borrowed for reading: {e}")))
}

/// Borrow a writable C-contiguous float32 array of `ndim` dimensions (`out` buffers).
pub fn borrow_out<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
) -> PyResult<PyReadwriteArrayDyn<'py, f32>> {
    let arr = ndarray(obj, name)?;
    if !is::<f32>(arr) {
        return Err(PyTypeError::new_err(format!(
            "{name} must have dtype float32, got {}",
            dtype_str(arr)
        )));
    }
    check_layout(arr, name, ndim)?;
    arr.cast::<PyArrayDyn<f32>>()?
        .try_readwrite()
        .map_err(|e| match e {
            numpy::BorrowError::NotWriteable => {
                PyValueError::new_err(format!("{name} is read-only"))
            }
            _ => PyValueError::new_err(format!(
                "{name} overlaps one of the input arrays; pass a separate buffer"
            )),
        })
}

/// `[start, start + len * itemsize)`, empty for an empty array.
pub fn contiguous_bytes(start: usize, len: usize, itemsize: usize) -> std::ops::Range<usize> {
    start..start.saturating_add(len.saturating_mul(itemsize))
}

/// `ValueError` if the bytes of `out` overlap those of any input.
///
/// NumPy's borrow tracking (and rust-numpy's) relates arrays through their base objects,
/// which views built with `as_strided` or `frombuffer` do not share; the addresses are what
/// decides whether writing `out` changes an input.
pub fn check_out_disjoint(
    out: &std::ops::Range<usize>,
    inputs: &[(&str, std::ops::Range<usize>)],
) -> PyResult<()> {
    for (name, range) in inputs {
        if !out.is_empty() && !range.is_empty() && out.start < range.end && range.start < out.end {
            return Err(PyValueError::new_err(format!(
                "out shares memory with {name}; pass a separate output buffer"
            )));
        }
    }
    Ok(())
}

/// The bytes of a borrowed `out` buffer.
pub fn out_byte_range(out: &PyReadwriteArrayDyn<'_, f32>) -> std::ops::Range<usize> {
    contiguous_bytes(out.data() as usize, out.len(), size_of::<f32>())
}

macro_rules! typed_arrays {
    ($(#[$meta:meta])* $arr:ident, $slice:ident, $names:literal, [$($var:ident => $t:ty),+ $(,)?]) => {
        $(#[$meta])*
        pub enum $arr<'py> {
            $($var(PyReadonlyArrayDyn<'py, $t>)),+
        }

        /// Borrowed contents of the matching array enum; `Send`, so it can cross `detach`.
        #[derive(Clone, Copy)]
        pub enum $slice<'a> {
            $($var(&'a [$t])),+
        }

        impl<'py> $arr<'py> {
            /// Borrow `obj` (any ndim, any strides), or raise `TypeError` for another dtype.
            pub fn borrow_any(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
                let arr = ndarray(obj, name)?;
                $(if is::<$t>(arr) {
                    return Ok(Self::$var(borrow::<$t>(arr, name)?));
                })+
                Err(PyTypeError::new_err(format!(
                    "{name} must have dtype {}, got {}",
                    $names,
                    dtype_str(arr)
                )))
            }

            /// Borrow a C-contiguous `ndim`-dimensional `obj`.
            pub fn borrow(obj: &Bound<'py, PyAny>, name: &str, ndim: usize) -> PyResult<Self> {
                let this = Self::borrow_any(obj, name)?;
                check_layout(ndarray(obj, name)?, name, ndim)?;
                Ok(this)
            }

            /// The bytes the elements occupy, by address (the array is C-contiguous).
            pub fn byte_range(&self) -> std::ops::Range<usize> {
                match self {
                    $(Self::$var(a) => contiguous_bytes(a.data() as usize, a.len(), size_of::<$t>())),+
                }
            }

            /// The contiguous contents.
            pub fn slice(&self) -> PyResult<$slice<'_>> {
                Ok(match self {
                    $(Self::$var(a) => $slice::$var(a.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?)),+
                })
            }
        }

        impl $slice<'_> {
            /// Number of elements.
            #[allow(dead_code)]
            pub fn len(&self) -> usize {
                match self {
                    $(Self::$var(s) => s.len()),+
                }
            }
        }

    };
}

typed_arrays!(
    /// `indptr` / `indices`: int32 or int64.
    IndexArray, IndexSlice, "int32 or int64",
    [I32 => i32, I64 => i64]
);

typed_arrays!(
    /// Row ids and split indices: any integer dtype.
    IntArray, IntSlice, "an integer type (int8..int64, uint8..uint64)",
    [I64 => i64, I32 => i32, I16 => i16, I8 => i8, U64 => u64, U32 => u32, U16 => u16, U8 => u8]
);

typed_arrays!(
    /// Stored values: float32/64, any integer width, or bool.
    ValueArray, ValueSlice,
    "float32, float64, bool or an integer type (int8..int64, uint8..uint64)",
    [F32 => f32, F64 => f64, I32 => i32, I64 => i64, I16 => i16, I8 => i8,
     U64 => u64, U32 => u32, U16 => u16, U8 => u8, Bool => bool]
);

fn to_i64<T: Element + Copy + std::fmt::Display>(
    a: &PyReadonlyArrayDyn<'_, T>,
    name: &str,
) -> PyResult<Vec<i64>>
where
    i64: TryFrom<T>,
{
    let conv = |&v: &T| {
        i64::try_from(v).map_err(|_| {
            PyValueError::new_err(format!("{name} holds {v}, outside the int64 range"))
        })
    };
    if let Ok(s) = a.as_slice() {
        return s.iter().map(conv).collect();
    }
    a.as_array()
        .iter()
        .map(|&v| {
            i64::try_from(v).map_err(|_| {
                PyValueError::new_err(format!("{name} holds {v}, outside the int64 range"))
            })
        })
        .collect()
}

impl IntArray<'_> {
    /// The values (any layout) as `i64`, or `ValueError` for a `uint64` beyond `i64::MAX`.
    pub fn to_i64_vec(&self, name: &str) -> PyResult<Vec<i64>> {
        match self {
            Self::I64(a) => Ok(a
                .as_slice()
                .map_or_else(|_| a.as_array().iter().copied().collect(), <[i64]>::to_vec)),
            Self::I32(a) => to_i64(a, name),
            Self::I16(a) => to_i64(a, name),
            Self::I8(a) => to_i64(a, name),
            Self::U64(a) => to_i64(a, name),
            Self::U32(a) => to_i64(a, name),
            Self::U16(a) => to_i64(a, name),
            Self::U8(a) => to_i64(a, name),
        }
    }
}

/// Run `$body` with `$s` bound to the typed slice of an [`IndexSlice`].
macro_rules! with_index {
    ($e:expr, |$s:ident| $body:expr) => {
        match $e {
            $crate::bindings::arrays::IndexSlice::I32($s) => $body,
            $crate::bindings::arrays::IndexSlice::I64($s) => $body,
        }
    };
}

/// Run `$body` with `$s` bound to the typed slice of an [`IntSlice`].
macro_rules! with_int {
    ($e:expr, |$s:ident| $body:expr) => {
        match $e {
            $crate::bindings::arrays::IntSlice::I64($s) => $body,
            $crate::bindings::arrays::IntSlice::I32($s) => $body,
            $crate::bindings::arrays::IntSlice::I16($s) => $body,
            $crate::bindings::arrays::IntSlice::I8($s) => $body,
            $crate::bindings::arrays::IntSlice::U64($s) => $body,
            $crate::bindings::arrays::IntSlice::U32($s) => $body,
            $crate::bindings::arrays::IntSlice::U16($s) => $body,
            $crate::bindings::arrays::IntSlice::U8($s) => $body,
        }
    };
}

/// Run `$body` with `$s` bound to the typed slice of a [`ValueSlice`].
macro_rules! with_value {
    ($e:expr, |$s:ident| $body:expr) => {
        match $e {
            $crate::bindings::arrays::ValueSlice::F32($s) => $body,
            $crate::bindings::arrays::ValueSlice::F64($s) => $body,
            $crate::bindings::arrays::ValueSlice::I32($s) => $body,
            $crate::bindings::arrays::ValueSlice::I64($s) => $body,
            $crate::bindings::arrays::ValueSlice::I16($s) => $body,
            $crate::bindings::arrays::ValueSlice::I8($s) => $body,
            $crate::bindings::arrays::ValueSlice::U64($s) => $body,
            $crate::bindings::arrays::ValueSlice::U32($s) => $body,
            $crate::bindings::arrays::ValueSlice::U16($s) => $body,
            $crate::bindings::arrays::ValueSlice::U8($s) => $body,
            $crate::bindings::arrays::ValueSlice::Bool($s) => $body,
        }
    };
}

pub(crate) use {with_index, with_int, with_value};
