//! Train/validation/test splitting (job 4), matching scvi-tools exactly:
//! - [`split_sizes`] is `validate_data_split` (ceil train, floor validation, the
//!   small-last-batch adjustment and its warnings);
//! - [`legacy_permutation`] is `numpy.random.RandomState(seed).permutation(n)` bit for bit
//!   (MT19937 seeded by `init_genrand`, NumPy's legacy Fisher-Yates with masked rejection
//!   sampling), so the same `scvi.settings.seed` gives the same split;
//! - [`validate_external_indexing`] is `validate_data_split_with_external_indexing`.
//!
//! Warnings are returned as text; the bindings emit them as `UserWarning`.

use crate::errors::{CoreError, Result};
use crate::pyfmt::float_repr;

/// Sizes of a split and the warning the reference would emit, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSizes {
    /// Training-set size.
    pub n_train: usize,
    /// Validation-set size (the test set is the rest).
    pub n_val: usize,
    /// A `UserWarning` message, if the reference warns.
    pub warning: Option<String>,
}

/// Python's `a % b` (result has the sign of `b`); `b != 0`.
fn py_mod(a: i64, b: i64) -> i64 {
    let r = a % b;
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

fn small_last_batch(
    n_train: usize,
    batch_size: Option<i64>,
    drop_last: bool,
) -> Result<Option<usize>> {
    let Some(bs) = batch_size else {
        return Ok(None);
    };
    if bs == 0 {
        return Err(CoreError::value("batch_size must not be 0"));
    }
    let n = i64::try_from(n_train).map_err(|_| CoreError::value("n_samples is too large"))?;
    let r = py_mod(n, bs);
    // The reference tests `drop_last is False`: any other value skips the adjustment.
    Ok(if (1..3).contains(&r) && !drop_last {
        usize::try_from(r).ok()
    } else {
        None
    })
}

/// `scvi.dataloaders._data_splitting.validate_data_split`.
///
/// `drop_last` is true unless the caller's value was the `False` object (the reference
/// checks `drop_last is False`). `train_size_is_none` is true when the user gave no
/// `train_size` (then cells of a small last batch move to validation).
///
/// # Errors
/// [`CoreError::Value`] with the reference's messages for sizes out of range (NaN
/// included), an empty training set, or `batch_size == 0`.
pub fn split_sizes(
    n_samples: usize,
    train_size: f64,
    validation_size: Option<f64>,
    batch_size: Option<i64>,
    drop_last: bool,
    train_size_is_none: bool,
) -> Result<SplitSizes> {
    if !(train_size > 0.0 && train_size <= 1.0) {
        return Err(CoreError::value(
            "Invalid train_size. Must be: 0 < train_size <= 1",
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let n_f = n_samples as f64;
    let to_count = |x: f64| -> usize {
        // Non-negative and at most n_samples here: exact for any realistic n.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let c = x as usize;
        c
    };
    let mut n_train = to_count((train_size * n_f).ceil()).min(n_samples);
    let mut n_val = match validation_size {
        None => n_samples - n_train,
        Some(v) if !(0.0..1.0).contains(&v) => {
            return Err(CoreError::value(
                "Invalid validation_size. Must be 0 <= validation_size < 1",
            ))
        }
        Some(v) if train_size + v > 1.0 => {
            return Err(CoreError::value(
                "train_size + validation_size must be between 0 and 1",
            ))
        }
        Some(v) => to_count((n_f * v).floor()),
    };
    if n_train == 0 {
        let v = validation_size.map_or_else(|| "None".to_string(), float_repr);
        return Err(CoreError::value(format!(
            "With n_samples={n_samples}, train_size={} and validation_size={v}, the resulting \
             train set will be empty. Adjust any of the aforementioned parameters.",
            float_repr(train_size)
        )));
    }
    let mut warning = None;
    if let Some(r) = small_last_batch(n_train, batch_size, drop_last)? {
        let bs = batch_size.expect("small_last_batch returned Some");
        if train_size_is_none {
            n_train -= r;
            if n_val > 0 {
                n_val += r;
                warning = Some(format!(
                    "{r} cells moved from training set to validation set. if you want to avoid \
                     it please use train_size parameter during train."
                ));
            }
        } else {
            warning = Some(format!(
                "Last batch will have a small size of {r} samples. Consider changing \
                 settings.batch_size or batch_size in model.train from currently {bs} to avoid \
                 errors during model training."
            ));
        }
    }
    Ok(SplitSizes {
        n_train,
        n_val,
        warning,
    })
}

/// The MT19937 generator in the state NumPy's legacy `RandomState(seed)` gives it.
#[derive(Clone)]
pub struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    /// Seed like `init_genrand` (NumPy's `mt19937_seed`).
    #[must_use]
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, idx: 624 }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % 624] & LOWER);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[i] = self.mt[(i + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.idx = 0;
    }

    /// Next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            self.generate();
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Next 64-bit output: NumPy's `mt19937_next64`, high word drawn first.
    pub fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        (hi << 32) | u64::from(self.next_u32())
    }

    /// A uniform integer in `[0, max]`: NumPy's `random_interval` (mask, then reject).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if let Ok(max32) = u32::try_from(max) {
            let mask32 = u32::try_from(mask).expect("mask < 2**32 when max < 2**32");
            loop {
                let v = self.next_u32() & mask32;
                if v <= max32 {
                    return u64::from(v);
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// Check a seed the way NumPy's legacy seeding does.
///
/// # Errors
/// [`CoreError::Value`] with NumPy's message for a seed outside `[0, 2**32 - 1]`.
pub fn legacy_seed(seed: i128) -> Result<u32> {
    u32::try_from(seed).map_err(|_| CoreError::value("Seed must be between 0 and 2**32 - 1"))
}

/// `numpy.random.RandomState(seed).permutation(n)`.
///
/// # Errors
/// [`CoreError::Value`] if `n` exceeds `i64::MAX`, [`CoreError::Alloc`] if the result
/// cannot be allocated.
pub fn legacy_permutation(n: usize, seed: u32) -> Result<Vec<i64>> {
    let n64 = i64::try_from(n).map_err(|_| CoreError::value("n is too large"))?;
    let mut perm = crate::errors::try_filled(n, 0i64, "the permutation")?;
    for (p, v) in perm.iter_mut().zip(0..n64) {
        *p = v;
    }
    let mut rng = Mt19937::new(seed);
    for i in (1..n).rev() {
        let j = usize::try_from(rng.interval(i as u64)).expect("j <= i");
        perm.swap(i, j);
    }
    Ok(perm)
}

/// Validated external split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSplit {
    /// `len(train)`.
    pub n_train: usize,
    /// `len(valid)`.
    pub n_val: usize,
    /// A `UserWarning` message, if the reference warns.
    pub warning: Option<String>,
}

const SET_NAMES: [&str; 3] = ["train", "valid", "test"];

/// `validate_data_split_with_external_indexing` on the three (padded) index sets
/// `[train, valid, test]` of a dataset with `n_samples` observations.
///
/// Beyond the reference, every index must lie in `[0, n_samples)`.
///
/// # Errors
/// [`CoreError::Index`] for an index out of range; [`CoreError::Warning`] (raised as the
/// built-in `Warning`, as the reference does) for duplicates within a set or indices
/// missing from all sets; [`CoreError::Value`] for overlapping sets; messages as in the
/// reference.
pub fn validate_external_indexing(
    n_samples: usize,
    sets: [&[i64]; 3],
    batch_size: Option<i64>,
    drop_last: bool,
) -> Result<ExternalSplit> {
    for (set, name) in sets.iter().zip(SET_NAMES) {
        if let Some(&bad) = set
            .iter()
            .find(|&&v| usize::try_from(v).map_or(true, |v| v >= n_samples))
        {
            return Err(CoreError::Index(format!(
                "External indexing: index {bad} in the {name} set is out of range for \
                 n_samples={n_samples}"
            )));
        }
    }
    // Sized by the largest index given (all are < n_samples), not by n_samples itself.
    let len = sets
        .iter()
        .flat_map(|s| s.iter())
        .max()
        .map_or(0, |&m| m + 1);
    let mut marks =
        crate::errors::try_filled(usize::try_from(len).unwrap_or(0), 0u8, "the index marks")?;
    for (bit, (set, name)) in sets.iter().zip(SET_NAMES).enumerate() {
        let flag = 1u8 << bit;
        for &v in *set {
            let m = &mut marks[usize::try_from(v).expect("checked above")];
            if *m & flag != 0 {
                return Err(CoreError::Warning(format!(
                    "There are duplicate indexing in {name} set"
                )));
            }
            *m |= flag;
        }
    }
    if sets.iter().map(|s| s.len()).sum::<usize>() < n_samples {
        return Err(CoreError::Warning(
            "There are missing indices please fix or remove those lines".into(),
        ));
    }
    let any = |a: u8, b: u8| marks.iter().any(|&m| m & a != 0 && m & b != 0);
    for (a, b, what) in [
        (1, 2, "train and valid"),
        (1, 4, "train and test"),
        (4, 2, "test and valid"),
    ] {
        if any(a, b) {
            return Err(CoreError::value(format!(
                "There are overlapping indexing between {what} sets"
            )));
        }
    }
    let (n_train, n_val) = (sets[0].len(), sets[1].len());
    let warning = small_last_batch(n_train, batch_size, drop_last)?.map(|r| {
        format!(
            "Last batch will have a small size of {r} samples. Consider changing \
             settings.batch_size or batch_size in model.train from currently {} to avoid errors \
             during model training or change the given external indices accordingly.",
            batch_size.expect("small_last_batch returned Some")
        )
    });
    Ok(ExternalSplit {
        n_train,
        n_val,
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(n: usize, t: f64, v: Option<f64>, bs: Option<i64>, none: bool) -> (usize, usize) {
        let s = split_sizes(n, t, v, bs, false, none).unwrap();
        (s.n_train, s.n_val)
    }

    #[test]
    fn reference_examples() {
        assert_eq!(sizes(400, 0.9, None, Some(128), true), (360, 40));
        assert_eq!(sizes(144, 0.9, None, Some(128), true), (128, 16));
        assert_eq!(sizes(144, 0.9, None, Some(128), false), (130, 14));
        assert_eq!(sizes(130, 0.9, None, Some(128), true), (117, 13));
        assert_eq!(sizes(129, 0.9, None, Some(128), true), (117, 12));
        assert_eq!(sizes(10, 0.9, None, Some(128), true), (9, 1));
        assert_eq!(sizes(100, 0.8, Some(0.1), Some(128), false), (80, 10));
        assert_eq!(sizes(1000, 0.5, Some(0.3), Some(128), false), (500, 300));
    }

    #[test]
    fn warnings() {
        let s = split_sizes(144, 0.9, None, Some(128), false, true).unwrap();
        assert_eq!(
            s.warning.as_deref(),
            Some("2 cells moved from training set to validation set. if you want to avoid it please use train_size parameter during train.")
        );
        let s = split_sizes(144, 0.9, None, Some(128), false, false).unwrap();
        assert!(s
            .warning
            .unwrap()
            .starts_with("Last batch will have a small size of 2 samples."));
        // drop_last (anything but `False`) skips both.
        let s = split_sizes(144, 0.9, None, Some(128), true, true).unwrap();
        assert_eq!((s.n_train, s.n_val, s.warning), (130, 14, None));
        // n_val == 0: cells silently go to the test set.
        let s = split_sizes(130, 1.0, None, Some(128), false, true).unwrap();
        assert_eq!((s.n_train, s.n_val, s.warning), (128, 0, None));
        // Negative batch sizes: Python's modulo is <= 0, so nothing happens.
        assert_eq!(sizes(130, 1.0, None, Some(-128), true), (130, 0));
    }

    #[test]
    fn errors() {
        for t in [0.0, -0.1, 1.1, f64::NAN, f64::INFINITY] {
            let e = split_sizes(10, t, None, None, false, true).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Invalid train_size. Must be: 0 < train_size <= 1"
            );
        }
        for v in [1.0, -0.1, f64::NAN, f64::NEG_INFINITY] {
            let e = split_sizes(10, 0.5, Some(v), None, false, true).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Invalid validation_size. Must be 0 <= validation_size < 1"
            );
        }
        let e = split_sizes(10, 0.9, Some(0.2), None, false, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "train_size + validation_size must be between 0 and 1"
        );
        let e = split_sizes(0, 0.9, None, None, false, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "With n_samples=0, train_size=0.9 and validation_size=None, the resulting train set \
             will be empty. Adjust any of the aforementioned parameters."
        );
        assert!(split_sizes(10, 0.9, None, Some(0), false, true).is_err());
    }

    #[test]
    fn mt19937_reference_output() {
        // First outputs of init_genrand(5489) (the reference implementation's default).
        let mut rng = Mt19937::new(5489);
        let first: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(first, [3_499_211_612, 581_869_302, 3_890_346_734]);
        // The 10000th output of the default seed, from the C++ standard (std::mt19937).
        let mut rng = Mt19937::new(5489);
        let v = (0..10_000).map(|_| rng.next_u32()).last().unwrap();
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn permutation_matches_numpy() {
        // numpy.random.RandomState(0).permutation(10)
        assert_eq!(
            legacy_permutation(10, 0).unwrap(),
            [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        );
        assert_eq!(legacy_permutation(0, 0).unwrap(), Vec::<i64>::new());
        assert_eq!(legacy_permutation(1, 7).unwrap(), [0]);
        // scvi: seed 0, 400 cells -> val_idx[:5] = [132, 309, 341, 196, 246].
        assert_eq!(
            &legacy_permutation(400, 0).unwrap()[..5],
            [132, 309, 341, 196, 246]
        );
        assert!(legacy_seed(-1).is_err());
        assert!(legacy_seed(1 << 32).is_err());
        assert_eq!(legacy_seed((1 << 32) - 1).unwrap(), u32::MAX);
    }

    #[test]
    fn external_indexing_rules() {
        let ok = validate_external_indexing(5, [&[0, 1, 2], &[3], &[4]], Some(2), false).unwrap();
        assert_eq!((ok.n_train, ok.n_val), (3, 1));
        assert!(ok
            .warning
            .unwrap()
            .ends_with("or change the given external indices accordingly."));
        let err = |sets: [&[i64]; 3]| validate_external_indexing(4, sets, None, false).unwrap_err();
        assert_eq!(
            err([&[0, 0, 1, 2, 3], &[], &[]]),
            CoreError::Warning("There are duplicate indexing in train set".into())
        );
        assert_eq!(
            err([&[0, 1, 2, 3], &[1, 1], &[2, 2]]),
            CoreError::Warning("There are duplicate indexing in valid set".into())
        );
        assert_eq!(
            err([&[0, 1], &[2], &[]]),
            CoreError::Warning("There are missing indices please fix or remove those lines".into())
        );
        assert_eq!(
            err([&[0, 1, 2], &[2, 3], &[]]).to_string(),
            "There are overlapping indexing between train and valid sets"
        );
        assert_eq!(
            err([&[0, 1, 2], &[3], &[0]]).to_string(),
            "There are overlapping indexing between train and test sets"
        );
        assert_eq!(
            err([&[0, 1], &[2, 3], &[3]]).to_string(),
            "There are overlapping indexing between test and valid sets"
        );
        assert!(matches!(
            err([&[0, 1, 2, 4], &[], &[]]),
            CoreError::Index(_)
        ));
        assert!(matches!(
            err([&[-1, 0, 1, 2], &[], &[]]),
            CoreError::Index(_)
        ));
    }
}
