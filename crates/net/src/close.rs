//! Why the relay closed a connection: the QUIC application close codes of the relay, shared so
//! that a node can tell an identity conflict from a restart or a protocol error.
//!
//! The relay closes with [`CloseReason::code`] and [`CloseReason::reason`] as the close reason;
//! a node reads the code back with [`CloseReason::from_code`] (or [`CloseReason::of`] on a
//! connection error). Codes are part of the protocol: never renumber one.

/// Why the relay closed a connection: the QUIC application close code, with the reason in
/// words as the close reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The relay is shutting down.
    Shutdown = 0,
    /// The certificate's endpoint is in no configured hotline.
    NotConfigured = 1,
    /// A newer connection with the same identity replaced this one. Kept for its code; the
    /// relay now says [`CloseReason::IdentityConflict`].
    Replaced = 2,
    /// The node broke the stream protocol (no hello, bad lane byte, broken framing, a relay
    /// stream stopped).
    ProtocolViolation = 3,
    /// A frame's length prefix exceeded the size limit.
    FrameTooLarge = 4,
    /// The client certificate names no endpoint.
    NoIdentity = 5,
    /// Another connection with the same identity arrived and took its place: two nodes share
    /// one identity (a copied configuration or a stolen key).
    IdentityConflict = 6,
    /// Refused: this identity flapped between connections, and the relay keeps the one it has
    /// for a back-off period.
    IdentityInUse = 7,
    /// Refused: too many connections with this identity are between their TLS handshake and
    /// their `Hello`. A node that says hello promptly never sees it; retry later.
    TooManyPending = 8,
    /// A configuration reload left this endpoint in no hotline: the relay no longer serves it.
    /// Its queued envelopes stay in the relay's store.
    Unpaired = 9,
    /// A configuration reload applied a CRL that revokes this connection's certificate.
    Revoked = 10,
}

impl CloseReason {
    const ALL: [Self; 11] = [
        Self::Shutdown,
        Self::NotConfigured,
        Self::Replaced,
        Self::ProtocolViolation,
        Self::FrameTooLarge,
        Self::NoIdentity,
        Self::IdentityConflict,
        Self::IdentityInUse,
        Self::TooManyPending,
        Self::Unpaired,
        Self::Revoked,
    ];

    /// The QUIC application error code.
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The close reason sent to the peer.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "relay shutting down",
            Self::NotConfigured => "endpoint is in no configured hotline",
            Self::Replaced => "replaced by a newer connection with the same identity",
            Self::ProtocolViolation => "protocol violation",
            Self::FrameTooLarge => "frame exceeds the size limit",
            Self::NoIdentity => "client certificate names no hotline endpoint",
            Self::IdentityConflict => "another connection took this identity",
            Self::IdentityInUse => "this identity is in use by another connection; retry later",
            Self::TooManyPending => {
                "too many connections of this identity await hello; retry later"
            }
            Self::Unpaired => "the relay's configuration no longer pairs this endpoint",
            Self::Revoked => "this endpoint's certificate was revoked",
        }
    }

    /// The reason for an application close `code`, if it is one of ours.
    pub fn from_code(code: quinn::VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The reason the relay gave, if `error` is an application close with one of our codes.
    pub fn of(error: &quinn::ConnectionError) -> Option<Self> {
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => Self::from_code(close.error_code),
            _ => None,
        }
    }

    /// Whether this close says that another node uses our identity.
    pub fn is_identity_conflict(self) -> bool {
        matches!(
            self,
            Self::Replaced | Self::IdentityConflict | Self::IdentityInUse
        )
    }

    /// Closes `connection` with this code and reason.
    pub fn close(self, connection: &quinn::Connection) {
        connection.close(self.code(), self.reason().as_bytes());
    }

    /// Closes every connection of `endpoint` with this code and reason.
    pub fn close_endpoint(self, endpoint: &quinn::Endpoint) {
        endpoint.close(self.code(), self.reason().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_codes_are_distinct() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CloseReason::from_code(quinn::VarInt::from_u32(99)), None);
        assert_eq!(CloseReason::IdentityConflict.code().into_inner(), 6);
        assert_eq!(CloseReason::IdentityInUse.code().into_inner(), 7);
        assert_eq!(CloseReason::TooManyPending.code().into_inner(), 8);
        assert_eq!(CloseReason::Unpaired.code().into_inner(), 9);
        assert_eq!(CloseReason::Revoked.code().into_inner(), 10);
    }
}
