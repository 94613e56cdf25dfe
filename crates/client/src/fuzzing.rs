//! Entry points for fuzz targets (`crates/client/fuzz`) and their corpus test. Not a stable API.
//!
//! The control socket is local, but whatever writes to it (a script, a confused operator, a
//! compromised account with socket access) must not be able to crash the node through the
//! request parser. Each function takes arbitrary bytes and must never panic.

use crate::control::RequestLine;

/// Parses `data` as one control request line, as the node does (lossy UTF-8, then
/// [`RequestLine::parse`]). A request that parses must serialize and parse back to the same
/// request; a refusal must say why.
pub fn control_request(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    match RequestLine::parse(&line) {
        Ok(request) => {
            let text = serde_json::to_string(&request)
                .unwrap_or_else(|e| panic!("a parsed request does not serialize: {e}"));
            let back = RequestLine::parse(&text)
                .unwrap_or_else(|(_, e)| panic!("{text} does not parse back: {e}"));
            assert_eq!(
                format!("{back:?}"),
                format!("{request:?}"),
                "round trip changed the request"
            );
        }
        Err((_, error)) => assert!(!error.is_empty(), "a refusal without a reason"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::control_request;

    /// Every committed seed of the `control_request` target, so stable `cargo test` covers
    /// what `cargo fuzz` starts from on nightly.
    #[test]
    fn committed_control_request_corpus_does_not_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/control_request");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(files.len() >= 10, "only {} seeds", files.len());
        for path in files {
            eprintln!("{}", path.display());
            control_request(&fs::read(&path).unwrap());
        }
    }

    /// Truncations and byte flips of the seeds.
    #[test]
    fn mutated_control_requests_do_not_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/control_request");
        let mut state = 0x686f_746c_696e_6504u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for entry in fs::read_dir(&dir).unwrap() {
            let seed = fs::read(entry.unwrap().path()).unwrap();
            for cut in 0..=seed.len() {
                control_request(&seed[..cut]);
            }
            for _ in 0..200 {
                let mut bytes = seed.clone();
                if !bytes.is_empty() {
                    let i = (next() % bytes.len() as u64) as usize;
                    bytes[i] = next() as u8;
                }
                control_request(&bytes);
            }
        }
    }
}
