//! An export read from a named FIFO (`mkfifo`: another program writes it while kfr reads), and
//! the two waits a regular file never has: open(2) blocks until a program opens the FIFO for
//! writing, read(2) until the writer sends more. Both answer SIGINT/SIGTERM within a second, as
//! every wait of the load does (docs/load.md "Interrupts"; issue 20: a load on a FIFO nobody
//! wrote to sat in open(2) and ignored SIGTERM).
//!
//! Nothing here decides what the load does with a stop: it hands back
//! [`LoadError::StoppedWaitingForInput`] (open) or an I/O error [`stopped_by`] recognises (read),
//! and the load turns either into that error before any job is created from the input.

use super::LoadError;
use super::exec::StopFlag;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a wait for the input looks whether a signal asked the load to stop.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Opens the input at `path`. A FIFO is opened by a thread of its own while this one looks at
/// `stop`: a signal ends the wait with [`LoadError::StoppedWaitingForInput`] (and lets the thread
/// go). Anything else, or without a stop flag (the dry run, where a signal ends the process), is
/// opened as it is.
pub fn open(path: &Path, stop: Option<&StopFlag>) -> Result<std::fs::File, LoadError> {
    let open_error = |source| LoadError::OpenInput {
        path: path.to_path_buf(),
        source,
    };
    let Some(stop) = stop.filter(|_| is_fifo(path)) else {
        return std::fs::File::open(path).map_err(open_error);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("kfr-open-input".into())
        .spawn(move || {
            // Nobody may be listening any more (the load stopped): then the file is dropped.
            let _ = tx.send(std::fs::File::open(&target));
        })
        .map_err(open_error)?;
    loop {
        match rx.recv_timeout(LOOK_EVERY) {
            Ok(opened) => return opened.map_err(open_error),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let signal = stop.load(Ordering::SeqCst);
                if signal != 0 {
                    release_opener(path);
                    return Err(LoadError::StoppedWaitingForInput {
                        file: path.to_path_buf(),
                        signal,
                        waiting: "no program has opened it for writing",
                    });
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(open_error(std::io::Error::other("the thread opening the input ended")));
            }
        }
    }
}

fn is_fifo(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Lets the thread blocked opening the FIFO go: an open for writing that does not wait pairs
/// with it and is closed at once, so the thread's open returns (and what it opened is dropped).
fn release_opener(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The stop that ended a read, carried inside the reader's I/O error.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {0} while waiting for the input's writer")]
struct Stopped(i32);

/// The signal that ended a read of an [`Input`], when that is what `e` is.
pub fn stopped_by(e: &std::io::Error) -> Option<i32> {
    e.get_ref()?.downcast_ref::<Stopped>().map(|s| s.0)
}

/// The input as the reader reads it. Anything but a regular file (a FIFO, a pipe) may keep a
/// read waiting for its writer: such a read first waits for data in slices of [`LOOK_EVERY`],
/// looking at the stop flag between them.
pub struct Input {
    file: std::fs::File,
    stop: Option<StopFlag>,
}

impl Input {
    pub fn new(file: std::fs::File, stop: Option<StopFlag>, regular: bool) -> Input {
        Input {
            file,
            stop: stop.filter(|_| !regular),
        }
    }

    /// Returns once a read will not wait (data, the writer gone, or an error for read(2) to
    /// report), or with [`Stopped`] when a signal asked the load to stop first.
    #[cfg(unix)]
    fn ready(&self, stop: &StopFlag) -> std::io::Result<()> {
        use std::os::unix::io::AsRawFd as _;
        loop {
            let mut fd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on the stack for a descriptor this `File` owns.
            let r = unsafe { libc::poll(&mut fd, 1, LOOK_EVERY.as_millis() as libc::c_int) };
            if r > 0 {
                return Ok(());
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let signal = stop.load(Ordering::SeqCst);
            if signal != 0 {
                return Err(std::io::Error::other(Stopped(signal)));
            }
        }
    }

    #[cfg(not(unix))]
    fn ready(&self, _stop: &StopFlag) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(stop) = &self.stop {
            self.ready(stop)?;
        }
        self.file.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("c.fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }

    /// The open of a FIFO nobody writes to ends when the stop flag is set (the signal handler's
    /// part), naming the file; the thread that waited in open(2) is let go.
    #[test]
    fn a_stop_ends_the_wait_for_a_writer() {
        let d = tempfile::tempdir().unwrap();
        let p = fifo(d.path());
        let stop: StopFlag = Default::default();
        let setter = stop.clone();
        let signal = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            setter.store(15, Ordering::SeqCst);
        });
        let err = open(&p, Some(&stop)).unwrap_err();
        signal.join().unwrap();
        assert!(
            matches!(&err, LoadError::StoppedWaitingForInput { signal: 15, file, .. } if file == &p),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("stopped by SIGTERM while waiting for the input"),
            "{err}"
        );
    }

    /// A writer that opened the FIFO and then sends nothing: the read ends at the stop, and the
    /// error says it was the stop.
    #[test]
    fn a_stop_ends_a_read_waiting_for_the_writer() {
        let d = tempfile::tempdir().unwrap();
        let p = fifo(d.path());
        let path = p.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(b"first line\n").unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        let stop: StopFlag = Default::default();
        let mut input = Input::new(open(&p, Some(&stop)).unwrap(), Some(stop.clone()), false);
        let mut buf = [0u8; 64];
        assert_eq!(input.read(&mut buf).unwrap(), 11);
        stop.store(2, Ordering::SeqCst);
        let err = input.read(&mut buf).unwrap_err();
        assert_eq!(stopped_by(&err), Some(2), "{err}");
        writer.join().unwrap();
    }
}
