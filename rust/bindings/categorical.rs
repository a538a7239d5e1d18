//! Python entry points for [`crate::categorical`]. Strings are borrowed as `&str` from the
//! Python objects while attached; the hashing then runs detached.

use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use super::arrays::{dtype_str, IntArray};
use super::errors::guarded;
use crate::categorical::{self, Key, PtrCache};

/// What kinds of values a column holds, to pick the dtype of its categories.
#[derive(Default, Clone, Copy)]
struct Kinds {
    string: bool,
    boolean: bool,
    int: bool,
    float: bool,
}

impl Kinds {
    fn only_bool(self) -> bool {
        self.boolean && !self.int && !self.float && !self.string
    }
    fn numbers_without_bool(self) -> bool {
        (self.int || self.float) && !self.boolean && !self.string
    }
}

/// Whether one side holds only booleans and the other only numbers (which pandas never
/// matches, though `True == 1` in Python): the two kinds' names, for the message.
fn bool_number_mismatch(values: Kinds, mapping: Kinds) -> Option<(&'static str, &'static str)> {
    if values.only_bool() && mapping.numbers_without_bool() {
        Some(("booleans", "numbers"))
    } else if values.numbers_without_bool() && mapping.only_bool() {
        Some(("numbers", "booleans"))
    } else {
        None
    }
}

/// A 1-D array of values, kept alive while its keys borrow from it.
enum Source<'py> {
    Object(PyReadonlyArray1<'py, Py<PyAny>>),
    Int(IntArray<'py>),
    Float(PyReadonlyArray1<'py, f64>),
    Bool(PyReadonlyArray1<'py, bool>),
}

fn to_source<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Source<'py>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr: Bound<'py, PyAny> = if obj.cast::<PyUntypedArray>().is_ok() {
        obj.clone()
    } else {
        np.getattr("asarray")?.call1((obj,))?
    };
    let untyped = arr.cast::<PyUntypedArray>()?;
    if untyped.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be 1-dimensional, got {} dimensions",
            untyped.ndim()
        )));
    }
    let kind = untyped.dtype().kind();
    let readonly_err = |e: numpy::BorrowError| PyValueError::new_err(format!("{name}: {e}"));
    match kind {
        b'O' => Ok(Source::Object(
            arr.cast::<PyArray1<Py<PyAny>>>()?
                .try_readonly()
                .map_err(readonly_err)?,
        )),
        // Fixed-width and variable-width numpy strings: go through Python str objects.
        b'U' | b'T' => {
            let obj_arr = arr.call_method1("astype", ("object",))?;
            let ro = obj_arr
                .cast::<PyArray1<Py<PyAny>>>()?
                .try_readonly()
                .map_err(readonly_err)?;
            Ok(Source::Object(ro))
        }
        b'i' | b'u' => Ok(Source::Int(IntArray::borrow_any(&arr, name)?)),
        b'f' => {
            let f64_arr = arr.call_method1("astype", ("float64",))?;
            Ok(Source::Float(
                f64_arr
                    .cast::<PyArray1<f64>>()?
                    .try_readonly()
                    .map_err(readonly_err)?,
            ))
        }
        b'b' => Ok(Source::Bool(
            arr.cast::<PyArray1<bool>>()?
                .try_readonly()
                .map_err(readonly_err)?,
        )),
        _ => Err(PyTypeError::new_err(format!(
            "{name} must hold strings, integers, floats or booleans, got dtype {}",
            dtype_str(untyped)
        ))),
    }
}

fn is_na_singleton(obj: &Bound<'_, PyAny>) -> bool {
    // pandas.NA and pandas.NaT are missing values too.
    obj.get_type()
        .name()
        .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "NAType" || n == "NaTType"))
}

fn object_key<'a>(
    obj: &'a Bound<'_, PyAny>,
    pos: usize,
    name: &str,
    kinds: &mut Kinds,
) -> PyResult<Key<'a>> {
    if let Ok(s) = obj.cast::<PyString>() {
        kinds.string = true;
        return Ok(Key::Str(s.to_str()?));
    }
    if obj.is_none() || is_na_singleton(obj) {
        return Ok(Key::Missing);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        kinds.boolean = true;
        return Ok(Key::Int(i64::from(b.is_true())));
    }
    if obj.cast::<PyInt>().is_ok() || obj.hasattr("__index__")? {
        kinds.int = true;
        return obj.extract::<i64>().map(Key::Int).map_err(|_| {
            PyValueError::new_err(format!("{name}[{pos}] = {obj} is outside the int64 range"))
        });
    }
    if obj.cast::<PyFloat>().is_ok() || obj.hasattr("__float__")? {
        let x: f64 = obj.extract()?;
        let key = Key::from_f64(x);
        if matches!(key, Key::Float(_)) {
            kinds.float = true;
        } else if key != Key::Missing {
            kinds.int = true;
            kinds.float = true;
        }
        return Ok(key);
    }
    let ty = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    Err(PyTypeError::new_err(format!(
        "{name}[{pos}] has unsupported type {ty}; categories must be str, int, float or bool"
    )))
}

/// The keys of `src`, and strong references to every `str` object a key borrows from.
///
/// The hashing runs with the GIL released, when another thread may replace the array's
/// elements and so free the strings; holding a reference to each keeps its UTF-8 buffer
/// alive (Python strings are immutable) until the caller drops `KeptAlive` while attached.
fn keys<'a, 'py: 'a>(
    py: Python<'py>,
    src: &'a Source<'py>,
    name: &str,
    kinds: &mut Kinds,
) -> PyResult<(Vec<Key<'a>>, KeptAlive)> {
    let mut kept = Vec::new();
    let keys = match src {
        Source::Object(a) => {
            // Columns repeat a few str objects: remember each object's key by address.
            let mut cache: PtrCache<Key<'a>> = PtrCache::new(Key::Missing);
            a.as_array()
                .into_iter()
                .enumerate()
                .map(|(pos, o)| {
                    let addr = o.as_ptr() as usize;
                    if let Some(key) = cache.get(addr, 0) {
                        return Ok(key);
                    }
                    let key = object_key(o.bind(py), pos, name, kinds)?;
                    if matches!(key, Key::Str(_)) {
                        kept.push(o.clone_ref(py));
                        cache.put(addr, 0, key);
                    }
                    Ok(key)
                })
                .collect::<PyResult<Vec<_>>>()?
        }
        Source::Int(a) => {
            kinds.int = true;
            a.to_i64_vec(name)?.into_iter().map(Key::Int).collect()
        }
        Source::Float(a) => {
            kinds.float = true;
            a.as_array().iter().map(|&x| Key::from_f64(x)).collect()
        }
        Source::Bool(a) => {
            kinds.boolean = true;
            a.as_array()
                .iter()
                .map(|&b| Key::Int(i64::from(b)))
                .collect()
        }
    };
    Ok((keys, KeptAlive(kept)))
}

/// Strong references that keep borrowed strings alive; dropped while attached.
struct KeptAlive(#[allow(dead_code)] Vec<Py<PyAny>>);

/// Codes (int32) of `values` in `mapping`; `ValueError` names unknown values.
#[pyfunction]
pub fn encode_categorical<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    mapping: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let (vsrc, msrc) = (to_source(values, "values")?, to_source(mapping, "mapping")?);
    let (mut vkinds, mut mkinds) = (Kinds::default(), Kinds::default());
    let (vkeys, _kept_values) = keys(py, &vsrc, "values", &mut vkinds)?;
    let (mkeys, _kept_mapping) = keys(py, &msrc, "mapping", &mut mkinds)?;
    if let Some((v, m)) = bool_number_mismatch(vkinds, mkinds) {
        return Err(PyValueError::new_err(format!(
            "values are {v} but the mapping holds {m}: booleans never match numeric \
             categories (as in pandas); convert the column to the mapping's type"
        )));
    }
    let codes = py.detach(|| guarded(|| categorical::encode(&vkeys, &mkeys)))?;
    Ok(PyArray1::from_vec(py, codes))
}

/// The categories at positions `order` of `vkeys` as a numpy array: `str` objects for
/// strings (and for an empty object column), bool, float64 or int64 by `kinds`.
fn categories_array<'py>(
    py: Python<'py>,
    src: &Source<'py>,
    kinds: Kinds,
    vkeys: &[Key<'_>],
    order: &[usize],
) -> Bound<'py, PyAny> {
    let cats: Vec<Key<'_>> = order.iter().map(|&i| vkeys[i]).collect();
    if kinds.string || (cats.is_empty() && matches!(src, Source::Object(_))) {
        let objs: Vec<Py<PyAny>> = cats
            .iter()
            .map(|k| match k {
                Key::Str(s) => PyString::new(py, s).into_any().unbind(),
                _ => unreachable!("strings are never mixed with numbers"),
            })
            .collect();
        return PyArray1::from_vec(py, objs).into_any();
    }
    if kinds.boolean && !kinds.int && !kinds.float {
        let b: Vec<bool> = cats.iter().map(|k| matches!(k, Key::Int(1))).collect();
        return PyArray1::from_vec(py, b).into_any();
    }
    if kinds.float {
        let f: Vec<f64> = cats.iter().map(Key::as_f64).collect();
        return PyArray1::from_vec(py, f).into_any();
    }
    let i: Vec<i64> = cats
        .iter()
        .map(|k| match k {
            Key::Int(i) => *i,
            _ => unreachable!("only integers remain"),
        })
        .collect();
    PyArray1::from_vec(py, i).into_any()
}

/// The categories pandas gives `pd.Categorical(values)` (as a numpy array) and the codes of
/// `values` in them, in one pass: each value
/// becomes a key once and is hashed once.
#[pyfunction]
pub fn factorize<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<i32>>)> {
    let src = to_source(values, "values")?;
    let mut kinds = Kinds::default();
    let (vkeys, _kept) = keys(py, &src, "values", &mut kinds)?;
    let (order, codes) = py.detach(|| guarded(|| categorical::factorize(&vkeys)))?;
    let mapping = categories_array(py, &src, kinds, &vkeys, &order);
    Ok((mapping, PyArray1::from_vec(py, codes)))
}
