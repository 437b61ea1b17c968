//! How a node rates the holders it resolves dossiers from (sans-IO: the caller passes the
//! time).
//!
//! A locator entry is a claim: "I hold data for this patient". A holder that answers a
//! fetch for a patient it claimed with **nothing** made a false claim: the index sent a
//! resolver to it for no data, and a node that does this on purpose can steer dossier
//! traffic or hide that another holder is missing. A holder whose answer does not match its
//! entry's commitment but is not empty is only *unverified*: its data changed since it
//! published, which is routine, so that does not count against it.
//!
//! False claims decay with a half-life of [`FALSE_CLAIM_HALF_LIFE_MS`], so a holder that
//! lost its store and recovered is forgiven; each recent one lowers its gossip peer score by
//! [`SCORE_PER_FALSE_CLAIM`] (the application-specific part of gossipsub's score, weight 1).
//! With the node's thresholds (publish −50, graylist −80), 5 recent false claims stop this
//! node from publishing to it and 8 make this node ignore its gossip.

/// Half-life of a false claim's weight.
pub const FALSE_CLAIM_HALF_LIFE_MS: u64 = 10 * 60 * 1000;
/// Gossip peer score per (decayed) recent false claim.
pub const SCORE_PER_FALSE_CLAIM: f64 = -10.0;
/// The score never goes below this (gossipsub's graylist is at −80).
pub const LOWEST_SCORE: f64 = -200.0;

/// One holder's record as seen by this node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HolderStanding {
    /// Decayed weight of false claims as of `updated_ms`.
    weight: f64,
    updated_ms: u64,
    /// False claims ever counted.
    pub false_claims: u64,
    /// Answers that held data for the patient (verified or not).
    pub answers_with_data: u64,
    /// Answers with data that did not match the holder's locator entry.
    pub unverified_answers: u64,
}

/// What a holder's answer to a fetch showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Data, matching its entry.
    Verified,
    /// Data, not matching its entry (it changed since it published).
    Unverified,
    /// Nothing, for a patient its entry claims.
    Nothing,
}

impl HolderStanding {
    fn decayed(&self, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64;
        self.weight * 0.5f64.powf(elapsed / FALSE_CLAIM_HALF_LIFE_MS as f64)
    }

    /// Counts one answer.
    pub fn record(&mut self, answer: Answer, now_ms: u64) {
        match answer {
            Answer::Verified => self.answers_with_data += 1,
            Answer::Unverified => {
                self.answers_with_data += 1;
                self.unverified_answers += 1;
            }
            Answer::Nothing => {
                self.weight = self.decayed(now_ms) + 1.0;
                self.updated_ms = now_ms;
                self.false_claims += 1;
            }
        }
    }

    /// False claims, weighted by how recent they are.
    pub fn recent_false_claims(&self, now_ms: u64) -> f64 {
        self.decayed(now_ms)
    }

    /// The holder's application-specific gossip score (0 for a holder with no recent false
    /// claims, never below [`LOWEST_SCORE`]).
    pub fn gossip_score(&self, now_ms: u64) -> f64 {
        (SCORE_PER_FALSE_CLAIM * self.decayed(now_ms)).max(LOWEST_SCORE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_answers_count_and_they_fade() {
        let mut standing = HolderStanding::default();
        standing.record(Answer::Verified, 0);
        standing.record(Answer::Unverified, 0);
        assert_eq!(standing.gossip_score(0), 0.0);
        for _ in 0..8 {
            standing.record(Answer::Nothing, 1_000);
        }
        assert_eq!(standing.false_claims, 8);
        assert!((standing.gossip_score(1_000) + 80.0).abs() < 1e-9);
        let later = 1_000 + FALSE_CLAIM_HALF_LIFE_MS;
        assert!((standing.gossip_score(later) + 40.0).abs() < 1e-9);
        for _ in 0..100 {
            standing.record(Answer::Nothing, later);
        }
        assert_eq!(standing.gossip_score(later), LOWEST_SCORE);
    }
}
