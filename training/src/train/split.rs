//! The seeded train/test split of a table and the training rows' per-feature statistics, by
//! which the inputs are standardized during training.

use tch::{Kind, Tensor};

use crate::dataset::Dataset;
use crate::rng::{self, Purpose};

/// Rows as tensors.
pub(super) struct Rows {
    /// The features, `[rows, features]` FP32.
    pub x: Tensor,
    /// The labels, `[rows]` INT64.
    pub y: Tensor,
}

impl Rows {
    /// How many rows.
    pub fn rows(&self) -> usize {
        self.y.size()[0] as usize
    }
}

/// The seeded train/test split and the training rows' per-feature statistics.
pub(super) struct Split {
    /// The rows trained on.
    pub train: Rows,
    /// The rows held out.
    pub test: Rows,
    /// `[features]` mean of the training rows (zeros when not centring).
    pub mean: Tensor,
    /// `[features]` standard deviation of the training rows, 1 where a feature is constant.
    pub std: Tensor,
}

impl Split {
    /// Shuffles with the seed's split stream and holds out `round(rows * test_fraction)` rows
    /// (at least 1, at most rows - 1). `center`: whether to subtract the mean, which only a
    /// first layer with a bias can absorb.
    pub fn new(
        data: &Dataset,
        test_fraction: f64,
        center: bool,
        seed: u64,
    ) -> anyhow::Result<Split> {
        let rows = data.rows() as i64;
        let x = Tensor::f_from_slice(&data.features)?.f_view([rows, data.feature_count as i64])?;
        let y = Tensor::f_from_slice(&data.labels)?;
        let order = Tensor::f_from_slice(&rng::permutation(data.rows(), seed, Purpose::Split, 0))?;
        let test_rows = ((rows as f64 * test_fraction).round() as i64).clamp(1, rows - 1);
        let test_index = order.f_narrow(0, 0, test_rows)?;
        let train_index = order.f_narrow(0, test_rows, rows - test_rows)?;
        let take = |index: &Tensor| -> anyhow::Result<Rows> {
            Ok(Rows {
                x: x.f_index_select(0, index)?,
                y: y.f_index_select(0, index)?,
            })
        };
        let train = take(&train_index)?;
        let test = take(&test_index)?;
        let mean = train.x.f_mean_dim(0, false, Kind::Float)?;
        let mean = if center { mean } else { mean.f_zeros_like()? };
        let std = train.x.f_std_dim(0, false, false)?;
        let std = std.f_where_scalarother(&std.f_gt(1e-6)?, 1.0)?;
        Ok(Split {
            train,
            test,
            mean,
            std,
        })
    }
}
