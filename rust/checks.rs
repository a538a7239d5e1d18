//! Value checks on matrix data (job 1's companion): the first value a count model cannot
//! take (NaN, an infinity or a negative number), found in one pass over the stored values
//! without a dense copy.

use crate::num::Value;

/// Why a value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a number.
    NaN,
    /// `+inf`.
    PosInf,
    /// `-inf`.
    NegInf,
    /// A finite negative number.
    Negative,
}

impl Invalid {
    /// The name used in messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Invalid::NaN => "nan",
            Invalid::PosInf => "inf",
            Invalid::NegInf => "-inf",
            Invalid::Negative => "negative",
        }
    }

    fn of(x: f64) -> Option<Self> {
        if x.is_nan() {
            Some(Invalid::NaN)
        } else if x == f64::INFINITY {
            Some(Invalid::PosInf)
        } else if x == f64::NEG_INFINITY {
            Some(Invalid::NegInf)
        } else if x < 0.0 {
            Some(Invalid::Negative)
        } else {
            None
        }
    }
}

/// Values scanned per block before testing for a hit: the scan of a block is branch-free
/// (and vectorises); only a block with a hit is scanned again for the position.
const BLOCK: usize = 4096;

/// The position and kind of the first NaN, infinite or negative value of `data`.
#[must_use]
pub fn find_invalid<V: Value>(data: &[V]) -> Option<(usize, Invalid)> {
    for (b, block) in data.chunks(BLOCK).enumerate() {
        // `x < 0`, `x != x` (NaN) and `x == inf` cover every kind.
        #[allow(clippy::eq_op)]
        let hit = block.iter().fold(false, |acc, v| {
            let x = v.to_f64();
            acc | (x < 0.0) | (x != x) | (x == f64::INFINITY)
        });
        if hit {
            // A racing writer may have changed the block meanwhile: then no position is
            // found again here and the scan goes on, which is as good an answer as any.
            if let Some((i, why)) = block
                .iter()
                .enumerate()
                .find_map(|(i, v)| Invalid::of(v.to_f64()).map(|why| (i, why)))
            {
                return Some((b * BLOCK + i, why));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bad_value_of_each_kind() {
        let mut data = vec![1.0f32; 10_000];
        assert_eq!(find_invalid(&data), None);
        data[9_000] = f32::INFINITY;
        assert_eq!(find_invalid(&data), Some((9_000, Invalid::PosInf)));
        data[5_000] = -0.5;
        assert_eq!(find_invalid(&data), Some((5_000, Invalid::Negative)));
        data[4_096] = f32::NAN;
        assert_eq!(find_invalid(&data), Some((4_096, Invalid::NaN)));
        data[0] = f32::NEG_INFINITY;
        assert_eq!(find_invalid(&data), Some((0, Invalid::NegInf)));
    }

    #[test]
    fn integers_and_negative_zero() {
        assert_eq!(find_invalid(&[3i64, 0, -2]), Some((2, Invalid::Negative)));
        assert_eq!(find_invalid(&[0u8, 255]), None);
        assert_eq!(find_invalid(&[-0.0f64, 0.0]), None);
        assert_eq!(find_invalid::<f32>(&[]), None);
    }
}
