//! Dense minibatch assembly (job 1): rows of a CSR, CSC or dense matrix copied, in the
//! order asked for, into a caller-owned row-major `f32` buffer.
//!
//! Invariants: `out` is fully overwritten on success (its prior contents never leak into
//! the result); duplicate column entries within a row are summed, like scipy's `toarray()`;
//! every index read from the matrix is bound-checked, so a malformed matrix yields an
//! error, never a panic or an out-of-bounds access. Validation costs O(rows touched), not
//! O(nnz): only the `indptr` entries of the requested rows are checked, and stored column
//! indices are checked as they are scattered. If an error is returned, `out` may be
//! partly written.

use std::sync::OnceLock;

use crate::errors::{try_filled, CoreError, Result};
use crate::num::{Idx, Value};

/// Work units (touched non-zeros plus an eighth of the output elements) below which a
/// gather runs on the calling thread. Measured on a 2-vCPU VM with random batches (median,
/// 1 vs 2 threads): 128 x 2000 genes at 10% (56k units) 55 vs 93 us, 256 x 2000 (113k)
/// 144 vs 135 us, 32 x 30000 at 3% (148k) 191 vs 165 us, 128 x 30000 (593k) 738 vs 475 us:
/// spawning costs ~40 us and pays off from roughly 130k units.
pub const PARALLEL_WORK_THRESHOLD: usize = 1 << 17;

/// Upper bound on worker threads picked automatically.
const MAX_AUTO_THREADS: usize = 8;

/// Upper bound on worker threads a caller may ask for.
const MAX_REQUESTED_THREADS: usize = 64;

/// The stored-entry range of one requested row: `indices[start..end]`, `data[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSpan {
    /// The matrix row (for error messages).
    pub row: usize,
    /// First stored entry.
    pub start: usize,
    /// One past the last stored entry.
    pub end: usize,
}

fn available_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// How many threads to use for `work` units spread over `n_out_rows` output rows.
///
/// `requested = None` picks automatically (one thread below [`PARALLEL_WORK_THRESHOLD`]);
/// `Some(n)` uses `n` (at most 64, and at most one per output row).
#[must_use]
pub fn pick_threads(work: usize, n_out_rows: usize, requested: Option<usize>) -> usize {
    let n = match requested {
        Some(n) => n.clamp(1, MAX_REQUESTED_THREADS),
        None if work < PARALLEL_WORK_THRESHOLD => 1,
        None => available_threads()
            .min(MAX_AUTO_THREADS)
            .min(work / (PARALLEL_WORK_THRESHOLD / 2)),
    };
    n.clamp(1, n_out_rows.max(1))
}

/// Run `f` over `items` and the matching `row_len`-element rows of `out`, split into
/// `n_threads` contiguous chunks (the first on the calling thread). Errors are reported in
/// item order: the earliest failing chunk wins, as in a sequential run.
fn run_chunked<T, F>(
    items: &[T],
    out: &mut [f32],
    row_len: usize,
    n_threads: usize,
    f: F,
) -> Result<()>
where
    T: Sync,
    F: Fn(&[T], &mut [f32]) -> Result<()> + Sync,
{
    debug_assert_eq!(items.len() * row_len, out.len());
    if n_threads <= 1 || items.len() < 2 || row_len == 0 {
        return f(items, out);
    }
    let per = items.len().div_ceil(n_threads);
    let mut chunks = items.chunks(per).zip(out.chunks_mut(per * row_len));
    let (first_items, first_out) = chunks.next().expect("items is not empty");
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = chunks.map(|(it, o)| s.spawn(move || f(it, o))).collect();
        let first = f(first_items, first_out);
        let rest: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        first?;
        rest.into_iter().collect()
    })
}

fn check_out_len(out: &[f32], n_rows: usize, n_vars: usize) -> Result<()> {
    match n_rows.checked_mul(n_vars) {
        Some(len) if len == out.len() => Ok(()),
        _ => Err(CoreError::shape(format!(
            "out has {} elements, expected len(rows) * n_vars = {n_rows} * {n_vars}",
            out.len()
        ))),
    }
}

/// Check a requested row id against `n_rows`.
#[inline]
fn checked_row<R: Idx>(row: R, n_rows: usize) -> Result<usize> {
    let r = row.to_usize();
    if r < n_rows {
        Ok(r)
    } else {
        Err(CoreError::RowOutOfRange {
            row: row.to_i128(),
            n_rows,
        })
    }
}

/// Validate `rows` against a CSR `indptr` and return the stored-entry span of each.
///
/// `nnz` is `len(indices)` (which must equal `len(data)`). Checks `indptr[0] == 0`,
/// `indptr[-1] <= nnz` and, for each requested row only, `indptr[r] <= indptr[r + 1] <= nnz`.
///
/// # Errors
/// [`CoreError::InvalidSparse`] for a bad `indptr`, [`CoreError::RowOutOfRange`] for a row
/// outside `0..len(indptr) - 1`.
pub fn csr_row_spans<P: Idx, R: Idx>(indptr: &[P], nnz: usize, rows: &[R]) -> Result<Vec<RowSpan>> {
    let (&first, &last) = match (indptr.first(), indptr.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(CoreError::sparse("indptr must have at least one entry")),
    };
    if first.to_i128() != 0 {
        return Err(CoreError::sparse(format!(
            "indptr[0] must be 0, got {}",
            first.to_i128()
        )));
    }
    if last.to_usize() > nnz {
        return Err(CoreError::sparse(format!(
            "indptr[-1] = {} is out of range for {nnz} stored entries (len(indices))",
            last.to_i128()
        )));
    }
    let n_rows = indptr.len() - 1;
    rows.iter()
        .map(|&row| {
            let r = checked_row(row, n_rows)?;
            let (s, e) = (indptr[r], indptr[r + 1]);
            let (start, end) = (s.to_usize(), e.to_usize());
            if start > end {
                return Err(CoreError::sparse(format!(
                    "indptr must be non-decreasing: indptr[{r}] = {} > indptr[{}] = {}",
                    s.to_i128(),
                    r + 1,
                    e.to_i128()
                )));
            }
            if end > nnz {
                return Err(CoreError::sparse(format!(
                    "indptr[{}] = {} is out of range for {nnz} stored entries",
                    r + 1,
                    e.to_i128()
                )));
            }
            Ok(RowSpan { row: r, start, end })
        })
        .collect()
}

fn fill_csr_chunk<J: Idx, V: Value>(
    indices: &[J],
    data: &[V],
    spans: &[RowSpan],
    n_vars: usize,
    out: &mut [f32],
) -> Result<()> {
    // Negative indices wrap to at least `NEGATIVE_WRAPS_TO`, so one comparison with this
    // limit refuses them and the columns >= n_vars alike.
    let limit = n_vars.min(J::NEGATIVE_WRAPS_TO);
    let mut wide = WideRow::default();
    for (i, (span, dst)) in spans.iter().zip(out.chunks_exact_mut(n_vars)).enumerate() {
        if let Some(ahead) = spans.get(i + PREFETCH_ROWS_AHEAD) {
            prefetch(indices, ahead.start, ahead.end);
            prefetch(data, ahead.start, ahead.end);
        }
        dst.fill(0.0);
        let cols = &indices[span.start..span.end];
        let vals = &data[span.start..span.end];
        // Duplicate columns (non-canonical CSR) must sum in the input's precision, as
        // scipy's `toarray()` does before any cast; a row without them needs no care.
        let bad = if V::SUMS_EXACTLY_IN_F32 || strictly_increasing(cols) {
            scatter_add(dst, cols, vals, limit)
        } else {
            wide.scatter_add(dst, cols, vals, limit)
        };
        if let Some(col) = bad {
            return Err(CoreError::ColumnOutOfRange {
                col: col.to_i128(),
                n_vars,
                row: span.row,
            });
        }
    }
    Ok(())
}

fn strictly_increasing<J: Idx>(cols: &[J]) -> bool {
    cols.windows(2)
        .all(|w| w[0].to_usize_wrapping() < w[1].to_usize_wrapping())
}

/// `dst[c] += v` for each pair, or the first column that is not below `limit`.
///
/// Each column is read once and checked in the same read it is used with: the arrays are
/// borrowed from Python with the GIL released, so another thread may rewrite them meanwhile
/// (that yields a wrong row or an error, never a write out of bounds).
#[inline]
fn scatter_add<J: Idx, V: Value>(
    dst: &mut [f32],
    cols: &[J],
    vals: &[V],
    limit: usize,
) -> Option<J> {
    for (&c, &v) in cols.iter().zip(vals) {
        let col = c.to_usize_wrapping();
        match dst.get_mut(col) {
            Some(slot) if col < limit => *slot += v.to_f32(),
            _ => return Some(c),
        }
    }
    None
}

/// A row accumulated in `f64` (for rows with duplicate columns), kept between rows.
#[derive(Default)]
struct WideRow {
    sums: Vec<f64>,
    touched: Vec<usize>,
}

impl WideRow {
    /// Like [`scatter_add`], summing duplicates in `f64` before the one cast to `f32`.
    fn scatter_add<J: Idx, V: Value>(
        &mut self,
        dst: &mut [f32],
        cols: &[J],
        vals: &[V],
        limit: usize,
    ) -> Option<J> {
        if self.sums.len() < dst.len() {
            self.sums.resize(dst.len(), 0.0);
        }
        self.touched.clear();
        let mut bad = None;
        for (&c, &v) in cols.iter().zip(vals) {
            let col = c.to_usize_wrapping();
            match self.sums.get_mut(col) {
                Some(sum) if col < limit => {
                    *sum += v.to_f64();
                    self.touched.push(col);
                }
                _ => {
                    bad = Some(c);
                    break;
                }
            }
        }
        // `touched` holds only checked columns (never re-read from `cols`). `dst` was zeroed,
        // so a slot is 0 until its column's first visit writes the sum and resets it; a later
        // visit of the same column then finds a reset sum and a written slot, and skips.
        for &col in &self.touched {
            if let (Some(slot), Some(sum)) = (dst.get_mut(col), self.sums.get_mut(col)) {
                #[allow(clippy::cast_possible_truncation)]
                if *sum != 0.0 || *slot == 0.0 {
                    *slot = *sum as f32;
                }
                *sum = 0.0;
            }
        }
        bad
    }
}

/// Rows to look ahead: requested rows are scattered over a matrix far larger than the
/// caches, so their lines are fetched while earlier rows are being written. Measured on
/// random batches of 128 rows x 2000 genes: ~100 us without prefetching, ~52 us with it
/// (distances 1-4 and caps of 1-4 KiB all within noise).
const PREFETCH_ROWS_AHEAD: usize = 2;

/// Hint the CPU to fetch the cache lines of `xs[start..end]` (at most the first 4 KiB).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(xs: &[T], start: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = (end.saturating_sub(start) * size_of::<T>()).min(4096);
        if let Some(first) = xs.get(start) {
            let p = std::ptr::from_ref(first).cast::<i8>();
            for off in (0..bytes).step_by(64) {
                // SAFETY: a prefetch is only a hint: it never faults and never reads into
                // the program's state, whatever the address (sse is baseline on x86_64).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, start, end);
}

/// Densify the rows described by `spans` (from [`csr_row_spans`]) into `out`, a row-major
/// `spans.len() x n_vars` buffer.
///
/// # Errors
/// [`CoreError::Shape`] if `out` has the wrong length or `indices`/`data` lengths differ,
/// [`CoreError::InvalidSparse`] if a span lies outside `indices`,
/// [`CoreError::ColumnOutOfRange`] for a stored column `>= n_vars`.
pub fn fill_csr_rows<J: Idx, V: Value>(
    indices: &[J],
    data: &[V],
    spans: &[RowSpan],
    n_vars: usize,
    out: &mut [f32],
    n_threads: Option<usize>,
) -> Result<()> {
    if indices.len() != data.len() {
        return Err(CoreError::shape(format!(
            "indices and data must have the same length, got {} and {}",
            indices.len(),
            data.len()
        )));
    }
    check_out_len(out, spans.len(), n_vars)?;
    let mut nnz = 0usize;
    for span in spans {
        if span.start > span.end || span.end > indices.len() {
            return Err(CoreError::sparse(format!(
                "row span {}..{} is outside the {} stored entries",
                span.start,
                span.end,
                indices.len()
            )));
        }
        nnz += span.end - span.start;
    }
    if n_vars == 0 {
        // Nothing to write; any stored entry is then out of range.
        return match spans.iter().find(|s| s.end > s.start) {
            Some(s) => Err(CoreError::ColumnOutOfRange {
                col: indices[s.start].to_i128(),
                n_vars,
                row: s.row,
            }),
            None => Ok(()),
        };
    }
    let threads = pick_threads(nnz + out.len() / 8, spans.len(), n_threads);
    run_chunked(spans, out, n_vars, threads, |sp, o| {
        fill_csr_chunk(indices, data, sp, n_vars, o)
    })
}

/// Densify `rows` of a CSR matrix (`indptr`, `indices`, `data`) into `out`
/// (`len(rows) x n_vars`, row-major). Composition of [`csr_row_spans`] and [`fill_csr_rows`].
///
/// # Errors
/// See [`csr_row_spans`] and [`fill_csr_rows`].
pub fn gather_csr_rows<P: Idx, J: Idx, V: Value, R: Idx>(
    indptr: &[P],
    indices: &[J],
    data: &[V],
    rows: &[R],
    n_vars: usize,
    out: &mut [f32],
    n_threads: Option<usize>,
) -> Result<()> {
    let spans = csr_row_spans(indptr, indices.len(), rows)?;
    fill_csr_rows(indices, data, &spans, n_vars, out, n_threads)
}

/// Where each matrix row goes in the output: for CSC gathers, where a stored entry's row
/// must be looked up in O(1). `head[r]` is 1 + the first output slot of row `r` (0: not
/// requested; rows past `head.len()` are not requested either); `next[slot]` chains
/// duplicate requests of the same row.
#[derive(Debug, Clone)]
pub struct SlotTable {
    head: Vec<u32>,
    next: Vec<u32>,
    n_rows: usize,
}

impl SlotTable {
    /// Build the table for `rows` of a matrix with `n_rows` rows.
    ///
    /// # Errors
    /// [`CoreError::RowOutOfRange`] for a row outside `0..n_rows`, [`CoreError::Shape`] for
    /// more than `u32::MAX - 1` requested rows.
    pub fn new<R: Idx>(rows: &[R], n_rows: usize) -> Result<Self> {
        if rows.len() >= u32::MAX as usize {
            return Err(CoreError::shape("too many rows requested"));
        }
        let checked = checked_rows(rows, n_rows)?;
        // Sized by the largest requested row, not by `n_rows` (a caller's claim).
        let len = checked.iter().max().map_or(0, |&m| m + 1);
        let mut head = try_filled(len, 0u32, "the CSC row lookup table")?;
        let mut next = vec![0u32; rows.len()];
        for (slot, &r) in checked.iter().enumerate() {
            next[slot] = head[r];
            head[r] = u32::try_from(slot + 1).expect("checked above");
        }
        Ok(Self { head, next, n_rows })
    }

    /// Number of matrix rows.
    #[must_use]
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of output rows.
    #[must_use]
    pub fn n_out(&self) -> usize {
        self.next.len()
    }
}

/// Check a whole compressed `indptr` (O(len(indptr))): starts at 0, non-decreasing, ends
/// within `nnz` stored entries.
///
/// # Errors
/// [`CoreError::InvalidSparse`] naming the first offending position.
pub fn validate_indptr<P: Idx>(indptr: &[P], nnz: usize) -> Result<()> {
    let Some(&first) = indptr.first() else {
        return Err(CoreError::sparse("indptr must have at least one entry"));
    };
    if first.to_i128() != 0 {
        return Err(CoreError::sparse(format!(
            "indptr[0] must be 0, got {}",
            first.to_i128()
        )));
    }
    for (i, w) in indptr.windows(2).enumerate() {
        if w[0].to_usize() > w[1].to_usize() {
            return Err(CoreError::sparse(format!(
                "indptr must be non-decreasing: indptr[{i}] = {} > indptr[{}] = {}",
                w[0].to_i128(),
                i + 1,
                w[1].to_i128()
            )));
        }
    }
    let last = indptr[indptr.len() - 1];
    if last.to_usize() > nnz {
        return Err(CoreError::sparse(format!(
            "indptr[-1] = {} is out of range for {nnz} stored entries (len(indices))",
            last.to_i128()
        )));
    }
    Ok(())
}

/// Densify rows of a CSC matrix (`indptr` over columns, `indices` holding row ids) into
/// `out` (`table.n_out() x n_vars`, row-major), where `n_vars = len(indptr) - 1`.
///
/// Scans every stored entry once (O(nnz + n_vars)): CSC has no per-row access, so this is
/// the slow path; convert to CSR once for repeated gathers. Single-threaded.
///
/// # Errors
/// [`CoreError::InvalidSparse`] for a bad `indptr`, [`CoreError::StoredRowOutOfRange`] for a
/// stored row id `>= n_rows`, [`CoreError::Shape`] for mismatched lengths.
pub fn fill_csc_rows<P: Idx, J: Idx, V: Value>(
    indptr: &[P],
    indices: &[J],
    data: &[V],
    table: &SlotTable,
    out: &mut [f32],
) -> Result<()> {
    if indices.len() != data.len() {
        return Err(CoreError::shape(format!(
            "indices and data must have the same length, got {} and {}",
            indices.len(),
            data.len()
        )));
    }
    validate_indptr(indptr, indices.len())?;
    let n_vars = indptr.len() - 1;
    check_out_len(out, table.n_out(), n_vars)?;
    out.fill(0.0);
    let n_rows = table.n_rows();
    for (col, w) in indptr.windows(2).enumerate() {
        let (s, e) = (w[0].to_usize(), w[1].to_usize());
        for (&r, &v) in indices[s..e].iter().zip(&data[s..e]) {
            let r_idx = r.to_usize();
            if r_idx >= n_rows {
                return Err(CoreError::StoredRowOutOfRange {
                    row: r.to_i128(),
                    n_rows,
                    col,
                });
            }
            let mut slot = table.head.get(r_idx).copied().unwrap_or(0);
            while slot != 0 {
                let k = slot as usize - 1;
                out[k * n_vars + col] += v.to_f32();
                slot = table.next[k];
            }
        }
    }
    Ok(())
}

/// Densify `rows` of a CSC matrix with `n_rows` rows into `out` (`len(rows) x n_vars`,
/// `n_vars = len(indptr) - 1`). See [`fill_csc_rows`].
///
/// # Errors
/// See [`SlotTable::new`] and [`fill_csc_rows`].
pub fn gather_csc_rows<P: Idx, J: Idx, V: Value, R: Idx>(
    indptr: &[P],
    indices: &[J],
    data: &[V],
    rows: &[R],
    n_rows: usize,
    out: &mut [f32],
) -> Result<()> {
    let table = SlotTable::new(rows, n_rows)?;
    fill_csc_rows(indptr, indices, data, &table, out)
}

/// Validate `rows` against `n_rows` and convert them to `usize`.
///
/// # Errors
/// [`CoreError::RowOutOfRange`] for the first row outside `0..n_rows`.
pub fn checked_rows<R: Idx>(rows: &[R], n_rows: usize) -> Result<Vec<usize>> {
    rows.iter().map(|&r| checked_row(r, n_rows)).collect()
}

/// Copy rows `rows` (already checked by [`checked_rows`]) of the row-major dense matrix `x`
/// (`n_rows x n_vars`) into `out` (`len(rows) x n_vars`), converting to `f32`.
///
/// # Errors
/// [`CoreError::Shape`] if `x` or `out` has the wrong length,
/// [`CoreError::RowOutOfRange`] for a row `>= x.len() / n_vars`.
pub fn fill_dense_rows<V: Value>(
    x: &[V],
    n_vars: usize,
    rows: &[usize],
    out: &mut [f32],
    n_threads: Option<usize>,
) -> Result<()> {
    check_out_len(out, rows.len(), n_vars)?;
    if n_vars == 0 {
        return Ok(());
    }
    if x.len() % n_vars != 0 {
        return Err(CoreError::shape(format!(
            "X has {} elements, not a multiple of n_vars = {n_vars}",
            x.len()
        )));
    }
    let n_rows = x.len() / n_vars;
    if let Some(&bad) = rows.iter().find(|&&r| r >= n_rows) {
        return Err(CoreError::RowOutOfRange {
            row: bad as i128,
            n_rows,
        });
    }
    // A converting copy costs about four times a zero-fill per element.
    let threads = pick_threads(out.len() / 2, rows.len(), n_threads);
    run_chunked(rows, out, n_vars, threads, |rs, o| {
        for (&r, dst) in rs.iter().zip(o.chunks_exact_mut(n_vars)) {
            let src = &x[r * n_vars..(r + 1) * n_vars];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
        Ok(())
    })
}

/// Copy `rows` of the dense row-major `x` (`n_rows x n_vars`) into `out`.
///
/// # Errors
/// See [`checked_rows`] and [`fill_dense_rows`].
pub fn gather_dense_rows<V: Value, R: Idx>(
    x: &[V],
    n_rows: usize,
    n_vars: usize,
    rows: &[R],
    out: &mut [f32],
    n_threads: Option<usize>,
) -> Result<()> {
    if n_rows.checked_mul(n_vars) != Some(x.len()) {
        return Err(CoreError::shape(format!(
            "X has {} elements, expected {n_rows} * {n_vars}",
            x.len()
        )));
    }
    let rows = checked_rows(rows, n_rows)?;
    fill_dense_rows(x, n_vars, &rows, out, n_threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [[1, 0, 2], [0, 0, 0], [0, 3, 0]] with an explicit duplicate in row 2: (2,1)=1+2.
    fn small() -> (Vec<i32>, Vec<i64>, Vec<f64>) {
        (vec![0, 2, 2, 4], vec![0, 2, 1, 1], vec![1.0, 2.0, 1.0, 2.0])
    }

    fn dense_reference(
        indptr: &[i32],
        indices: &[i64],
        data: &[f64],
        n_vars: usize,
        rows: &[i64],
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows.len() * n_vars];
        for (k, &r) in rows.iter().enumerate() {
            let r = r as usize;
            for p in indptr[r] as usize..indptr[r + 1] as usize {
                out[k * n_vars + indices[p] as usize] += data[p] as f32;
            }
        }
        out
    }

    #[test]
    fn gathers_in_order_with_duplicates_and_overwrites_out() {
        let (indptr, indices, data) = small();
        let mut out = vec![9.0f32; 4 * 3];
        gather_csr_rows(
            &indptr,
            &indices,
            &data,
            &[2i64, 0, 2, 1],
            3,
            &mut out,
            None,
        )
        .unwrap();
        assert_eq!(out, [0., 3., 0., 1., 0., 2., 0., 3., 0., 0., 0., 0.]);
    }

    #[test]
    fn float64_duplicates_sum_before_the_cast() {
        // 1 + 0.6 ulp and -1: cast first, the parts give 1 ulp; summed first, 0.6 ulp.
        let ulp = f64::from(f32::EPSILON);
        let (indptr, indices) = (vec![0i64, 3], vec![1i32, 0, 1]);
        let data = vec![1.0 + 0.6 * ulp, 5.0, -1.0];
        let mut out = vec![0f32; 2];
        gather_csr_rows(&indptr, &indices, &data, &[0i64], 2, &mut out, None).unwrap();
        #[allow(clippy::cast_possible_truncation)]
        let expected = (0.6 * ulp) as f32;
        assert_eq!(out, [5.0, expected]);
        assert_ne!(expected, f32::EPSILON);
        // a repeated column whose sum is 0 still gives 0
        let data = vec![1.5f64, 5.0, -1.5];
        gather_csr_rows(&indptr, &indices, &data, &[0i64], 2, &mut out, None).unwrap();
        assert_eq!(out, [5.0, 0.0]);
    }

    #[test]
    fn negative_and_large_columns_are_refused_in_both_paths() {
        let indptr = vec![0i64, 2];
        for data in [vec![1.0f64, 2.0], vec![2.0f64, 1.0]] {
            for cols in [vec![0i32, -1], vec![3i32, 0], vec![1i32, i32::MIN]] {
                let mut out = vec![0f32; 2];
                let err = gather_csr_rows(&indptr, &cols, &data, &[0i64], 2, &mut out, None);
                assert!(
                    matches!(err, Err(CoreError::ColumnOutOfRange { .. })),
                    "{cols:?}"
                );
                let f32s: Vec<f32> = data.iter().map(|&v| v as f32).collect();
                let err = gather_csr_rows(&indptr, &cols, &f32s, &[0i64], 2, &mut out, None);
                assert!(
                    matches!(err, Err(CoreError::ColumnOutOfRange { .. })),
                    "{cols:?}"
                );
            }
        }
    }

    #[test]
    fn empty_requests_and_empty_matrices() {
        let (indptr, indices, data) = small();
        let mut out: Vec<f32> = vec![];
        gather_csr_rows(&indptr, &indices, &data, &[] as &[i32], 3, &mut out, None).unwrap();
        // A 0 x 0 matrix: indptr [0].
        gather_csr_rows(
            &[0i64],
            &[] as &[i32],
            &[] as &[f32],
            &[] as &[i64],
            0,
            &mut out,
            None,
        )
        .unwrap();
        // Rows with no entries and n_vars = 0.
        let mut out = vec![];
        gather_csr_rows(
            &[0i64, 0, 0],
            &[] as &[i32],
            &[] as &[f32],
            &[1i64, 0],
            0,
            &mut out,
            None,
        )
        .unwrap();
    }

    #[test]
    fn bad_rows_are_index_errors() {
        let (indptr, indices, data) = small();
        let mut out = vec![0f32; 3];
        for bad in [3i64, -1, i64::MAX, i64::MIN] {
            let err =
                gather_csr_rows(&indptr, &indices, &data, &[bad], 3, &mut out, None).unwrap_err();
            assert_eq!(
                err,
                CoreError::RowOutOfRange {
                    row: i128::from(bad),
                    n_rows: 3
                }
            );
        }
    }

    #[test]
    fn bad_columns_and_indptr_are_value_errors() {
        let (indptr, indices, data) = small();
        let mut out = vec![0f32; 2];
        let err =
            gather_csr_rows(&indptr, &indices, &data, &[0i64], 2, &mut out, None).unwrap_err();
        assert_eq!(
            err,
            CoreError::ColumnOutOfRange {
                col: 2,
                n_vars: 2,
                row: 0
            }
        );
        let mut out = vec![0f32; 200];
        let neg8 = [0i8, -1];
        let err = gather_csr_rows(
            &[0i32, 2],
            &neg8,
            &[1.0f32, 2.0],
            &[0i64],
            200,
            &mut out,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            CoreError::ColumnOutOfRange {
                col: -1,
                n_vars: 200,
                row: 0
            }
        );
        let mut out = vec![0f32; 3];
        let neg = [0i64, -1];
        let err = gather_csr_rows(&[0i32, 2], &neg, &[1.0f32, 2.0], &[0i64], 3, &mut out, None)
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::ColumnOutOfRange {
                col: -1,
                n_vars: 3,
                row: 0
            }
        );
        let bad_indptrs: [&[i32]; 5] = [
            &[],
            &[1, 2, 2, 4],
            &[0, 3, 2, 4],
            &[0, 2, 2, 5],
            &[0, -1, 2, 4],
        ];
        for indptr in bad_indptrs {
            let err = gather_csr_rows(
                indptr,
                &indices,
                &data,
                &[0i64, 1, 2],
                3,
                &mut [0.; 9],
                None,
            );
            assert!(
                matches!(
                    err,
                    Err(CoreError::InvalidSparse(_) | CoreError::RowOutOfRange { .. })
                ),
                "{indptr:?}"
            );
        }
        let err =
            gather_csr_rows(&indptr, &indices, &data[..3], &[0i64], 3, &mut out, None).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)));
        let err =
            gather_csr_rows(&indptr, &indices, &data, &[0i64], 3, &mut [0.; 4], None).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)));
    }

    #[test]
    fn only_touched_rows_are_validated() {
        // Row 1 is broken (indptr decreases) but row 0 and 2 are fine: O(rows touched).
        let indptr = [0i64, 2, 1, 2];
        let mut out = vec![0f32; 2];
        gather_csr_rows(&indptr, &[0i32, 1], &[1f32, 2.], &[0i64], 2, &mut out, None).unwrap();
        assert_eq!(out, [1., 2.]);
        assert!(
            gather_csr_rows(&indptr, &[0i32, 1], &[1f32, 2.], &[1i64], 2, &mut out, None).is_err()
        );
    }

    #[test]
    fn threaded_matches_sequential_and_reports_first_error() {
        let (n_rows, n_vars) = (500usize, 37usize);
        let mut indptr = vec![0i32];
        let mut indices = vec![];
        let mut data = vec![];
        let mut seed = 12345u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..n_rows {
            let k = (rand() % 9) as usize;
            for _ in 0..k {
                indices.push((rand() % n_vars as u64) as i64);
                data.push((rand() % 100) as f64);
            }
            indptr.push(indices.len() as i32);
        }
        let rows: Vec<i64> = (0..2000).map(|_| (rand() % n_rows as u64) as i64).collect();
        let expected = dense_reference(&indptr, &indices, &data, n_vars, &rows);
        for threads in [None, Some(1), Some(2), Some(3), Some(64)] {
            let mut out = vec![f32::NAN; rows.len() * n_vars];
            gather_csr_rows(&indptr, &indices, &data, &rows, n_vars, &mut out, threads).unwrap();
            assert_eq!(out, expected, "{threads:?}");
        }
        // Corrupt a column touched only late in `rows` and one touched early: the early wins.
        let early = rows[5] as usize;
        let late = rows[1900] as usize;
        let mut bad = indices.clone();
        for r in [early, late] {
            if indptr[r] < indptr[r + 1] {
                bad[indptr[r] as usize] = n_vars as i64 + r as i64;
            }
        }
        let mut out = vec![0f32; rows.len() * n_vars];
        let seq = gather_csr_rows(&indptr, &bad, &data, &rows, n_vars, &mut out, Some(1));
        let par = gather_csr_rows(&indptr, &bad, &data, &rows, n_vars, &mut out, Some(4));
        assert_eq!(seq, par);
    }

    #[test]
    fn pick_threads_rules() {
        assert_eq!(pick_threads(10, 100, None), 1);
        assert_eq!(pick_threads(10, 100, Some(4)), 4);
        assert_eq!(pick_threads(10, 2, Some(4)), 2);
        assert_eq!(pick_threads(10, 0, Some(4)), 1);
        assert!(pick_threads(PARALLEL_WORK_THRESHOLD * 100, 1000, None) >= 1);
    }

    #[test]
    fn csc_matches_csr() {
        // Same matrix as `small()`, transposed storage: columns 0, 1, 2.
        // (0,0)=1, (0,2)=2, (2,1)=1, (2,1)=2
        let indptr = [0i64, 1, 3, 4];
        let indices = [0i32, 2, 2, 0];
        let data = [1f32, 1., 2., 2.];
        let mut out = vec![7f32; 12];
        gather_csc_rows(&indptr, &indices, &data, &[2i64, 0, 2, 1], 3, &mut out).unwrap();
        assert_eq!(out, [0., 3., 0., 1., 0., 2., 0., 3., 0., 0., 0., 0.]);
        let err = gather_csc_rows(&indptr, &indices, &data, &[3i64], 3, &mut [0.; 3]).unwrap_err();
        assert!(matches!(err, CoreError::RowOutOfRange { .. }));
        let err = gather_csc_rows(&indptr, &[0i32, 5, 2, 0], &data, &[0i64], 3, &mut [0.; 3])
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::StoredRowOutOfRange {
                row: 5,
                n_rows: 3,
                col: 1
            }
        );
        // A stored row past the largest requested one but inside the matrix is skipped.
        let mut out = vec![7f32; 3];
        gather_csc_rows(&indptr, &indices, &data, &[0i64], 3, &mut out).unwrap();
        assert_eq!(out, [1., 0., 2.]);
        // A huge claimed n_rows allocates nothing large.
        gather_csc_rows(&indptr, &indices, &data, &[0i64], usize::MAX, &mut out).unwrap();
        let err = gather_csc_rows(&[0i64, 3, 1, 4], &indices, &data, &[0i64], 3, &mut [0.; 3])
            .unwrap_err();
        assert!(matches!(err, CoreError::InvalidSparse(_)));
        let err = gather_csc_rows(&indptr, &indices, &data, &[0i64], 3, &mut [0.; 2]).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)));
    }

    #[test]
    fn dense_rows() {
        let x = [1i64, 2, 3, 4, 5, 6]; // 3 x 2
        let mut out = vec![0f32; 6];
        gather_dense_rows(&x, 3, 2, &[2i32, 0, 2], &mut out, None).unwrap();
        assert_eq!(out, [5., 6., 1., 2., 5., 6.]);
        gather_dense_rows(&x, 3, 2, &[2i32, 0, 2], &mut out, Some(3)).unwrap();
        assert_eq!(out, [5., 6., 1., 2., 5., 6.]);
        let err = gather_dense_rows(&x, 3, 2, &[3i32, 0, 2], &mut out, None).unwrap_err();
        assert!(matches!(
            err,
            CoreError::RowOutOfRange { row: 3, n_rows: 3 }
        ));
        let err = gather_dense_rows(&x, 2, 2, &[0i32], &mut out[..2], None).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)));
        gather_dense_rows(&[] as &[f32], 5, 0, &[4i32], &mut [], None).unwrap();
    }
}
