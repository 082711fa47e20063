//! A labelled table for training: CSV without a header, feature columns then an integer label
//! in the last column; gzip-compressed when the file name ends in `.gz`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};

/// Rows of numeric features with a class label each.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Row-major features, `rows * features` values.
    pub features: Vec<f32>,
    /// One label per row, each in `0..classes`.
    pub labels: Vec<i64>,
    /// Feature columns per row.
    pub feature_count: usize,
}

impl Dataset {
    /// Rows in the table.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// `max(label) + 1`, the classes the labels imply.
    pub fn classes(&self) -> i64 {
        self.labels.iter().copied().max().map_or(0, |m| m + 1)
    }

    /// Reads a CSV file (gzip when the name ends in `.gz`); see [`Dataset::from_reader`].
    pub fn from_path(path: &Path) -> anyhow::Result<Dataset> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        Dataset::from_reader(reader).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Reads CSV rows: at least one feature and a label per row, the same column count in every
    /// row, finite numeric features, non-negative integer labels. Empty lines are skipped.
    pub fn from_reader(reader: impl Read) -> anyhow::Result<Dataset> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(reader);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut width = None;
        for (index, record) in csv.records().enumerate() {
            let line = index + 1;
            let record = record.with_context(|| format!("row {line}"))?;
            if record.len() == 1 && record[0].is_empty() {
                continue;
            }
            if record.len() < 2 {
                bail!(
                    "row {line}: expected feature columns and a label, got {} column",
                    record.len()
                );
            }
            let expected = *width.get_or_insert(record.len());
            if record.len() != expected {
                bail!(
                    "row {line}: expected {expected} columns like the first row, got {}",
                    record.len()
                );
            }
            let label = &record[expected - 1];
            for (column, text) in record.iter().take(expected - 1).enumerate() {
                let value: f32 = text
                    .parse()
                    .ok()
                    .filter(|v: &f32| v.is_finite())
                    .with_context(|| {
                        format!(
                            "row {line}, column {}: '{text}' is not a finite number",
                            column + 1
                        )
                    })?;
                features.push(value);
            }
            labels.push(parse_label(label).with_context(|| format!("row {line}, last column"))?);
        }
        let Some(width) = width else { bail!("no rows") };
        Ok(Dataset {
            features,
            labels,
            feature_count: width - 1,
        })
    }
}

/// A class label: a non-negative integer (`3`, or `3.0` as some exporters write it).
fn parse_label(text: &str) -> anyhow::Result<i64> {
    let value = match text.parse::<i64>() {
        Ok(v) => v,
        Err(_) => {
            let float: f64 = text
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite() && f.fract() == 0.0)
                .with_context(|| format!("label '{text}' is not an integer"))?;
            float as i64
        }
    };
    if value < 0 {
        bail!("label {value} is negative; labels are class indices 0, 1, ...");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows() {
        let data = Dataset::from_reader("1,2,0\n3, 4 ,2.0\n\n5,6,1\n".as_bytes()).unwrap();
        assert_eq!(data.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(data.labels, vec![0, 2, 1]);
        assert_eq!(data.feature_count, 2);
        assert_eq!(data.rows(), 3);
        assert_eq!(data.classes(), 3);
    }

    #[test]
    fn rejects_bad_rows() {
        let e = Dataset::from_reader("1,2,0\n3,1\n".as_bytes()).unwrap_err();
        assert!(
            format!("{e:#}").contains("row 2: expected 3 columns"),
            "{e:#}"
        );
        let e = Dataset::from_reader("1,x,0\n".as_bytes()).unwrap_err();
        assert!(
            format!("{e:#}").contains("column 2: 'x' is not a finite number"),
            "{e:#}"
        );
        let e = Dataset::from_reader("1,2,1.5\n".as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("not an integer"), "{e:#}");
        let e = Dataset::from_reader("1,2,-1\n".as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("negative"), "{e:#}");
        assert!(Dataset::from_reader("".as_bytes()).is_err());
    }

    #[test]
    fn reads_the_digits_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz");
        let data = Dataset::from_path(&path).unwrap();
        assert_eq!(data.rows(), 1797);
        assert_eq!(data.feature_count, 64);
        assert_eq!(data.classes(), 10);
    }
}
