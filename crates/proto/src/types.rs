//! Names and numbers that every other module speaks in.
//!
//! Endpoint ids, channel names, precedences, lane sequence numbers, message ids and wall-clock
//! times. Each is a newtype with a `Display` so logs and the CLI print them one way. Ids and
//! channel names are validated on construction *and* on deserialization, so a hostile frame
//! cannot smuggle a `:` into a message id or a megabyte into a channel name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest endpoint id or channel name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name, precedence or message id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("name is empty")]
    Empty,
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("name is {len} bytes long; at most {MAX_NAME_LEN} allowed")]
    TooLong {
        /// Length of the rejected name.
        len: usize,
    },
    /// The name contained a character outside `a-z`, `0-9`, `-`, `_`, `.`.
    #[error("name {name:?} may only contain a-z, 0-9, '-', '_' and '.'")]
    BadCharacter {
        /// The rejected name.
        name: String,
    },
    /// Not one of routine, priority, immediate, flash.
    #[error("unknown precedence {0:?} (expected routine, priority, immediate or flash)")]
    UnknownPrecedence(String),
    /// A message id not of the form `sender:channel:precedence:seq`.
    #[error("message id {0:?} is not of the form SENDER:CHANNEL:PRECEDENCE:SEQ")]
    BadMessageId(String),
}

fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(NameError::BadCharacter { name: s.to_owned() });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate_name(&s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// An endpoint's identity, e.g. `us`. Read from the certificate's URI SAN
    /// `urn:hotline:endpoint:<id>`; configuration refers to it but never overrides it.
    EndpointId
);
name_type!(
    /// A named conversation inside a hotline, e.g. `main`.
    Channel
);

impl Default for Channel {
    fn default() -> Self {
        Self("main".to_owned())
    }
}

/// How urgent a message is. Ordered lowest to highest, so `Flash > Routine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precedence {
    /// Ordinary traffic.
    Routine = 0,
    /// Needs attention soon.
    Priority = 1,
    /// Needs attention now.
    Immediate = 2,
    /// Must get through at once, even over a saturated link.
    Flash = 3,
}

impl Precedence {
    /// All four, lowest first.
    pub const ALL: [Self; 4] = [Self::Routine, Self::Priority, Self::Immediate, Self::Flash];

    /// Index 0..4, lowest first.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The precedence at `index` (0..4), if any.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }

    /// One level up, saturating at flash.
    pub fn raised(self) -> Self {
        Self::from_index(self.index() + 1).unwrap_or(Self::Flash)
    }

    /// Lower-case name as used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Priority => "priority",
            Self::Immediate => "immediate",
            Self::Flash => "flash",
        }
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Precedence {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| NameError::UnknownPrecedence(s.to_owned()))
    }
}

/// One of the five streams a frame travels on between a node and the relay, in priority order:
/// control traffic (accepted, receipts, link tests, announcements, notices) above flash, then the
/// four precedence lanes from flash down. Node writers and readers, stream priorities and the
/// relay's queues all number lanes through [`Lane::index`], so there is one numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The bidirectional control stream.
    Control,
    /// The unidirectional stream of one transport precedence.
    Precedence(Precedence),
}

impl Lane {
    /// How many lanes there are.
    pub const COUNT: usize = 5;

    /// All five, most urgent first: `ALL[l.index()] == l`.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Control,
        Self::Precedence(Precedence::Flash),
        Self::Precedence(Precedence::Immediate),
        Self::Precedence(Precedence::Priority),
        Self::Precedence(Precedence::Routine),
    ];

    /// Dense index 0..5 in priority order: control 0, flash 1, … routine 4.
    pub fn index(self) -> usize {
        match self {
            Self::Control => 0,
            Self::Precedence(p) => Self::COUNT - 1 - p.index(),
        }
    }

    /// QUIC stream priority (higher is sent first): control 4, flash 3, … routine 0.
    pub fn priority(self) -> i32 {
        (Self::COUNT - 1 - self.index()) as i32
    }

    /// The precedence lane's precedence; `None` for control.
    pub fn precedence(self) -> Option<Precedence> {
        match self {
            Self::Control => None,
            Self::Precedence(p) => Some(p),
        }
    }

    /// `control` or the precedence's name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Precedence(p) => p.as_str(),
        }
    }
}

impl From<Precedence> for Lane {
    fn from(p: Precedence) -> Self {
        Self::Precedence(p)
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A sequence number within one lane (channel, direction, precedence). The first message is 1;
/// 0 means "none yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The next sequence number.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A wall-clock time in microseconds since the Unix epoch. The engine never reads a clock:
/// callers pass the current time in, which also makes every deadline survive a restart.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// `self + d`, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// Converts a `SystemTime`-derived duration since the epoch.
    pub fn from_unix(d: std::time::Duration) -> Self {
        Self(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// Identifies one message for its whole life: who sent it, on which channel and lane, at which
/// sequence. Printed as `sender:channel:precedence:seq`, e.g. `us:main:flash:3`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId {
    /// The sending endpoint.
    pub sender: EndpointId,
    /// The channel inside the hotline.
    pub channel: Channel,
    /// The ordering lane (original precedence, never changed by escalation).
    pub precedence: Precedence,
    /// Position in the lane.
    pub seq: Seq,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.sender, self.channel, self.precedence, self.seq
        )
    }
}

impl FromStr for MessageId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::BadMessageId(s.to_owned());
        let mut parts = s.split(':');
        let (Some(sender), Some(channel), Some(precedence), Some(seq), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Ok(Self {
            sender: sender.parse().map_err(|_| bad())?,
            channel: channel.parse().map_err(|_| bad())?,
            precedence: precedence.parse().map_err(|_| bad())?,
            seq: Seq(seq.parse().map_err(|_| bad())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(EndpointId::new("us").is_ok());
        assert_eq!(EndpointId::new(""), Err(NameError::Empty));
        assert!(matches!(
            EndpointId::new("US"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            Channel::new("a:b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            Channel::new("x".repeat(65)),
            Err(NameError::TooLong { len: 65 })
        ));
    }

    #[test]
    fn hostile_names_are_rejected_when_decoding() {
        let bytes = postcard::to_allocvec(&"A:B").unwrap();
        assert!(postcard::from_bytes::<Channel>(&bytes).is_err());
    }

    #[test]
    fn message_id_roundtrips_through_display() {
        let id: MessageId = "us:main:flash:3".parse().unwrap();
        assert_eq!(id.precedence, Precedence::Flash);
        assert_eq!(id.seq, Seq(3));
        assert_eq!(id.to_string(), "us:main:flash:3");
        assert!("us:main:urgent:3".parse::<MessageId>().is_err());
        assert!("us:main:flash".parse::<MessageId>().is_err());
        assert!("us:main:flash:3:4".parse::<MessageId>().is_err());
    }

    #[test]
    fn names_honour_width_in_tables() {
        assert_eq!(format!("{:<9}|", Precedence::Flash), "flash    |");
        assert_eq!(format!("{:>4}", EndpointId::new("us").unwrap()), "  us");
        assert_eq!(format!("{:<8}|", Lane::Control), "control |");
    }

    #[test]
    fn precedence_orders_and_raises() {
        assert!(Precedence::Flash > Precedence::Routine);
        assert_eq!(Precedence::Routine.raised(), Precedence::Priority);
        assert_eq!(Precedence::Flash.raised(), Precedence::Flash);
    }

    #[test]
    fn lanes_have_one_numbering_in_priority_order() {
        for (i, lane) in Lane::ALL.into_iter().enumerate() {
            assert_eq!(lane.index(), i);
        }
        let priorities: Vec<i32> = Lane::ALL.into_iter().map(Lane::priority).collect();
        assert_eq!(priorities, [4, 3, 2, 1, 0]);
        assert_eq!(Lane::from(Precedence::Flash).index(), 1);
        assert_eq!(Lane::Control.precedence(), None);
        assert_eq!(Lane::from(Precedence::Routine).to_string(), "routine");
    }
}
