//! Element traits shared by the kernels: [`Idx`] for index arrays (`indptr`, `indices`,
//! `rows`) and [`Value`] for stored values. Implemented for every integer width NumPy uses,
//! so the bindings can borrow any of them without a cast.

/// An integer used as an index or offset.
pub trait Idx: Copy + Send + Sync + 'static {
    /// The value as `usize`; negative or unrepresentable values become `usize::MAX`,
    /// so one `<` bound check rejects them too.
    fn to_usize(self) -> usize;
    /// The value as `usize` by bit reinterpretation of its unsigned counterpart: negative
    /// values become at least `2**(bits-1)`, above any valid index into a buffer of
    /// fewer than that many elements. Branch-free, so a max over a slice vectorises.
    fn to_usize_wrapping(self) -> usize;
    /// The smallest value [`Idx::to_usize_wrapping`] gives a negative number
    /// (`2**(bits-1)`; `usize::MAX` for unsigned types, which have none).
    const NEGATIVE_WRAPS_TO: usize;
    /// The exact value, for error messages.
    fn to_i128(self) -> i128;
}

macro_rules! impl_idx {
    ($($t:ty => $u:ty),*) => {$(
        impl Idx for $t {
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation, unused_comparisons)]
            const NEGATIVE_WRAPS_TO: usize = if <$t>::MIN < 0 {
                (<$t>::MAX as $u as usize) + 1
            } else {
                usize::MAX
            };
            #[inline(always)]
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
            fn to_usize_wrapping(self) -> usize {
                self as $u as usize
            }
            #[inline(always)]
            fn to_usize(self) -> usize {
                usize::try_from(self).unwrap_or(usize::MAX)
            }
            #[inline(always)]
            fn to_i128(self) -> i128 {
                i128::from(self)
            }
        }
    )*};
}
impl_idx!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, u8 => u8, u16 => u16, u32 => u32, u64 => u64);

/// A stored matrix value that converts to `f32` the way NumPy's `astype(np.float32)` does
/// (round to nearest).
pub trait Value: Copy + Send + Sync + 'static {
    /// Whether sums of a few values are the same whether taken in `f32` or in the type
    /// itself (then duplicate entries may be summed after the cast to `f32`).
    const SUMS_EXACTLY_IN_F32: bool;
    /// The value as `f32`.
    fn to_f32(self) -> f32;
    /// The value as `f64` (exact for every type but 64-bit integers beyond 2^53).
    fn to_f64(self) -> f64;
}

macro_rules! impl_value {
    ($($t:ty => $exact:expr),*) => {$(
        impl Value for $t {
            const SUMS_EXACTLY_IN_F32: bool = $exact;
            #[inline(always)]
            #[allow(clippy::cast_lossless, clippy::cast_precision_loss)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            #[allow(clippy::cast_lossless, clippy::cast_precision_loss)]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}
impl_value!(
    f32 => true, f64 => false, i8 => true, i16 => true, i32 => false, i64 => false,
    u8 => true, u16 => true, u32 => false, u64 => false
);

impl Value for bool {
    const SUMS_EXACTLY_IN_F32: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_indices_become_usize_max() {
        assert_eq!((-1i32).to_usize(), usize::MAX);
        assert_eq!((-1i64).to_usize(), usize::MAX);
        assert_eq!(5i32.to_usize(), 5);
        assert_eq!((-1i32).to_usize_wrapping(), u32::MAX as usize);
        assert_eq!((-1i16).to_usize_wrapping(), u16::MAX as usize);
        assert_eq!(i8::NEGATIVE_WRAPS_TO, 128);
        assert_eq!(i64::NEGATIVE_WRAPS_TO, 1 << 63);
        assert_eq!(u32::NEGATIVE_WRAPS_TO, usize::MAX);
        assert!((-128i8).to_usize_wrapping() >= i8::NEGATIVE_WRAPS_TO);
        assert_eq!(u64::MAX.to_i128(), i128::from(u64::MAX));
    }

    #[test]
    fn values_convert_like_numpy() {
        assert_eq!(true.to_f32(), 1.0);
        assert_eq!(3i64.to_f32(), 3.0);
        assert_eq!(0.1f64.to_f32(), 0.1f32);
        // 2**24 + 1 rounds to nearest even, as NumPy does.
        assert_eq!(16_777_217i64.to_f32(), 16_777_216.0);
    }
}
