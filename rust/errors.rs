//! The one error type of the core. Every kernel returns [`Result`]; the Python bindings map
//! each variant once (in `bindings/errors.rs`) to a built-in exception chosen by [`ErrorKind`].
//!
//! No PyO3 here, so the kernels and their tests build without Python.

use std::fmt;

/// The Python exception class an error becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `IndexError`: a requested row/index outside the valid range.
    Index,
    /// `ValueError`: malformed data (bad CSR, shapes, sizes, JSON, unknown categories).
    Value,
    /// `TypeError`: wrong dtype or type of an argument.
    Type,
    /// The built-in `Warning` class raised as an exception (the reference does this for
    /// duplicated or missing external split indices).
    Warning,
    /// `MemoryError`: a buffer sized from the arguments could not be allocated.
    Memory,
}

/// Errors of the core kernels; `Display` gives the user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A requested row is negative or `>= n_rows`.
    RowOutOfRange { row: i128, n_rows: usize },
    /// A stored column index is negative or `>= n_vars` (met in matrix row `row`).
    ColumnOutOfRange {
        col: i128,
        n_vars: usize,
        row: usize,
    },
    /// A stored row index of a CSC matrix is negative or `>= n_rows` (met in column `col`).
    StoredRowOutOfRange {
        row: i128,
        n_rows: usize,
        col: usize,
    },
    /// Inconsistent sparse structure (indptr, lengths).
    InvalidSparse(String),
    /// Wrong shape or length of an argument.
    Shape(String),
    /// Wrong dtype or type of an argument.
    Dtype(String),
    /// Any other invalid value (split sizes, categories, JSON, ...).
    Value(String),
    /// An index outside its valid range (other than a gathered row).
    Index(String),
    /// Raised as the built-in `Warning` exception, as the reference does.
    Warning(String),
    /// An allocation sized from the arguments failed (instead of aborting the process).
    Alloc(String),
}

impl CoreError {
    /// The Python exception class this error maps to.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::RowOutOfRange { .. } | Self::Index(_) => ErrorKind::Index,
            Self::ColumnOutOfRange { .. }
            | Self::StoredRowOutOfRange { .. }
            | Self::InvalidSparse(_)
            | Self::Shape(_)
            | Self::Value(_) => ErrorKind::Value,
            Self::Dtype(_) => ErrorKind::Type,
            Self::Warning(_) => ErrorKind::Warning,
            Self::Alloc(_) => ErrorKind::Memory,
        }
    }

    pub(crate) fn value(msg: impl Into<String>) -> Self {
        Self::Value(msg.into())
    }

    pub(crate) fn sparse(msg: impl Into<String>) -> Self {
        Self::InvalidSparse(msg.into())
    }

    pub(crate) fn shape(msg: impl Into<String>) -> Self {
        Self::Shape(msg.into())
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RowOutOfRange { row, n_rows } => {
                write!(
                    f,
                    "row index {row} is out of range for a matrix with {n_rows} rows"
                )
            }
            Self::ColumnOutOfRange { col, n_vars, row } => write!(
                f,
                "column index {col} in row {row} is out of range for n_vars={n_vars} \
                 (out.shape[1])"
            ),
            Self::StoredRowOutOfRange { row, n_rows, col } => write!(
                f,
                "stored row index {row} in column {col} is out of range for n_rows={n_rows}"
            ),
            Self::InvalidSparse(msg)
            | Self::Shape(msg)
            | Self::Dtype(msg)
            | Self::Value(msg)
            | Self::Index(msg)
            | Self::Warning(msg) => f.write_str(msg),
            Self::Alloc(what) => write!(f, "cannot allocate {what}"),
        }
    }
}

impl std::error::Error for CoreError {}

/// Result alias used by every kernel.
pub type Result<T> = std::result::Result<T, CoreError>;

/// A vector of `n` copies of `value`, or [`CoreError::Alloc`] naming `what` if the memory
/// cannot be had: sizes that come from Python arguments must not abort the interpreter.
///
/// # Errors
/// [`CoreError::Alloc`] when the allocation fails.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| CoreError::Alloc(format!("{what} ({n} elements)")))?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_python_classes() {
        assert_eq!(
            CoreError::RowOutOfRange { row: -1, n_rows: 3 }.kind(),
            ErrorKind::Index
        );
        assert_eq!(CoreError::sparse("x").kind(), ErrorKind::Value);
        assert_eq!(CoreError::Dtype("x".into()).kind(), ErrorKind::Type);
        assert_eq!(CoreError::Warning("x".into()).kind(), ErrorKind::Warning);
        assert_eq!(CoreError::Alloc("x".into()).kind(), ErrorKind::Memory);
    }

    #[test]
    fn huge_allocations_are_errors() {
        let err = try_filled(usize::MAX / 2, 0u64, "a table").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot allocate a table"),
            "{err}"
        );
        assert_eq!(try_filled(3, 1u8, "x").unwrap(), [1, 1, 1]);
    }

    #[test]
    fn messages_name_the_values() {
        let msg = CoreError::RowOutOfRange { row: 7, n_rows: 3 }.to_string();
        assert!(msg.contains('7') && msg.contains('3'), "{msg}");
        let msg = CoreError::ColumnOutOfRange {
            col: 12,
            n_vars: 10,
            row: 4,
        }
        .to_string();
        assert!(msg.contains("12") && msg.contains("n_vars=10"), "{msg}");
    }
}
