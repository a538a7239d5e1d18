//! Categorical encoding (job 2): values -> `i32` codes against a mapping, and the mapping
//! pandas would build for a new categorical.
//!
//! Values are [`Key`]s: borrowed strings or numbers. Numbers compare like Python's `==`
//! (`1 == 1.0 == True`), so integral floats become [`Key::Int`]. A missing value
//! ([`Key::Missing`]: `None` or NaN) never maps to a code: pandas would silently give it
//! code -1, which scvi then rejects much later, so it is an error here.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::errors::{CoreError, Result};
use crate::pyfmt::{float_repr, str_repr};

/// How many unknown values an error message names.
pub const MAX_NAMED_UNKNOWN: usize = 5;

/// One categorical value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// A string.
    Str(&'a str),
    /// An integer, or an integral float within the `i64` range.
    Int(i64),
    /// Bits of any other non-NaN float (non-integral or huge).
    Float(u64),
    /// `None` or NaN.
    Missing,
}

impl Key<'_> {
    /// The key of a float: NaN is [`Key::Missing`], integral values are [`Key::Int`].
    #[must_use]
    pub fn from_f64(x: f64) -> Self {
        // 2**63 is exactly representable; the i64 range is [-2**63, 2**63).
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if x.is_nan() {
            Key::Missing
        } else if x.fract() == 0.0 && (-LIMIT..LIMIT).contains(&x) {
            #[allow(clippy::cast_possible_truncation)]
            Key::Int(x as i64)
        } else {
            Key::Float(x.to_bits())
        }
    }

    /// The value as `f64` (for numeric keys; 0 otherwise).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(&self) -> f64 {
        match *self {
            Key::Int(i) => i as f64,
            Key::Float(b) => f64::from_bits(b),
            Key::Str(_) | Key::Missing => 0.0,
        }
    }

    /// Python-like `repr` for messages.
    #[must_use]
    pub fn repr(&self) -> String {
        match *self {
            Key::Str(s) => str_repr(s),
            Key::Int(i) => i.to_string(),
            Key::Float(b) => float_repr(f64::from_bits(b)),
            Key::Missing => "None/NaN".into(),
        }
    }
}

/// FxHash (the rustc hasher): a multiply-rotate hash, far cheaper than SipHash for short
/// keys. Not DoS-resistant, which is fine for category lookups in a local process.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        #[allow(clippy::cast_sign_loss)]
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` using [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A direct-mapped cache keyed by a string's address and length. Columns of Python strings
/// repeat the same few objects (pandas and NumPy share one object per distinct value), so
/// most lookups hit here and skip hashing and comparing the text. Two live `&str` with the
/// same address and length are the same bytes, so a hit is always exact.
pub struct PtrCache<V: Copy> {
    slots: Vec<(usize, usize, V)>,
}

impl<V: Copy> PtrCache<V> {
    const SLOTS: usize = 1024;

    /// An empty cache; `fill` is any value (slots with address 0 are empty).
    #[must_use]
    pub fn new(fill: V) -> Self {
        Self {
            slots: vec![(0, 0, fill); Self::SLOTS],
        }
    }

    #[inline]
    fn slot(addr: usize) -> usize {
        (addr >> 4) & (Self::SLOTS - 1)
    }

    /// The value stored for the string at `addr` with length `len`.
    #[inline]
    #[must_use]
    pub fn get(&self, addr: usize, len: usize) -> Option<V> {
        let (a, l, v) = self.slots[Self::slot(addr)];
        (a == addr && l == len && addr != 0).then_some(v)
    }

    /// Remember `v` for the string at `addr` with length `len`.
    #[inline]
    pub fn put(&mut self, addr: usize, len: usize, v: V) {
        self.slots[Self::slot(addr)] = (addr, len, v);
    }
}

fn missing_error(what: &str, pos: usize) -> CoreError {
    CoreError::value(format!(
        "{what} a missing value (None or NaN) at position {pos}; missing values cannot be \
         encoded as categories, fill or drop them first"
    ))
}

/// Map each of `mapping` to its position, rejecting missing and duplicate categories.
fn index_mapping<'a>(mapping: &[Key<'a>]) -> Result<FxHashMap<Key<'a>, i32>> {
    if i32::try_from(mapping.len()).is_err() {
        return Err(CoreError::value(
            "mapping has more than 2**31 - 1 categories",
        ));
    }
    let mut map = FxHashMap::with_capacity_and_hasher(mapping.len(), BuildHasherDefault::default());
    for (code, &key) in mapping.iter().enumerate() {
        if key == Key::Missing {
            return Err(missing_error("mapping must not contain", code));
        }
        let code = i32::try_from(code).expect("length checked above");
        if map.insert(key, code).is_some() {
            return Err(CoreError::value(format!(
                "mapping has a duplicate category {} at position {code}",
                key.repr()
            )));
        }
    }
    Ok(map)
}

/// Codes of `values` in `mapping` (position of each value in `mapping`).
///
/// # Errors
/// [`CoreError::Value`] if a value or category is missing, `mapping` repeats a category,
/// or some values are not in `mapping`; the message names the first
/// [`MAX_NAMED_UNKNOWN`] distinct unknown values in order of appearance.
pub fn encode(values: &[Key<'_>], mapping: &[Key<'_>]) -> Result<Vec<i32>> {
    let map = index_mapping(mapping)?;
    let mut codes = Vec::with_capacity(values.len());
    let mut n_unknown = 0usize;
    let mut unknown: Vec<Key<'_>> = Vec::new();
    let mut cache = PtrCache::new(0i32);
    for (pos, key) in values.iter().enumerate() {
        let (addr, len) = match key {
            Key::Str(s) => (s.as_ptr() as usize, s.len()),
            _ => (0, 0),
        };
        if let Some(code) = cache.get(addr, len) {
            codes.push(code);
        } else if let Some(&code) = map.get(key) {
            if addr != 0 {
                cache.put(addr, len, code);
            }
            codes.push(code);
        } else {
            if *key == Key::Missing {
                return Err(missing_error("values contain", pos));
            }
            n_unknown += 1;
            if unknown.len() < MAX_NAMED_UNKNOWN && !unknown.contains(key) {
                unknown.push(*key);
            }
            codes.push(-1);
        }
    }
    if n_unknown > 0 {
        let names: Vec<String> = unknown.iter().map(Key::repr).collect();
        return Err(CoreError::value(format!(
            "{n_unknown} of {} values are not in the mapping of {} categories; first unknown: [{}]",
            values.len(),
            mapping.len(),
            names.join(", ")
        )));
    }
    Ok(codes)
}

fn mixed_error() -> CoreError {
    CoreError::Dtype(
        "values mix strings and numbers, which have no common sort order; convert them to one \
         type first"
            .into(),
    )
}

/// pandas' category order: strings by code point (Python's `str` order), numbers
/// numerically. Only meaningful for keys of one kind (never [`Key::Missing`]).
fn pandas_cmp(a: &Key<'_>, b: &Key<'_>) -> Ordering {
    match (a, b) {
        (Key::Str(x), Key::Str(y)) => x.cmp(y),
        (Key::Int(x), Key::Int(y)) => x.cmp(y),
        _ => a.as_f64().total_cmp(&b.as_f64()),
    }
}

/// The distinct values of `values` in order of first appearance, with the position of each
/// first appearance. `code_of(code)` is called for every value, in order, with the
/// first-seen index of its distinct value.
///
/// # Errors
/// [`CoreError::Value`] for a missing value or more than `i32::MAX` distinct values,
/// [`CoreError::Dtype`] when strings and numbers are mixed.
fn first_seen<'a>(
    values: &[Key<'a>],
    mut code_of: impl FnMut(i32),
) -> Result<(Vec<Key<'a>>, Vec<usize>)> {
    let mut index: FxHashMap<Key<'a>, i32> = FxHashMap::default();
    let (mut keys, mut first) = (Vec::new(), Vec::new());
    let (mut has_str, mut has_num) = (false, false);
    // Columns repeat a few str objects: remember each string's code by address.
    let mut cache = PtrCache::new(0i32);
    for (pos, &key) in values.iter().enumerate() {
        let (addr, len) = match key {
            Key::Missing => return Err(missing_error("values contain", pos)),
            Key::Str(s) => {
                has_str = true;
                let (addr, len) = (s.as_ptr() as usize, s.len());
                if let Some(code) = cache.get(addr, len) {
                    code_of(code);
                    continue;
                }
                (addr, len)
            }
            Key::Int(_) | Key::Float(_) => {
                has_num = true;
                (0, 0)
            }
        };
        let code = match index.entry(key) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let code = i32::try_from(keys.len()).map_err(|_| {
                    CoreError::value("values have more than 2**31 - 1 distinct values")
                })?;
                keys.push(key);
                first.push(pos);
                *e.insert(code)
            }
        };
        if addr != 0 {
            cache.put(addr, len, code);
        }
        code_of(code);
    }
    if has_str && has_num {
        return Err(mixed_error());
    }
    Ok((keys, first))
}

/// The categories pandas gives a new categorical of `values`: the distinct values, strings
/// sorted by code point (Python's `str` order) or numbers sorted numerically. Returns, for
/// each category in order, the position of its first occurrence in `values`.
///
/// # Errors
/// [`CoreError::Value`] for a missing value, [`CoreError::Dtype`] when strings and numbers
/// are mixed (they have no common order).
pub fn build_mapping(values: &[Key<'_>]) -> Result<Vec<usize>> {
    let (keys, first) = first_seen(values, |_| {})?;
    let mut cats: Vec<(Key<'_>, usize)> = keys.into_iter().zip(first).collect();
    cats.sort_unstable_by(|(a, _), (b, _)| pandas_cmp(a, b));
    Ok(cats.into_iter().map(|(_, pos)| pos).collect())
}

/// [`build_mapping`] and the codes of `values` in it, in one pass over `values`: each value
/// is hashed once to a first-seen code, then only the distinct values are sorted and the
/// codes remapped through a table of their ranks. Returns `(mapping, codes)` with `mapping`
/// as [`build_mapping`] returns it.
///
/// # Errors
/// As [`build_mapping`].
pub fn factorize(values: &[Key<'_>]) -> Result<(Vec<usize>, Vec<i32>)> {
    let mut codes = Vec::with_capacity(values.len());
    let (keys, first) = first_seen(values, |code| codes.push(code))?;
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| pandas_cmp(&keys[a], &keys[b]));
    // `first_seen` checked that every first-seen code, hence every rank, fits in an i32.
    let mut rank = vec![0i32; keys.len()];
    for (r, &old) in order.iter().enumerate() {
        rank[old] = i32::try_from(r).unwrap_or(i32::MAX);
    }
    for code in &mut codes {
        // Codes are first-seen indices: non-negative and below `keys.len()`.
        #[allow(clippy::cast_sign_loss)]
        let old = *code as usize;
        *code = rank[old];
    }
    let mapping = order.iter().map(|&old| first[old]).collect();
    Ok((mapping, codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_follow_python_equality() {
        assert_eq!(Key::from_f64(1.0), Key::Int(1));
        assert_eq!(Key::from_f64(-0.0), Key::Int(0));
        assert_eq!(Key::from_f64(f64::NAN), Key::Missing);
        assert_eq!(Key::from_f64(1.5), Key::Float(1.5f64.to_bits()));
        assert_eq!(Key::from_f64(1e30), Key::Float(1e30f64.to_bits()));
    }

    #[test]
    fn encodes_strings_and_numbers() {
        let mapping = [Key::Str("b"), Key::Str("a")];
        let values = [Key::Str("a"), Key::Str("b"), Key::Str("a")];
        assert_eq!(encode(&values, &mapping).unwrap(), [1, 0, 1]);
        let mapping = [Key::Int(3), Key::Int(1)];
        let values = [Key::Int(1), Key::from_f64(3.0)];
        assert_eq!(encode(&values, &mapping).unwrap(), [1, 0]);
        assert_eq!(encode(&[], &mapping).unwrap(), Vec::<i32>::new());
    }

    #[test]
    fn unknown_values_are_named() {
        let mapping = [Key::Str("a")];
        let values = [
            Key::Str("x"),
            Key::Str("a"),
            Key::Str("y"),
            Key::Str("x"),
            Key::Int(2),
        ];
        let err = encode(&values, &mapping).unwrap_err().to_string();
        assert!(err.starts_with("4 of 5 values"), "{err}");
        assert!(err.contains("['x', 'y', 2]"), "{err}");
        let many: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
        let many: Vec<Key> = many.iter().map(|s| Key::Str(s)).collect();
        let err = encode(&many, &mapping).unwrap_err().to_string();
        assert!(err.contains("'v4']") && !err.contains("'v5'"), "{err}");
    }

    #[test]
    fn missing_and_duplicates_are_errors() {
        let err = encode(&[Key::Str("a"), Key::Missing], &[Key::Str("a")]).unwrap_err();
        assert!(err.to_string().contains("position 1"), "{err}");
        let err = encode(&[Key::Str("a")], &[Key::Str("a"), Key::Str("a")]).unwrap_err();
        assert!(err.to_string().contains("duplicate category 'a'"), "{err}");
        let err = encode(&[Key::Str("a")], &[Key::Missing]).unwrap_err();
        assert!(
            err.to_string().contains("mapping must not contain"),
            "{err}"
        );
        assert!(build_mapping(&[Key::Int(1), Key::Missing]).is_err());
    }

    /// Strings whose pandas order (code point) differs from their order of appearance.
    const UNSORTED_STRS: [Key<'static>; 5] = [
        Key::Str("b"),
        Key::Str("B"),
        Key::Str("é"),
        Key::Str("a"),
        Key::Str("b"),
    ];

    #[test]
    fn mapping_order_is_pandas_order() {
        let values = UNSORTED_STRS;
        assert_eq!(build_mapping(&values).unwrap(), [1, 3, 0, 2]);
        let values = [Key::Int(10), Key::Int(-2), Key::from_f64(2.5), Key::Int(10)];
        assert_eq!(build_mapping(&values).unwrap(), [1, 2, 0]);
        assert!(build_mapping(&[]).unwrap().is_empty());
        let err = build_mapping(&[Key::Str("a"), Key::Int(1)]).unwrap_err();
        assert!(matches!(err, CoreError::Dtype(_)));
    }

    #[test]
    fn ptr_cache_hits_only_the_same_string() {
        let text = String::from("abcabc");
        let (a, b) = (&text[0..3], &text[3..6]);
        let mut cache = PtrCache::new(-1);
        cache.put(a.as_ptr() as usize, a.len(), 7);
        assert_eq!(cache.get(a.as_ptr() as usize, a.len()), Some(7));
        assert_eq!(cache.get(b.as_ptr() as usize, b.len()), None);
        assert_eq!(cache.get(a.as_ptr() as usize, 2), None);
        // Same text at different addresses still encodes through the hash map.
        let values = [Key::Str(a), Key::Str(b), Key::Str(a)];
        assert_eq!(encode(&values, &[Key::Str("abc")]).unwrap(), [0, 0, 0]);
        assert_eq!(build_mapping(&values).unwrap(), [0]);
    }

    /// `factorize` must equal `build_mapping` followed by `encode` against its categories.
    fn check_factorize(values: &[Key<'_>]) -> (Vec<usize>, Vec<i32>) {
        let (mapping, codes) = factorize(values).unwrap();
        assert_eq!(mapping, build_mapping(values).unwrap());
        let cats: Vec<Key<'_>> = mapping.iter().map(|&i| values[i]).collect();
        assert_eq!(codes, encode(values, &cats).unwrap());
        (mapping, codes)
    }

    #[test]
    fn factorize_gives_pandas_order_and_codes() {
        let values = UNSORTED_STRS;
        assert_eq!(
            check_factorize(&values),
            (vec![1, 3, 0, 2], vec![2, 0, 3, 1, 2])
        );
        let values = [Key::Int(10), Key::Int(-2), Key::from_f64(2.5), Key::Int(10)];
        assert_eq!(check_factorize(&values), (vec![1, 2, 0], vec![2, 0, 1, 2]));
        assert_eq!(check_factorize(&[Key::Str("x")]), (vec![0], vec![0]));
        assert_eq!(check_factorize(&[]), (vec![], vec![]));
        // Same text at different addresses is one category.
        let text = String::from("abcabc");
        let (a, b) = (&text[0..3], &text[3..6]);
        let values = [Key::Str(b), Key::Str(a), Key::Str(b), Key::Str("ab")];
        assert_eq!(check_factorize(&values), (vec![3, 0], vec![1, 1, 1, 0]));
    }

    #[test]
    fn factorize_errors_like_build_mapping() {
        let err = factorize(&[Key::Str("a"), Key::Int(1), Key::Missing]).unwrap_err();
        assert!(err.to_string().contains("position 2"), "{err}");
        let err = factorize(&[Key::Str("a"), Key::Int(1)]).unwrap_err();
        assert!(matches!(err, CoreError::Dtype(_)), "{err}");
        let err = factorize(&[Key::from_f64(f64::NAN)]).unwrap_err();
        assert!(err.to_string().contains("position 0"), "{err}");
    }

    #[test]
    fn factorize_matches_build_mapping_and_encode() {
        // Pseudo-random columns (an LCG): repeated, shared and distinct keys of each kind.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % m
        };
        let words: Vec<String> = (0..40).map(|i| format!("w{}", i * 7 % 23)).collect();
        for round in 0..200 {
            let n = usize::try_from(next(300)).unwrap();
            let strings: Vec<Key<'_>> = (0..n)
                .map(|_| Key::Str(&words[usize::try_from(next(40)).unwrap()]))
                .collect();
            check_factorize(&strings);
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)]
            let numbers: Vec<Key<'_>> = (0..n)
                .map(|_| match next(3) {
                    0 => Key::Int(next(50) as i64 - 25),
                    1 => Key::from_f64(next(20) as f64 / 4.0 - 2.0),
                    _ => Key::Int(i64::MIN + i64::from(round % 3)),
                })
                .collect();
            check_factorize(&numbers);
        }
    }

    #[test]
    fn fxhash_is_deterministic() {
        let mut a = FxHasher::default();
        "hello".hash(&mut a);
        let mut b = FxHasher::default();
        "hello".hash(&mut b);
        assert_eq!(a.finish(), b.finish());
    }
}
