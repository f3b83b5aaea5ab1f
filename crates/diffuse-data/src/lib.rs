//! diffuse-data: getting images into tensors and back out to files.
//!
//! - [`image_io`]: image files (PNG, JPEG, WebP; EXIF orientation; alpha) ↔ `[b, c, h, w]`
//!   tensors in [−1, 1], image grids and strips.
//! - [`fs`]: atomic file writes (temp file + fsync + rename): a file is whole or absent.
//! - [`lock`]: one writer per folder (an advisory `flock` lock file naming its holder).
//! - [`datasets`]: MNIST/Fashion-MNIST IDX, CIFAR-10 binary, image folders; known data sets.
//! - [`transform`], [`loader`]: preprocessing and a seeded, threaded, resumable batch loader.

pub mod datasets;
pub mod fetch;
pub mod fs;
pub mod image_io;
pub mod loader;
pub mod lock;
pub mod transform;

/// Errors from reading and writing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: String, message: String },
    #[error("{path}: the image is {width}×{height}, over the {max_side}-pixel limit on a side")]
    TooLarge {
        path: String,
        width: u32,
        height: u32,
        max_side: u32,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `map_err(Error::io(path))`: an I/O error naming the file it happened on.
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
