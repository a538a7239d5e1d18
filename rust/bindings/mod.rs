//! The `scvi_rs._core` extension module: stateless functions only, each a thin wrapper
//! over a pure Rust kernel. Signatures are mirrored in `python/scvi_rs/_core.pyi`.

mod arrays;
mod categorical;
mod checks;
mod errors;
mod gather;
mod registry;
mod split;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
pub mod _core {
    #[pymodule_export]
    use super::categorical::{encode_categorical, factorize};
    #[pymodule_export]
    use super::checks::find_invalid_value;
    #[pymodule_export]
    use super::gather::{gather_csc_rows, gather_csr_rows, gather_dense_rows};
    #[pymodule_export]
    use super::registry::{new_uuid, registry_fingerprint, validate_uuid};
    #[pymodule_export]
    use super::split::{legacy_permutation, split_sizes, validate_external_indexing};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("debug_build", cfg!(debug_assertions))?;
        m.add(
            "parallel_work_threshold",
            crate::gather::PARALLEL_WORK_THRESHOLD,
        )?;
        Ok(())
    }
}
