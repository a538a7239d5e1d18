//! The CSR row gather beside its memset+scatter limit, in one process on the same data.
//!
//! The limit is the work no gather can skip: zero the output and write every stored value of
//! the requested rows at its column, with the positions computed beforehand (no index
//! checks, no row lookups). `benches/bench_gather.py` runs this after its scipy table:
//!
//!     cargo run --release --no-default-features --example gather_limit
//!
//! Prints a Markdown table of medians in microseconds over fresh random batches.

use std::time::Instant;

use scvi_rs_core::gather::gather_csr_rows;

/// xorshift64*: a dependency-free generator, good enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }
}

struct Csr {
    indptr: Vec<i32>,
    indices: Vec<i32>,
    data: Vec<f32>,
    n_rows: usize,
    n_vars: usize,
}

/// Canonical CSR (sorted unique columns), about `density * n_vars` values per row, as the
/// Python benchmark builds it.
fn make_matrix(n_rows: usize, n_vars: usize, density: f64) -> Csr {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let per_row = (n_vars as f64 * density) as usize;
    let (mut indptr, mut indices, mut data) = (vec![0i32], Vec::new(), Vec::new());
    let mut cols = Vec::with_capacity(per_row);
    for _ in 0..n_rows {
        cols.clear();
        cols.extend((0..per_row).map(|_| i32::try_from(rng.below(n_vars)).expect("fits")));
        cols.sort_unstable();
        cols.dedup();
        indices.extend_from_slice(&cols);
        #[allow(clippy::cast_precision_loss)]
        data.extend(cols.iter().map(|_| 1.0 + (rng.below(4) as f32)));
        indptr.push(i32::try_from(indices.len()).expect("fits"));
    }
    Csr {
        indptr,
        indices,
        data,
        n_rows,
        n_vars,
    }
}

/// Zero `out`, then write each value at its precomputed position: the limit.
fn memset_scatter(out: &mut [f32], positions: &[usize], values: &[f32]) {
    out.fill(0.0);
    for (&p, &v) in positions.iter().zip(values) {
        out[p] = v;
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    println!(
        "| matrix | batch | rust gather (us) | 1 thread (us) | memset+scatter limit (us) \
         | 1 thread / limit |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, n_rows, n_vars, density) in [
        ("2000g_10pct", 100_000, 2_000, 0.10),
        ("30000g_3pct", 20_000, 30_000, 0.03),
    ] {
        let x = make_matrix(n_rows, n_vars, density);
        for batch in [128usize, 1024] {
            let reps = if batch * n_vars <= 3_000_000 { 300 } else { 40 };
            let mut rng = Rng(7);
            let mut out = vec![0f32; batch * n_vars];
            let (mut gather_us, mut single_us, mut limit_us) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                let rows: Vec<i64> = (0..batch)
                    .map(|_| i64::try_from(rng.below(x.n_rows)).expect("fits"))
                    .collect();
                // the limit's inputs, prepared outside its timer
                let (mut positions, mut values) = (Vec::new(), Vec::new());
                for (k, &r) in rows.iter().enumerate() {
                    let r = usize::try_from(r).expect("non-negative");
                    let (s, e) = (x.indptr[r] as usize, x.indptr[r + 1] as usize);
                    positions.extend(x.indices[s..e].iter().map(|&c| k * x.n_vars + c as usize));
                    values.extend_from_slice(&x.data[s..e]);
                }
                let t = Instant::now();
                gather_csr_rows(
                    &x.indptr, &x.indices, &x.data, &rows, x.n_vars, &mut out, None,
                )
                .expect("a valid matrix");
                gather_us.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(&out);
                let t = Instant::now();
                gather_csr_rows(
                    &x.indptr,
                    &x.indices,
                    &x.data,
                    &rows,
                    x.n_vars,
                    &mut out,
                    Some(1),
                )
                .expect("a valid matrix");
                single_us.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(&out);
                let t = Instant::now();
                memset_scatter(&mut out, &positions, &values);
                limit_us.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(&out);
            }
            let (g, one, l) = (median(gather_us), median(single_us), median(limit_us));
            println!(
                "| {name} | {batch} | {g:.0} | {one:.0} | {l:.0} | {:.2}x |",
                one / l
            );
        }
    }
}
