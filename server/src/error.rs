//! The server's error type. Every variant says whether trying again can help.

use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query (or a parameter) the engine will not run; the message is one line naming the
    /// problem and the fix.
    #[error("{0}")]
    Refused(String),
    /// No such query, or one that already exists.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A continuous query failed while running.
    #[error("query {query} failed: {message}")]
    QueryFailed { query: String, message: String },
    /// Bad configuration: flags, config file, directories.
    #[error("configuration: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Archive storage (local disk or object store).
    #[error("archive: {0}")]
    Archive(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The engine task has stopped (the server is shutting down).
    #[error("the engine has stopped")]
    EngineStopped,
}

/// Whether an operation that failed with this error may succeed if retried unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Transient: broker down, disk full, I/O hiccup.
    Retry,
    /// Retrying the same input fails the same way.
    DoNotRetry,
}

impl Error {
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            Error::Kafka(_) | Error::Io(_) | Error::Archive(_) | Error::EngineStopped => {
                RetryHint::Retry
            }
            _ => RetryHint::DoNotRetry,
        }
    }
}

/// The first non-blank line of a message, at most 300 characters: what a client, a log line
/// or a dead letter gets of an error whose text may span lines (DataFusion plans, parser
/// context).
pub(crate) fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 300 {
        let cut: String = line.chars().take(297).collect();
        format!("{cut}...")
    } else {
        line.to_string()
    }
}
