//! The seeded random numbers of training: dropout masks, noise layers, shuffling and
//! initializers. ChaCha8 is portable and version-stable, so a seed gives the same run everywhere
//! (Keras's own RNG cannot be matched; the reference runs use dropout rate 0).

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f32 {
        rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut self.0)
    }

    /// A uniform index in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// The generator itself, for `rand_distr` distributions.
    pub fn inner(&mut self) -> &mut ChaCha8Rng {
        &mut self.0
    }
}
