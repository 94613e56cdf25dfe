//! The async runtime both daemons run on, built one way so the node and the relay agree.
//!
//! By default a single-threaded runtime: on the small machines Hotline runs on (two cores
//! for a relay, two nodes and a load generator in our measurements) every hop between tasks
//! on a multi-threaded runtime is a cross-thread wake-up (a futex and often a context switch),
//! and a message makes several such hops per process. Blocking work (the store's fsync, audit
//! reads) runs on its own threads either way. `HOTLINE_WORKER_THREADS=N` (N ≥ 1) chooses a
//! multi-threaded runtime with N workers instead, for a machine where one thread is not enough.

/// The environment variable that chooses a multi-threaded runtime.
pub const WORKER_THREADS_VAR: &str = "HOTLINE_WORKER_THREADS";

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The variable is set but not a positive number.
    #[error("{WORKER_THREADS_VAR}={value}: expected a number of worker threads, at least 1")]
    BadThreads {
        /// What it was set to.
        value: String,
    },
    /// The OS refused (threads, epoll).
    #[error("starting the async runtime: {error}")]
    Io {
        /// The OS error.
        error: std::io::Error,
    },
}

/// The runtime `HOTLINE_WORKER_THREADS` asks for: current-thread when unset.
pub fn build() -> Result<tokio::runtime::Runtime, RuntimeError> {
    build_with(std::env::var(WORKER_THREADS_VAR).ok().as_deref())
}

/// The runtime for this setting of the variable.
pub fn build_with(threads: Option<&str>) -> Result<tokio::runtime::Runtime, RuntimeError> {
    let mut builder = match threads.map(str::trim) {
        None | Some("") => tokio::runtime::Builder::new_current_thread(),
        Some(value) => match value.parse::<usize>() {
            Ok(n) if n >= 1 => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
            _ => {
                return Err(RuntimeError::BadThreads {
                    value: value.to_owned(),
                });
            }
        },
    };
    builder
        .enable_all()
        .build()
        .map_err(|error| RuntimeError::Io { error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_one_thread_and_a_number_means_that_many_workers() {
        use tokio::runtime::RuntimeFlavor;
        let rt = build_with(None).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let rt = build_with(Some("1")).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        let rt = build_with(Some("3")).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
    }

    #[test]
    fn a_bad_setting_is_named() {
        for bad in ["0", "two", "-1"] {
            let e = build_with(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("HOTLINE_WORKER_THREADS={bad}")), "{e}");
        }
    }
}
