//! The stages of a pod's first start, timed and logged once as one line when its containers
//! first all run, so where a start spends its time can be read from the node's log (the
//! benchmark reads it there).

use std::fmt;
use std::time::{Duration, Instant};

/// Stages in the order they end: each covers the time since the previous one ended.
#[derive(Debug)]
pub(crate) struct StartTrace {
    began: Instant,
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl StartTrace {
    /// A trace whose clock started at `began`: when the watch event for the pod arrived.
    pub(crate) fn new(began: Instant) -> Self {
        Self {
            began,
            last: began,
            stages: Vec::new(),
        }
    }

    /// Ends stage `name` now. A stage met again (a retried pull) adds to its time.
    pub(crate) fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    /// Ends stage `name` at `at`. Stages that ran side by side (volumes and pulls) are
    /// marked in the order they ended, each covering the time since the one before ended.
    pub(crate) fn mark_at(&mut self, name: &'static str, at: Instant) {
        let now = at.max(self.last);
        let took = now.duration_since(self.last);
        self.last = now;
        match self.stages.iter_mut().find(|(stage, _)| *stage == name) {
            Some((_, total)) => *total += took,
            None => self.stages.push((name, took)),
        }
    }

    /// From the watch event to the last mark.
    pub(crate) fn total(&self) -> Duration {
        self.last.duration_since(self.began)
    }
}

/// `stage=1.234ms …`, the stages in order.
impl fmt::Display for StartTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, took)) in self.stages.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.3}ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_consecutive_and_a_repeated_stage_adds_up() {
        let began = Instant::now();
        let mut trace = StartTrace::new(began);
        trace.mark("admit");
        std::thread::sleep(Duration::from_millis(2));
        trace.mark("pull");
        trace.mark("start");
        std::thread::sleep(Duration::from_millis(2));
        trace.mark("pull");
        let names: Vec<&str> = trace.stages.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["admit", "pull", "start"]);
        let pull = trace.stages[1].1;
        assert!(
            pull >= Duration::from_millis(4),
            "both pulls count: {pull:?}"
        );
        let sum: Duration = trace.stages.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, trace.total(), "stages cover the whole start, once");
        let line = trace.to_string();
        assert!(line.starts_with("admit=") && line.contains(" pull=") && line.ends_with("ms"));
    }
}
