//! Stdio of a container or exec process as the agent API exposes it: `WriteStdin`,
//! `ReadStdout`/`ReadStderr` (block until data; empty means end of stream), `CloseStdin`,
//! `TtyWinResize`. Plain processes get three pipes; terminal processes one pty master.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{watch, Mutex};

/// Largest chunk one `ReadStdout`/`ReadStderr` returns.
const MAX_READ: usize = 1 << 20;
/// VEOF in canonical mode: what `CloseStdin` sends to a terminal.
const EOT: u8 = 0x04;

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

enum Reader {
    Pipe(pipe::Receiver),
    Pty(tokio::fs::File),
    None,
}

enum Writer {
    Pipe(pipe::Sender),
    Pty(tokio::fs::File),
}

pub struct ProcessIo {
    stdin: Mutex<Option<Writer>>,
    stdout: Mutex<Reader>,
    stderr: Mutex<Reader>,
    pty: Option<OwnedFd>,
    /// How many outputs have not reached their end yet; each closes its descriptor there.
    open_outputs: watch::Sender<u8>,
}

impl ProcessIo {
    /// Three pipes; returns the ends the process gets (stdin read end, stdout and stderr
    /// write ends).
    pub fn pipes() -> io::Result<(ProcessIo, [OwnedFd; 3])> {
        let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let io = ProcessIo {
            stdin: Mutex::new(Some(Writer::Pipe(pipe::Sender::from_owned_fd(in_w)?))),
            stdout: Mutex::new(Reader::Pipe(pipe::Receiver::from_owned_fd(out_r)?)),
            stderr: Mutex::new(Reader::Pipe(pipe::Receiver::from_owned_fd(err_r)?)),
            pty: None,
            open_outputs: watch::Sender::new(2),
        };
        Ok((io, [in_r, out_w, err_w]))
    }

    /// A terminal: the pty master received from the container's console socket.
    pub fn pty(master: OwnedFd) -> io::Result<ProcessIo> {
        let reader = File::from(master.try_clone()?);
        let writer = File::from(master.try_clone()?);
        Ok(ProcessIo {
            stdin: Mutex::new(Some(Writer::Pty(tokio::fs::File::from_std(writer)))),
            stdout: Mutex::new(Reader::Pty(tokio::fs::File::from_std(reader))),
            stderr: Mutex::new(Reader::None),
            pty: Some(master),
            open_outputs: watch::Sender::new(1),
        })
    }

    pub async fn read_stdout(&self, len: usize) -> io::Result<Vec<u8>> {
        self.read(&self.stdout, len).await
    }

    pub async fn read_stderr(&self, len: usize) -> io::Result<Vec<u8>> {
        self.read(&self.stderr, len).await
    }

    /// Reads; at the end of the stream the reader's descriptor is closed at once (and every
    /// later read answers the end again).
    async fn read(&self, reader: &Mutex<Reader>, len: usize) -> io::Result<Vec<u8>> {
        let mut reader = reader.lock().await;
        let data = read(&mut reader, len).await?;
        if data.is_empty() && !matches!(*reader, Reader::None) {
            *reader = Reader::None;
            self.open_outputs.send_modify(|n| *n = n.saturating_sub(1));
        }
        Ok(data)
    }

    /// Until every output has been read to its end.
    pub async fn drained(&self) {
        let _ = self.open_outputs.subscribe().wait_for(|n| *n == 0).await;
    }

    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<usize> {
        let mut guard = self.stdin.lock().await;
        let res = match guard.as_mut() {
            Some(Writer::Pipe(w)) => w.write_all(data).await,
            Some(Writer::Pty(w)) => w.write_all(data).await.and(w.flush().await),
            None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed")),
        };
        res.map(|()| data.len())
    }

    /// Ends the process's input: closes the pipe, or sends end-of-file to a terminal.
    pub async fn close_stdin(&self) -> io::Result<()> {
        let mut guard = self.stdin.lock().await;
        if let Some(Writer::Pty(w)) = guard.as_mut() {
            w.write_all(&[EOT]).await?;
            w.flush().await?;
            return Ok(());
        }
        *guard = None;
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let Some(master) = &self.pty else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "process has no terminal"));
        };
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: `master` is an open pty master and `size` a valid winsize for the call.
        unsafe { set_window_size(master.as_raw_fd(), &size) }?;
        Ok(())
    }
}

async fn read(reader: &mut Reader, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len.clamp(1, MAX_READ)];
    let n = match reader {
        Reader::Pipe(r) => r.read(&mut buf).await?,
        // The slave side closing makes the master read fail with EIO: end of stream.
        Reader::Pty(r) => match r.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => return Err(e),
        },
        Reader::None => 0,
    };
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outputs_close_at_their_end_and_report_drained() {
        let (io, [_stdin, out_w, err_w]) = ProcessIo::pipes().expect("pipes");
        nix::unistd::write(&out_w, b"hi").expect("write");
        drop(out_w);
        assert_eq!(io.read_stdout(16).await.expect("read"), b"hi");
        assert!(io.read_stdout(16).await.expect("read").is_empty(), "end of stdout");
        assert!(matches!(*io.stdout.lock().await, Reader::None), "stdout's descriptor is closed at its end");
        let drained = io.drained();
        tokio::pin!(drained);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut drained).await.is_err(),
            "stderr is still open"
        );
        drop(err_w);
        assert!(io.read_stderr(16).await.expect("read").is_empty());
        assert!(io.read_stderr(16).await.expect("read").is_empty(), "the end again, from a closed reader");
        tokio::time::timeout(std::time::Duration::from_secs(5), drained).await.expect("both outputs drained");
    }
}
