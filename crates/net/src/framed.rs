//! Length-prefixed frames on quinn streams.
//!
//! Each unidirectional lane stream starts with one byte naming its lane ([`LaneTag`]); the
//! bidirectional control stream starts directly with frames. A frame is read whole (prefix
//! included) so it can be forwarded byte for byte or handed to the engine.

use hotline_proto::Precedence;
use hotline_proto::wire::{self, DecodeError, LEN_PREFIX};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("stream read failed: {}", with_causes(.0))]
    Stream(quinn::ReadExactError),
    /// The length prefix was out of bounds.
    #[error(transparent)]
    Frame(#[from] DecodeError),
}

// quinn's error is in the message, not a `source()`: anyhow's `{:#}` would print it twice.
impl From<quinn::ReadExactError> for ReadError {
    fn from(e: quinn::ReadExactError) -> Self {
        Self::Stream(e)
    }
}

/// An error and every cause under it, `: `-separated. quinn's "connection lost" keeps *why*
/// (a TLS alert such as a revoked certificate, a close reason) in its `source()`, which the
/// operator needs to read.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The first byte on a unidirectional lane stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneTag(pub Precedence);

impl LaneTag {
    /// Reads the lane byte at the start of a stream.
    pub async fn read(stream: &mut quinn::RecvStream) -> Result<Self, ReadError> {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await?;
        Precedence::from_index(b[0] as usize)
            .map(Self)
            .ok_or_else(|| {
                ReadError::Frame(DecodeError::Malformed(format!("unknown lane tag {}", b[0])))
            })
    }

    /// Writes the lane byte at the start of a stream.
    pub async fn write(self, stream: &mut quinn::SendStream) -> Result<(), quinn::WriteError> {
        stream.write_all(&[self.0.index() as u8]).await
    }
}

/// Reads one whole frame (prefix included). `Ok(None)` on a cleanly finished stream.
pub async fn read_frame(stream: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, ReadError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::frame_len(prefix)?;
    let mut frame = vec![0u8; LEN_PREFIX + len];
    frame[..LEN_PREFIX].copy_from_slice(&prefix);
    stream.read_exact(&mut frame[LEN_PREFIX..]).await?;
    Ok(Some(frame))
}

/// Writes one whole frame.
pub async fn write_frame(
    stream: &mut quinn::SendStream,
    frame: &[u8],
) -> Result<(), quinn::WriteError> {
    stream.write_all(frame).await
}
