//! Error type of diffuse-core: every message says what was wrong and where.

/// Errors from configuration, planning and sampling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key holds a value we cannot use.
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    /// The configuration as a whole is unusable (not JSON, not an object, ...).
    #[error("{0}")]
    Invalid(String),
    /// A sampler was driven out of order or with mismatched tensors.
    #[error("sampler: {0}")]
    Sampler(String),
    /// An error from the tensor engine.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
