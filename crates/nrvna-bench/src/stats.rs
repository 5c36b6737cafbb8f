//! Small numeric helpers: nearest-rank percentiles, safe ratios, and
//! parsing the contract's ISO-8601 timestamps (`submitted_at`, `claimed_at`).

use serde_json::{json, Value};

/// Percentile by nearest rank (p in 0..=100) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

pub fn mean(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// n, p50, p99, mean, min and max of samples in milliseconds.
pub fn summary_ms(samples: &[f64]) -> Value {
    json!({
        "n": samples.len(),
        "p50_ms": percentile(samples, 50.0),
        "p99_ms": percentile(samples, 99.0),
        "mean_ms": mean(samples),
        "min_ms": percentile(samples, 0.0),
        "max_ms": percentile(samples, 100.0),
    })
}

/// The index of the median of the present values (the lower of the two
/// middle ones when their count is even): the run a row of repeated runs
/// reports. `None` when no value is present.
pub fn median_index(values: &[Option<f64>]) -> Option<usize> {
    let mut present: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.filter(|x| x.is_finite()).map(|x| (i, x)))
        .collect();
    if present.is_empty() {
        return None;
    }
    present.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(present[(present.len() - 1) / 2].0)
}

/// The median of the present values, as [`median_index`] picks it.
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    median_index(values).and_then(|i| values[i])
}

/// `a / b`, or `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

pub use nrvna_core::time::parse_iso8601_micros;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_timestamps() {
        assert_eq!(
            parse_iso8601_micros("2025-11-26T13:47:32.123456Z"),
            Some(1_764_164_852_123_456)
        );
        assert_eq!(parse_iso8601_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601_micros("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500_000)
        );
        assert_eq!(parse_iso8601_micros("2025-11-26T13:47:32"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(25.0));
        assert_eq!(percentile(&v, 99.0), Some(50.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
    }

    #[test]
    fn medians_skip_missing_values_and_take_the_lower_middle() {
        assert_eq!(median_index(&[Some(3.0), Some(1.0), Some(2.0)]), Some(2));
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0), Some(3.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(f64::NAN), Some(5.0)]), Some(5.0));
        assert_eq!(median_index(&[None, None]), None);
        assert_eq!(median(&[]), None);
    }
}
