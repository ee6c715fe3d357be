//! Summaries of timing samples.

use std::time::Instant;

/// min / median / p99 / mean of a set of samples (same unit as the input,
/// nanoseconds everywhere in the bench).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: f64,
    /// Median (nearest rank).
    pub median: f64,
    /// 99th percentile (nearest rank; the maximum below 100 samples).
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarise `samples`; `None` if there are none (or any is not a
    /// finite number).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            // nearest rank: ceil(q * n) - 1
            let r = (q * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Some(Summary {
            n: v.len(),
            min: v[0],
            median: rank(0.5),
            p99: rank(0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    /// A single measurement.
    pub fn single(v: f64) -> Summary {
        Summary {
            n: 1,
            min: v,
            median: v,
            p99: v,
            mean: v,
        }
    }
}

/// Time `f` `n` times, one sample (ns) per call.
pub fn sample_ns(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_nanos() as f64);
    }
    v
}

/// Time batches of `batch` calls of `f`, `rounds` times; one sample (ns per
/// call) per batch. For operations too short to time one by one.
pub fn batched_ns(rounds: usize, batch: usize, mut f: impl FnMut()) -> Vec<f64> {
    let batch = batch.max(1);
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.n, s.min, s.median, s.p99), (200, 1.0, 100.0, 198.0));
        assert_eq!(s.mean, 100.5);
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.min, s.median, s.p99), (1.0, 3.0, 5.0));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }
}
