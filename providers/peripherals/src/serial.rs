//! A serial port in raw mode, read and written without blocking through tokio's reactor:
//! a real one (a tty such as `/dev/ttyUSB0`, at the speed `--device` gives), or a simulated
//! one, a pseudo-terminal pair whose master the guest has and whose slave the outside opens
//! (its path is in the simulator's file for the port, `/dev/pts/N`) as it would open
//! `/dev/ttyUSB0`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use rustix::termios::ControlModes;
use tokio::io::unix::AsyncFd;

/// The most read in one call: the guest's `max` is not trusted.
pub const MAX_READ: u64 = 64 * 1024;

/// One serial port.
#[derive(Debug)]
pub struct Serial {
    /// What the guest reads and writes: the tty, or the pty's master.
    port: AsyncFd<OwnedFd>,
    /// A pty's slave, held open so the master never reads end-of-file while the outside
    /// has the port closed; none for a tty.
    slave: Option<OwnedFd>,
    /// The tty's path, or the pty slave's, which the outside opens.
    path: PathBuf,
    present: std::sync::atomic::AtomicBool,
}

/// What went wrong on the port.
#[derive(Debug, thiserror::Error)]
#[error("serial port: {0}")]
pub struct SerialError(#[from] std::io::Error);

impl Serial {
    /// The tty at `path`, in raw mode, at `baud` bits per second (or the speed it has);
    /// must be called within the tokio runtime. It is never the node's controlling terminal.
    pub fn open_tty(path: &Path, baud: Option<u32>) -> Result<Self, SerialError> {
        let io = |errno: Errno| SerialError(errno.into());
        let tty = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        if !rustix::termios::isatty(&tty) {
            return Err(SerialError(std::io::Error::other(format!(
                "{} is not a terminal",
                path.display()
            ))));
        }
        // Exclusive: no other process opens it while the node holds it.
        rustix::termios::ioctl_tiocexcl(&tty).map_err(io)?;
        let mut termios = rustix::termios::tcgetattr(&tty).map_err(io)?;
        termios.make_raw();
        // Receive, ignore the modem's carrier (a dropped carrier would otherwise hang the port
        // up for good), no hardware flow control a three-wire cable cannot do.
        termios.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
        termios.control_modes -= ControlModes::CRTSCTS;
        if let Some(baud) = baud {
            termios.set_speed(baud).map_err(io)?;
        }
        rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &termios)
            .map_err(io)?;
        Self::register(tty, None, path.to_path_buf())
    }

    /// A new pty pair; must be called within the tokio runtime.
    pub fn simulated() -> Result<Self, SerialError> {
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
        Self::register(master, Some(slave), path)
    }

    fn register(port: OwnedFd, slave: Option<OwnedFd>, path: PathBuf) -> Result<Self, SerialError> {
        // SAFETY: an `OwnedFd` keeps its descriptor open, and names the same one, for as long
        // as it is owned; the `AsyncFd` owns it until it is dropped.
        let port = unsafe { AsyncFd::register(port) }
            .map_err(|err| SerialError(std::io::Error::other(err.to_string())))?;
        Ok(Self {
            port,
            slave,
            path,
            present: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether the port is the simulator's pty pair.
    pub fn is_simulated(&self) -> bool {
        self.slave.is_some()
    }

    /// The port's path: the tty, or the pty slave the outside opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the port is plugged in.
    pub fn presence(&self) -> &std::sync::atomic::AtomicBool {
        &self.present
    }

    /// Writes what the port takes now.
    pub fn write(&self, data: &[u8]) -> Result<usize, SerialError> {
        match rustix::io::write(self.port.get_ref(), data) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN) => Ok(0),
            Err(errno) => Err(SerialError(errno.into())),
        }
    }

    /// Up to `max` bytes that have arrived (at most 64 KiB). A tty that reads end-of-file
    /// was hung up (its adapter unplugged): it is marked unplugged, so a guest waiting on it
    /// waits rather than spins.
    pub fn read(&self, max: u64) -> Result<Vec<u8>, SerialError> {
        let mut buffer = vec![0; max.min(MAX_READ) as usize];
        match rustix::io::read(self.port.get_ref(), &mut buffer) {
            Ok(0) if !buffer.is_empty() && !self.is_simulated() => {
                self.present
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Err(SerialError(std::io::Error::other(
                    "the serial port hung up",
                )))
            }
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
            let Ok(mut guard) = self.port.readable().await else {
                // The reactor is gone (the node is stopping): never ready, rather than
                // ready forever.
                return std::future::pending().await;
            };
            // The reactor's readiness may be stale (the guest read everything since): ask
            // the kernel, and wait again if there is nothing.
            let mut fds = [rustix::event::PollFd::new(
                self.port.get_ref(),
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
        let port = Serial::simulated().unwrap();
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

    #[tokio::test]
    async fn a_tty_is_opened_raw_at_its_speed_and_carries_bytes_both_ways() {
        // A pty's slave is a tty like /dev/ttyUSB0; its master is the device on the wire.
        let wire = Serial::simulated().unwrap();
        let tty = Serial::open_tty(wire.path(), Some(9600)).unwrap();
        assert!(!tty.is_simulated());
        let termios = rustix::termios::tcgetattr(tty.port.get_ref()).unwrap();
        assert_eq!(termios.input_speed(), 9600);
        assert_eq!(termios.output_speed(), 9600);
        assert_eq!(
            termios.local_modes & rustix::termios::LocalModes::ECHO,
            rustix::termios::LocalModes::empty(),
            "raw: no echo"
        );

        assert_eq!(tty.write(b"AT\r\n").unwrap(), 4);
        tokio::time::timeout(Duration::from_secs(5), wire.readable())
            .await
            .unwrap();
        assert_eq!(wire.read(16).unwrap(), b"AT\r\n", "no CR/LF translation");
        assert_eq!(wire.write(b"OK\r\n").unwrap(), 4);
        tokio::time::timeout(Duration::from_secs(5), tty.readable())
            .await
            .unwrap();
        assert_eq!(tty.read(16).unwrap(), b"OK\r\n");

        // Not a terminal, or not there: refused with the path.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ttyUSB9");
        std::fs::write(&file, "").unwrap();
        let err = Serial::open_tty(&file, None).unwrap_err().to_string();
        assert!(err.contains("is not a terminal"), "{err}");
        assert!(Serial::open_tty(&dir.path().join("ttyUSB8"), None).is_err());
    }
}
