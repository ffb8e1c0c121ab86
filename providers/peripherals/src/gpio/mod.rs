//! A GPIO line: a level the guest drives (output) or reads (input), with waiting for levels
//! and edges. A simulated line is read and driven from outside through the simulator's
//! directory (see `sim::mirror`); a line of a real chip is the kernel's, through the GPIO
//! character device (see [`chardev`]).

pub mod chardev;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

use peripherals_spec::Direction;

/// A line's level and how many times it has risen and fallen, so an edge is never missed
/// by a waiter that was away when it happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Level {
    high: bool,
    rises: u64,
    falls: u64,
}

/// One line's level, with waiting for levels and edges.
#[derive(Debug)]
pub struct Line {
    level: watch::Sender<Level>,
    present: AtomicBool,
    /// The kernel's line, for a line of a real chip.
    chardev: Option<chardev::Chardev>,
}

/// The kernel refused a line.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The chip has no such line, or it is taken, or the chip is not there.
    #[error("{}: {source}", chip.display())]
    Request {
        /// The chip's device file.
        chip: std::path::PathBuf,
        /// Why.
        source: gpiocdev::Error,
    },
    /// Driving the line failed.
    #[error("GPIO line: {0}")]
    Drive(#[from] gpiocdev::Error),
}

impl Line {
    /// A simulated line, low.
    pub fn simulated() -> Self {
        Self::at(false, None)
    }

    /// Line `offset` of the GPIO chip at `chip` (`/dev/gpiochip0`), requested from the kernel
    /// in `direction` for as long as this lives, in the name of `consumer` (what `gpioinfo`
    /// shows). An output starts inactive.
    pub fn open(
        chip: &Path,
        offset: u32,
        direction: Direction,
        consumer: &str,
    ) -> Result<Self, LineError> {
        let (chardev, high) = chardev::Chardev::request(chip, offset, direction, consumer)
            .map_err(|source| LineError::Request {
                chip: chip.to_path_buf(),
                source,
            })?;
        Ok(Self::at(high, Some(chardev)))
    }

    fn at(high: bool, chardev: Option<chardev::Chardev>) -> Self {
        Self {
            level: watch::Sender::new(Level {
                high,
                ..Level::default()
            }),
            present: AtomicBool::new(true),
            chardev,
        }
    }

    /// Whether the line is the simulator's, driven and read through its files.
    pub fn is_simulated(&self) -> bool {
        self.chardev.is_none()
    }

    /// Whether the line is plugged in.
    pub fn presence(&self) -> &AtomicBool {
        &self.present
    }

    /// Whether the line is high.
    pub fn is_high(&self) -> bool {
        self.level.borrow().high
    }

    /// How many times the line has risen (`rising`) or fallen so far.
    pub fn edges(&self, rising: bool) -> u64 {
        let level = *self.level.borrow();
        if rising { level.rises } else { level.falls }
    }

    /// Drives the line: the kernel's line first, for a real one, so what waiters see is what
    /// the chip does. Setting a line is one ioctl, which returns at once for a chip on the
    /// SoC; an expander on a slow bus takes one transfer.
    pub fn set(&self, high: bool) -> Result<(), LineError> {
        match &self.chardev {
            Some(chardev) => chardev.set(high, || self.observe(high))?,
            None => self.observe(high),
        }
        Ok(())
    }

    /// Records a level seen on the line (an edge from the kernel, the simulator's file);
    /// waiters wake only on a change.
    pub fn observe(&self, high: bool) {
        self.level.send_if_modified(|level| {
            if level.high == high {
                return false;
            }
            level.high = high;
            if high {
                level.rises = level.rises.wrapping_add(1);
            } else {
                level.falls = level.falls.wrapping_add(1);
            }
            true
        });
    }

    /// Waits until the line is at `high` (at once if it is).
    pub async fn wait_for(&self, high: bool) {
        let mut changes = self.level.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = changes.wait_for(|level| level.high == high).await;
    }

    /// Waits until the line has risen (`rising`) or fallen more than `seen` times: at once
    /// if it already has, however long ago.
    pub async fn wait_for_edge(&self, rising: bool, seen: u64) {
        let mut changes = self.level.subscribe();
        let _ = changes
            .wait_for(|level| {
                let count = if rising { level.rises } else { level.falls };
                count != seen
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_the_level_or_edge_they_wait_for() {
        let line = Arc::new(Line::simulated());
        assert!(!line.is_high());
        let waiting = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for(true).await }
        });
        let rises = line.edges(true);
        let edge = tokio::spawn({
            let line = line.clone();
            async move { line.wait_for_edge(true, rises).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        line.set(false).unwrap();
        tokio::task::yield_now().await;
        assert!(!edge.is_finished(), "setting the same level is no edge");
        line.observe(true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), edge)
            .await
            .unwrap()
            .unwrap();
        assert!(line.is_high());
        // Already there: no wait.
        line.wait_for(true).await;

        // A whole press while nobody waited is still seen by a waiter that noted the count
        // before it.
        let falls = line.edges(false);
        let rises = line.edges(true);
        line.set(false).unwrap();
        line.set(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), line.wait_for_edge(false, falls))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), line.wait_for_edge(true, rises))
            .await
            .unwrap();
    }
}
