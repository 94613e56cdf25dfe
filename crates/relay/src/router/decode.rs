//! Frames as read from a stream, decoded before the router sees them: decoding needs no router
//! state, so a shell that shares the router between tasks does it outside its lock.

use bytes::Bytes;
use hotline_proto::wire::{self, Frame};

/// A whole frame as read from a stream (length prefix included), and what it decodes to:
/// decoding needs no router state, so the shell does it before taking its lock.
#[derive(Debug)]
pub struct Decoded {
    pub(super) bytes: Bytes,
    /// The frame, or why it is malformed (the detail of the `Malformed` refusal).
    pub(super) frame: Result<Frame, String>,
}

impl Decoded {
    /// Decodes `bytes`; a frame followed by anything is malformed.
    pub fn new(bytes: Bytes) -> Self {
        let frame = match wire::decode_frame(&bytes) {
            Ok((frame, used)) if used == bytes.len() => Ok(frame),
            Ok((_, used)) => Err(format!("{} bytes after the frame", bytes.len() - used)),
            Err(e) => Err(e.to_string()),
        };
        Self { bytes, frame }
    }
}
