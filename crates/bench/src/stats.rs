//! Order statistics of samples: the numbers every measure reports (min, p50,
//! p95, max, mean), kept apart so they are tested without containerd.

use serde::Serialize;

/// What one series of samples comes to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

/// The `p`-th percentile (0 ≤ p ≤ 100) of samples sorted in ascending order,
/// interpolating linearly between the two nearest ranks (the method numpy
/// and most spreadsheets use by default). `None` for no samples.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let (lo, hi) = (sorted[below.min(last)], sorted[above.min(last)]);
    Some(lo + (hi - lo) * (rank - below as f64))
}

/// Summarizes samples in any order. Samples that are not finite numbers are
/// left out; `None` when nothing is left.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(Summary {
        n,
        min: *sorted.first()?,
        p50: percentile_sorted(&sorted, 50.0)?,
        p95: percentile_sorted(&sorted, 95.0)?,
        max: *sorted.last()?,
        mean: sorted.iter().sum::<f64>() / n as f64,
    })
}

/// `num / den`, or `None` when that is not a meaningful positive number.
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (num.is_finite() && den.is_finite() && den > 0.0 && r.is_finite() && r >= 0.0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile_sorted(&s, 50.0).unwrap(), 2.5));
        assert!(close(percentile_sorted(&s, 0.0).unwrap(), 1.0));
        assert!(close(percentile_sorted(&s, 100.0).unwrap(), 4.0));
        // rank 0.95 * 3 = 2.85: 3 + 0.85 * (4 - 3)
        assert!(close(percentile_sorted(&s, 95.0).unwrap(), 3.85));
    }

    #[test]
    fn percentiles_of_one_to_twenty() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!(close(percentile_sorted(&s, 50.0).unwrap(), 10.5));
        // rank 0.95 * 19 = 18.05 → 19.05
        assert!(close(percentile_sorted(&s, 95.0).unwrap(), 19.05));
    }

    #[test]
    fn percentile_edge_cases() {
        assert_eq!(percentile_sorted(&[], 50.0), None);
        assert_eq!(percentile_sorted(&[7.0], 95.0), Some(7.0));
        // Out-of-range p is clamped.
        assert_eq!(percentile_sorted(&[1.0, 2.0], 150.0), Some(2.0));
        assert_eq!(percentile_sorted(&[1.0, 2.0], -5.0), Some(1.0));
    }

    #[test]
    fn summary_sorts_and_skips_non_finite() {
        let s = summarize(&[5.0, f64::NAN, 1.0, 3.0, f64::INFINITY, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert!(close(s.p50, 3.0));
        assert!(close(s.p95, 4.8));
        assert!(close(s.mean, 3.0));
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
    }

    #[test]
    fn ratios_refuse_nonsense() {
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(-1.0, 1.0), None);
    }
}
