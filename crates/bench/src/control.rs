//! A node's control socket split into a writer and a reader half, so one task can pace
//! requests onto it while another reads the answers.
//!
//! It speaks exactly `hotline_client::control`'s JSON-lines protocol with that module's types;
//! it exists because `ControlClient` keeps both halves in one value and its `next` is not
//! cancellation-safe, so it cannot be read and written from two tasks or in a `select!`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use hotline_client::control::{Request, RequestLine, ResponseLine};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Connects to a node's control socket.
pub async fn connect(socket: &Path) -> Result<(Writer, Reader)> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("node is not answering on {}", socket.display()))?;
    let (r, w) = stream.into_split();
    Ok((
        Writer {
            inner: w,
            next_tag: 1,
            buf: Vec::new(),
        },
        Reader {
            inner: BufReader::with_capacity(256 * 1024, r),
            line: String::new(),
        },
    ))
}

/// The writing half: requests are queued with [`Writer::push`] and written by
/// [`Writer::flush`], so a burst goes out in one write.
#[derive(Debug)]
pub struct Writer {
    inner: OwnedWriteHalf,
    next_tag: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// Queues a request; returns its tag (1, 2, 3, … on this connection).
    pub fn push(&mut self, request: Request) -> Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        serde_json::to_writer(&mut self.buf, &RequestLine { tag, request })?;
        self.buf.push(b'\n');
        Ok(tag)
    }

    /// The tag the next [`Writer::push`] returns.
    pub fn next_tag(&self) -> u64 {
        self.next_tag
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner
            .write_all(&self.buf)
            .await
            .context("writing to a node's control socket")?;
        self.buf.clear();
        Ok(())
    }
}

/// The reading half.
#[derive(Debug)]
pub struct Reader {
    inner: BufReader<OwnedReadHalf>,
    line: String,
}

impl Reader {
    /// The next response line; `None` when the node closed the connection. Not
    /// cancellation-safe: keep it out of `select!`.
    pub async fn next(&mut self) -> Result<Option<ResponseLine>> {
        self.line.clear();
        let n = self
            .inner
            .read_line(&mut self.line)
            .await
            .context("reading from a node's control socket")?;
        if n == 0 {
            return Ok(None);
        }
        match serde_json::from_str(&self.line) {
            Ok(l) => Ok(Some(l)),
            Err(e) => bail!("bad response from node ({e}): {}", self.line.trim_end()),
        }
    }
}
