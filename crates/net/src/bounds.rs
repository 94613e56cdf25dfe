//! Bounds on what a configuration may ask for: how big a file it names may be, and which
//! numbers it may set.
//!
//! The node and the relay read their TOML files, CA and certificate chains, keys and CRLs
//! through [`read_capped`], so a path to `/dev/zero` or a runaway file is a one-line error
//! naming the file and the limit rather than a process that eats its memory. Each duration and
//! size a configuration sets goes through [`check_range`], whose error names the key, its
//! allowed range and the value given: a value such as `u64::MAX` milliseconds is refused
//! instead of silently overflowing into "no timeout".
//!
//! It only bounds; what a file means and which range fits a key belong to the callers.

use std::io::Read;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// Largest PEM file (CA, certificate chain, private key) or CRL read: 4 MiB. Real ones are a
/// few KiB; a CRL of a large CA may reach hundreds.
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// Largest TOML configuration file read: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("reading {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file holds more than the limit.
    #[error("{} is larger than the {limit}-byte limit", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Reads a whole file of at most `limit` bytes, reading no more than `limit + 1` bytes of it.
///
/// The buffer is sized from the file's length up front, so a regular file is read without the
/// buffer growing (a key read this way leaves no stale copy behind in freed memory).
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |error| ReadError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(limit);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).saturating_add(1));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// A configured number outside the range its key allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} must be between {min} and {max}, got {value}")]
pub struct OutOfRange {
    /// The configuration key, as written in the file.
    pub key: String,
    /// The value given.
    pub value: u64,
    /// Smallest allowed.
    pub min: u64,
    /// Largest allowed.
    pub max: u64,
}

/// Returns `value` if `range` holds it, else an error naming `key`, the range and the value.
pub fn check_range(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<u64, OutOfRange> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(OutOfRange {
            key: key.to_owned(),
            value,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_is_refused_quickly_naming_file_and_limit() {
        let started = std::time::Instant::now();
        let e = read_capped(Path::new("/dev/zero"), MAX_PEM_BYTES).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { limit, .. } if limit == MAX_PEM_BYTES));
        let shown = e.to_string();
        assert!(
            shown.contains("/dev/zero") && shown.contains("4194304"),
            "{shown}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_file_at_the_limit_reads_and_one_byte_more_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_capped(&path, 100).unwrap(), vec![7u8; 100]);
        assert!(matches!(
            read_capped(&path, 99),
            Err(ReadError::TooLarge { limit: 99, .. })
        ));
        let e = read_capped(&dir.path().join("missing"), 100).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn out_of_range_names_key_range_and_value() {
        assert_eq!(
            check_range("idle_timeout_ms", 5000, 1000..=3_600_000),
            Ok(5000)
        );
        assert_eq!(check_range("x", 1000, 1000..=1000), Ok(1000));
        let e = check_range("idle_timeout_ms", u64::MAX, 1000..=3_600_000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "idle_timeout_ms must be between 1000 and 3600000, got 18446744073709551615"
        );
        assert!(check_range("x", 999, 1000..=2000).is_err());
    }
}
