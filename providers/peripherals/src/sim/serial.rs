//! A simulated serial port: a pseudo-terminal pair in raw mode. The guest reads and writes
//! the master side; the outside opens the slave, whose path is in the simulator's file for
//! the port (`/dev/pts/N`), as it would open `/dev/ttyUSB0`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use tokio::io::unix::AsyncFd;

/// The most read in one call: the guest's `max` is not trusted.
pub const MAX_READ: u64 = 64 * 1024;

/// One pty pair: the master for the guest, and the slave held open so the master never
/// reads end-of-file while the outside has the port closed.
#[derive(Debug)]
pub struct SimSerial {
    master: AsyncFd<OwnedFd>,
    _slave: OwnedFd,
    path: PathBuf,
    present: std::sync::atomic::AtomicBool,
}

/// What went wrong on the port.
#[derive(Debug, thiserror::Error)]
#[error("serial port: {0}")]
pub struct SerialError(#[from] std::io::Error);

impl SimSerial {
    /// A new pty pair; must be called within the tokio runtime.
    pub fn open() -> Result<Self, SerialError> {
        let io = |errno: Errno| SerialError(errno.into());
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).map_err(io)?;
        rustix::pty::grantpt(&master).map_err(io)?;
        rustix::pty::unlockpt(&master).map_err(io)?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(io)?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        // Raw: bytes pass as they are, no echo, no line editing, no CR/LF translation.
        let mut termios = rustix::termios::tcgetattr(&slave).map_err(io)?;
        termios.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)
            .map_err(io)?;
        let flags = rustix::fs::fcntl_getfl(&master).map_err(io)?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK).map_err(io)?;
        // SAFETY: an `OwnedFd` keeps its descriptor open, and names the same one, for as long
        // as it is owned; the `AsyncFd` owns it until it is dropped.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|err| SerialError(std::io::Error::other(err.to_string())))?;
        Ok(Self {
            master,
            _slave: slave,
            path,
            present: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The slave's path, which the outside opens.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the port is plugged in.
    pub fn presence(&self) -> &std::sync::atomic::AtomicBool {
        &self.present
    }

    /// Writes what the port takes now.
    pub fn write(&self, data: &[u8]) -> Result<usize, SerialError> {
        match rustix::io::write(self.master.get_ref(), data) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN) => Ok(0),
            Err(errno) => Err(SerialError(errno.into())),
        }
    }

    /// Up to `max` bytes that have arrived (at most 64 KiB).
    pub fn read(&self, max: u64) -> Result<Vec<u8>, SerialError> {
        let mut buffer = vec![0; max.min(MAX_READ) as usize];
        match rustix::io::read(self.master.get_ref(), &mut buffer) {
            Ok(n) => {
                buffer.truncate(n);
                Ok(buffer)
            }
            Err(Errno::AGAIN) => Ok(Vec::new()),
            Err(errno) => Err(SerialError(errno.into())),
        }
    }

    /// Waits until there is something to read.
    pub async fn readable(&self) {
        loop {
            let Ok(mut guard) = self.master.readable().await else {
                // The reactor is gone (the node is stopping): never ready, rather than
                // ready forever.
                return std::future::pending().await;
            };
            // The reactor's readiness may be stale (the guest read everything since): ask
            // the kernel, and wait again if there is nothing.
            let mut fds = [rustix::event::PollFd::new(
                self.master.get_ref(),
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&zero)) {
                Ok(0) => guard.clear_ready(),
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bytes_cross_the_pair_both_ways_unchanged() {
        let port = SimSerial::open().unwrap();
        let mut outside = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(port.path())
            .unwrap();
        assert!(port.read(16).unwrap().is_empty(), "nothing yet");

        // Raw mode: a newline is not turned into CR LF, and nothing is echoed back.
        outside.write_all(b"ping\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), port.readable())
            .await
            .unwrap();
        assert_eq!(port.read(16).unwrap(), b"ping\n");
        assert_eq!(port.write(b"pong\n").unwrap(), 5);
        let mut answer = [0; 5];
        outside.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"pong\n");
        assert!(port.read(16).unwrap().is_empty(), "no echo of pong");
        // A huge `max` is bounded.
        outside.write_all(&[7; 100]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), port.readable())
            .await
            .unwrap();
        assert_eq!(port.read(u64::MAX).unwrap().len(), 100);
    }
}
