//! Robust statistics over a cohort's scores: median, MAD and the raw threshold.

/// Scale that makes the MAD a consistent estimator of a normal standard deviation.
pub const MAD_SCALE: f64 = 1.4826;

/// Median and MAD of a set of scores, and `median − k·1.4826·MAD`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub mad: f64,
    pub raw_threshold: f64,
}

impl Spread {
    /// Computes the spread; `None` for an empty set. Reorders `scores`.
    pub fn of(scores: &mut [f64], k: f64) -> Option<Self> {
        let center = median(scores)?;
        for s in scores.iter_mut() {
            *s = (*s - center).abs();
        }
        let mad = median(scores)?;
        Some(Self { median: center, mad, raw_threshold: center - k * MAD_SCALE * mad })
    }
}

/// Median in linear time (the mean of the two middle values for even counts).
fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (below, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return Some(upper);
    }
    let lower = below.iter().copied().max_by(f64::total_cmp)?;
    Some((lower + upper) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(values: &[f64]) -> Option<Spread> {
        Spread::of(&mut values.to_vec(), 2.0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn odd_count() {
        // sorted 0.5 0.8 0.9 0.92 0.95: median 0.9; deviations 0.4 0.1 0 0.02 0.05 → MAD 0.05
        let s = spread(&[0.9, 0.5, 0.95, 0.8, 0.92]).unwrap_or(Spread { median: 0.0, mad: 0.0, raw_threshold: 0.0 });
        assert!(close(s.median, 0.9));
        assert!(close(s.mad, 0.05));
        assert!(close(s.raw_threshold, 0.9 - 2.0 * 1.4826 * 0.05));
    }

    #[test]
    fn even_count() {
        // sorted 0.6 0.7 0.9 1.0: median 0.8; deviations 0.2 0.1 0.1 0.2 → MAD 0.15
        let s = spread(&[1.0, 0.6, 0.9, 0.7]).map(|s| (s.median, s.mad));
        let (median, mad) = s.unwrap();
        assert!(close(median, 0.8) && close(mad, 0.15), "{median} {mad}");
    }

    #[test]
    fn ties_and_all_equal() {
        let s = spread(&[0.7, 0.7, 0.7, 0.9, 0.2]).map(|s| (s.median, s.mad)).unwrap();
        assert!(close(s.0, 0.7) && close(s.1, 0.0));
        let s = spread(&[0.85; 6]).unwrap_or(Spread { median: 0.0, mad: 1.0, raw_threshold: 0.0 });
        assert_eq!((s.median, s.mad, s.raw_threshold), (0.85, 0.0, 0.85));
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[0.4]).map(|s| s.median), Some(0.4));
    }
}
