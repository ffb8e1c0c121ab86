//! Lines of real GPIO chips, through the kernel's GPIO character device (uAPI v2, by
//! `gpiocdev`). A line is requested once, when the node starts, and held for as long as the
//! node runs: the kernel then refuses it to every other process, and an output keeps the
//! level the guest last set between pods.
//!
//! Inputs are requested with edge detection on both edges; [`follow`] turns the kernel's
//! edge events into the line's level and edge counts, so a guest waiting on a pin sleeps in
//! the reactor like any socket.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::Line;
use crate::registry::{Device, Peripherals};
use peripherals_spec::Direction;

/// A line requested from the kernel.
#[derive(Debug)]
pub(crate) struct Chardev {
    request: gpiocdev::Request,
    offset: u32,
    /// Held across setting the line and recording its level, so two instances setting it at
    /// once cannot leave the recorded level other than the chip's.
    driving: std::sync::Mutex<()>,
}

fn value(high: bool) -> Value {
    if high { Value::Active } else { Value::Inactive }
}

impl Chardev {
    /// Requests line `offset` of `chip`; with the level it is at (an output starts low:
    /// some chips cannot read their outputs back).
    pub(super) fn request(
        chip: &Path,
        offset: u32,
        direction: Direction,
        consumer: &str,
    ) -> Result<(Self, bool), gpiocdev::Error> {
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip)
            .with_consumer(consumer)
            .with_line(offset);
        match direction {
            Direction::Out => builder.as_output(Value::Inactive),
            Direction::In => builder
                .as_input()
                .with_edge_detection(EdgeDetection::BothEdges),
        };
        let request = builder.request()?;
        let high = match direction {
            Direction::Out => false,
            Direction::In => request.value(offset)? == Value::Active,
        };
        let chardev = Self {
            request,
            offset,
            driving: std::sync::Mutex::new(()),
        };
        Ok((chardev, high))
    }

    /// Sets the line, then runs `record` (which records the level) before another set can
    /// start.
    pub(super) fn set(&self, high: bool, record: impl FnOnce()) -> Result<(), gpiocdev::Error> {
        let _driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
        self.request.set_value(self.offset, value(high))?;
        record();
        Ok(())
    }

    /// The line's level now, read from the chip.
    fn level(&self) -> Result<bool, gpiocdev::Error> {
        Ok(self.request.value(self.offset)? == Value::Active)
    }
}

/// Why following a line stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The line's file descriptor could not join the reactor.
    #[error("cannot wait on the line: {0}")]
    Reactor(std::io::Error),
    /// The kernel failed a read of the line or its events (the chip went away).
    #[error("reading the line: {0}")]
    Line(#[from] gpiocdev::Error),
}

/// Keeps a real input line's level and edge counts in step with the chip until `cancel`
/// fires; returns at once for a simulated line. An error means the line can no longer be
/// read.
pub async fn follow(line: Arc<Line>, cancel: CancellationToken) -> Result<(), FollowError> {
    let Some(chardev) = &line.chardev else {
        return Ok(());
    };
    // SAFETY: the request owns the descriptor, which stays open and the same for as long as
    // the request lives; the `AsyncFd` holds a borrow of it, so it is dropped first.
    let fd =
        unsafe { AsyncFd::register_with_interest(chardev.request.as_fd(), Interest::READABLE) }
            .map_err(|err| FollowError::Reactor(err.into()))?;
    let mut last_seqno: Option<u32> = None;
    loop {
        let mut ready = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ready = fd.readable() => ready.map_err(FollowError::Reactor)?,
        };
        // Every edge the kernel queued counts; `has_edge_event` polls without blocking, so
        // the read after it never waits.
        let mut lost = false;
        while chardev.request.has_edge_event()? {
            let event = chardev.request.read_edge_event()?;
            lost |= last_seqno.is_some_and(|last| event.line_seqno != last.wrapping_add(1));
            last_seqno = Some(event.line_seqno);
            line.observe(event.kind == EdgeKind::Rising);
        }
        // Events the kernel's buffer dropped (a gap in the sequence): the level itself, read
        // from the chip, so the line still ends where it is. Only then, since on an expander
        // the read is a bus transfer.
        if lost {
            line.observe(chardev.level()?);
        }
        ready.clear_ready();
    }
}

/// Follows every real input line of `peripherals` until `cancel` fires. A line that can no
/// longer be read is unplugged (out of the node's capacity, its pod told) until the node
/// restarts.
pub async fn follow_inputs(peripherals: Arc<Peripherals>, cancel: CancellationToken) {
    let mut lines = tokio::task::JoinSet::new();
    for (label, device) in peripherals.devices() {
        if let Device::GpioIn(line) = device.as_ref()
            && !line.is_simulated()
        {
            let (label, line, cancel) = (label.clone(), line.clone(), cancel.clone());
            lines.spawn(async move { (label, follow(line, cancel).await) });
        }
    }
    while let Some(done) = lines.join_next().await {
        if let Ok((label, Err(err))) = done {
            tracing::warn!(device = %label, %err, "cannot follow the GPIO line");
            peripherals.set_present(&label, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Where the gpio-sim module's configfs directory is when it is loaded.
    const GPIO_SIM: &str = "/sys/kernel/config/gpio-sim";

    #[test]
    fn a_chip_that_is_not_there_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gpiochip7");
        let err = Line::open(&missing, 3, Direction::Out, "wasmlet:fan").unwrap_err();
        assert!(err.to_string().contains("gpiochip7"), "{err}");
        // A file that is not a GPIO chip is refused too, not written to.
        let file = dir.path().join("gpiochip8");
        std::fs::write(&file, "not a chip").unwrap();
        assert!(Line::open(&file, 3, Direction::In, "wasmlet:button").is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a chip");
    }

    /// Against the kernel's simulated chip: run by `e2e/test` where the kernel has gpio-sim
    /// and wasmlet runs as root, reported there as skipped (with why) elsewhere.
    #[tokio::test]
    #[ignore = "needs root and the gpio-sim kernel module; e2e/test runs it where they are"]
    async fn kernel_lines_are_driven_and_followed_through_the_character_device() {
        assert!(
            Path::new(GPIO_SIM).is_dir(),
            "the gpio-sim module is not loaded ({GPIO_SIM} is missing)"
        );
        let sim = gpiosim::Simpleton::new(8);
        let chip = sim.dev_path().clone();

        let fan = Line::open(&chip, 3, Direction::Out, "wasmlet:fan").unwrap();
        assert!(!fan.is_simulated());
        assert_eq!(sim.get_level(3).unwrap(), gpiosim::Level::Low);
        fan.set(true).unwrap();
        assert_eq!(sim.get_level(3).unwrap(), gpiosim::Level::High);
        assert!(fan.is_high());
        fan.set(false).unwrap();
        assert_eq!(sim.get_level(3).unwrap(), gpiosim::Level::Low);
        // Held while the node runs: nobody else gets the line.
        assert!(Line::open(&chip, 3, Direction::Out, "someone-else").is_err());

        sim.pulldown(5).unwrap();
        let button = Arc::new(Line::open(&chip, 5, Direction::In, "wasmlet:button").unwrap());
        assert!(!button.is_high());
        let cancel = CancellationToken::new();
        let following = tokio::spawn(follow(button.clone(), cancel.clone()));
        let rises = button.edges(true);
        let falls = button.edges(false);
        sim.pullup(5).unwrap();
        tokio::time::timeout(Duration::from_secs(5), button.wait_for_edge(true, rises))
            .await
            .expect("the rise reaches the line");
        assert!(button.is_high());
        sim.pulldown(5).unwrap();
        tokio::time::timeout(Duration::from_secs(5), button.wait_for_edge(false, falls))
            .await
            .expect("the fall reaches the line");
        assert!(!button.is_high());
        cancel.cancel();
        following.await.unwrap().unwrap();
    }
}
