//! What Fleet should answer for the simulated fleet: each cluster's threshold
//! computed independently of the core (contract §4, without EMA, so a run
//! checks it with `threshold.ema_alpha` 1).

use crate::agent::Fleet;
use std::collections::BTreeMap;

/// The MAD scale factor of the contract.
const MAD_SCALE: f64 = 1.4826;

/// Threshold by cluster id over the first `covered` nodes, for clusters with at least `quorum` of them.
pub fn thresholds(fleet: &Fleet, covered: u64, k: f64, quorum: usize) -> BTreeMap<String, f64> {
    let mut scores: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for index in 0..covered.min(fleet.nodes) {
        let agent = fleet.agent(index);
        scores.entry(agent.cluster_id).or_default().push(agent.score);
    }
    scores
        .into_iter()
        .filter(|(_, s)| s.len() >= quorum)
        .filter_map(|(cluster, mut s)| {
            let median = median(&mut s)?;
            let mut deviations: Vec<f64> = s.iter().map(|x| (x - median).abs()).collect();
            let mad = self::median(&mut deviations)?;
            Some((cluster, (median - k * MAD_SCALE * mad).clamp(0.1, 0.99)))
        })
        .collect()
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quorum() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let fleet = Fleet { nodes: 12, clusters: 2 };
        assert_eq!(thresholds(&fleet, 12, 2.0, 5).len(), 2);
        assert_eq!(thresholds(&fleet, 8, 2.0, 5).len(), 0, "4 nodes per cluster: no quorum");
    }
}
