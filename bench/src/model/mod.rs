//! Model repositories made for a benchmark.

mod dense;

pub use dense::init_dense;
