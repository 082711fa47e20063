//! The seeded random numbers of a training run: the train/test split, the initial weights and
//! each epoch's shuffle.
//!
//! They come from SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014), not from libtorch's global generator, for two reasons: a run
//! then depends only on its seed (another thread of the same process drawing from the global
//! generator cannot change it), and each draw is a function of `(seed, purpose, index)` alone,
//! so epoch `e`'s order is the same whether the run started at epoch 1 or resumed at epoch
//! `e`.

use tch::{Kind, Tensor};

/// What a stream of numbers is for; part of the stream's key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    /// The train/test split (index 0).
    Split = 1,
    /// The initial weights (index: the parameter's position).
    Init = 2,
    /// The order of the training rows (index: the epoch, from 1).
    Shuffle = 3,
}

/// SplitMix64: a 64-bit state advanced by the golden-ratio increment, mixed on output.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream for `(seed, purpose, index)`.
    pub(crate) fn stream(seed: u64, purpose: Purpose, index: u64) -> SplitMix64 {
        let key = SplitMix64(seed).next_u64()
            ^ (purpose as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ index.wrapping_mul(0xAEF1_7502_108E_F2D9);
        SplitMix64(SplitMix64(key).next_u64())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n >= 1`), without modulo bias (rejection sampling).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let n = n.max(1);
        let limit = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < limit {
                return x % n;
            }
        }
    }
}

/// A random permutation of `0..n` (Fisher-Yates) from the stream `(seed, purpose, index)`.
pub(crate) fn permutation(n: usize, seed: u64, purpose: Purpose, index: u64) -> Vec<i64> {
    let mut rng = SplitMix64::stream(seed, purpose, index);
    let mut order: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A `shape` FP32 tensor uniform in `[-bound, bound)` from the stream `(seed, Init, index)`.
pub(crate) fn uniform(
    shape: &[i64],
    bound: f64,
    seed: u64,
    index: u64,
) -> Result<Tensor, tch::TchError> {
    let mut rng = SplitMix64::stream(seed, Purpose::Init, index);
    let count: i64 = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::f_from_slice(&values)?
        .f_view(shape)?
        .f_to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_depend_on_the_key() {
        let a = permutation(100, 42, Purpose::Shuffle, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<i64>>());
        assert_eq!(a, permutation(100, 42, Purpose::Shuffle, 1));
        assert_ne!(a, permutation(100, 42, Purpose::Shuffle, 2));
        assert_ne!(a, permutation(100, 43, Purpose::Shuffle, 1));
        assert_ne!(a, permutation(100, 42, Purpose::Split, 1));
        assert!(permutation(0, 1, Purpose::Split, 0).is_empty());
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let t = uniform(&[50, 40], 0.25, 7, 0).unwrap();
        assert_eq!(t.size(), vec![50, 40]);
        let max = t.abs().max().double_value(&[]);
        assert!(max <= 0.25 && max > 0.2, "{max}");
        let mean = t.mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 0.02, "{mean}");
    }
}
