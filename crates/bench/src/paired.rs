//! Paired, interleaved measurement of a candidate against its baseline.
//!
//! Criterion measures one benchmark after another, seconds apart; on a shared machine the
//! background load drifts in between, and the ratio of two medians taken at different times can
//! be off by 50 %. Here the candidate and its baseline run in short alternating blocks (in the
//! order A B B A, which cancels a linear drift within a round), each round gives one ratio, and
//! the result is the median over the rounds: the ratio is measured under the same conditions on
//! both sides.

use std::time::Duration;

/// The outcome of a paired comparison.
#[derive(Clone, Debug)]
pub struct Paired {
    /// What was compared, e.g. `access/32B/1-thread/secret-anonymous`.
    pub name: String,
    /// What it was compared to.
    pub baseline: String,
    /// The median over rounds of candidate time / baseline time.
    pub ratio: f64,
    /// The lower and upper quartiles of the per-round ratios.
    pub quartiles: (f64, f64),
    /// The median time per operation of the candidate, in nanoseconds.
    pub candidate_ns: f64,
    /// The median time per operation of the baseline, in nanoseconds.
    pub baseline_ns: f64,
    /// Rounds measured.
    pub rounds: usize,
}

fn median(values: &mut [f64]) -> f64 {
    quantile(values, 0.5)
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let position = q * (values.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    values[low] + (values[high] - values[low]) * (position - low as f64)
}

/// Compares `candidate` with `baseline`: each is a function that performs `n` operations and
/// returns the time they took. Runs `rounds` rounds of A B B A blocks of `block` operations
/// each, after one untimed warm-up round.
pub fn compare(
    name: &str,
    baseline_name: &str,
    rounds: usize,
    block: u64,
    mut candidate: impl FnMut(u64) -> Duration,
    mut baseline: impl FnMut(u64) -> Duration,
) -> Paired {
    candidate(block);
    baseline(block);
    let per_op = |d: Duration| d.as_secs_f64() * 1e9 / block as f64;
    let (mut ratios, mut a_times, mut b_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let a1 = per_op(candidate(block));
        let b1 = per_op(baseline(block));
        let b2 = per_op(baseline(block));
        let a2 = per_op(candidate(block));
        let (a, b) = ((a1 + a2) / 2.0, (b1 + b2) / 2.0);
        ratios.push(a / b);
        a_times.push(a);
        b_times.push(b);
    }
    Paired {
        name: name.to_string(),
        baseline: baseline_name.to_string(),
        ratio: median(&mut ratios),
        quartiles: (quantile(&mut ratios, 0.25), quantile(&mut ratios, 0.75)),
        candidate_ns: median(&mut a_times),
        baseline_ns: median(&mut b_times),
        rounds,
    }
}

impl Paired {
    /// One JSON object (no dependencies: the fields are numbers and plain names).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"name\": \"{}\", \"baseline\": \"{}\", \"ratio\": {:.4}, \"q1\": {:.4}, \
             \"q3\": {:.4}, \"candidate_ns\": {:.1}, \"baseline_ns\": {:.1}, \"rounds\": {}}}",
            self.name,
            self.baseline,
            self.ratio,
            self.quartiles.0,
            self.quartiles.1,
            self.candidate_ns,
            self.baseline_ns,
            self.rounds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twice_slower_candidate_has_ratio_two() {
        let r = compare(
            "a",
            "b",
            5,
            10,
            |n| Duration::from_nanos(20 * n),
            |n| Duration::from_nanos(10 * n),
        );
        assert!((r.ratio - 2.0).abs() < 1e-9);
        assert!((r.candidate_ns - 20.0).abs() < 1e-9);
    }
}
