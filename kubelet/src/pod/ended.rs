//! The UIDs whose worker has ended, so that a late or replayed event for a pod that was just
//! deleted cannot start a second worker for it (the kubelet's pod workers keep the same
//! record). Bounded: the oldest are forgotten first, long after any late event.

use std::collections::{HashSet, VecDeque};

/// How many ended UIDs are remembered.
const REMEMBERED: usize = 4096;

/// A bounded set of ended pod UIDs.
#[derive(Debug, Default)]
pub(super) struct Ended {
    order: VecDeque<String>,
    uids: HashSet<String>,
}

impl Ended {
    pub(super) fn insert(&mut self, uid: &str) {
        if !self.uids.insert(uid.to_string()) {
            return;
        }
        self.order.push_back(uid.to_string());
        if self.order.len() > REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.uids.remove(&oldest);
        }
    }

    pub(super) fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_uids_are_remembered_up_to_the_bound_oldest_first_out() {
        let mut ended = Ended::default();
        for i in 0..=REMEMBERED {
            ended.insert(&format!("u{i}"));
        }
        ended.insert("u5");
        assert!(!ended.contains("u0"), "the oldest went first");
        assert!(ended.contains("u1") && ended.contains(&format!("u{REMEMBERED}")));
        assert_eq!(ended.order.len(), REMEMBERED);
    }
}
