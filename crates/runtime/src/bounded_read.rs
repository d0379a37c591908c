//! Reading a whole file that someone else wrote (a config file, a TaskRun, a bundle) without
//! trusting its size: at most a stated number of bytes are read, so `/dev/zero`, a FIFO that never
//! ends or a file of gigabytes is refused with an error naming the file and the limit, instead of
//! being read until memory runs out.
//!
//! The limit is checked while reading, not with the file's metadata first: a FIFO or a device has
//! no meaningful length, and a regular file may grow between the two.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadFileError {
    /// The file could not be opened or read.
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file holds more than the limit.
    #[error("{} is larger than the limit of {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// The file is not UTF-8 text (from [`read_to_string_bounded`]).
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// What kind of [`ReadFileError`] this is, for callers and tests that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadFileErrorKind {
    Io,
    TooLarge,
    NotUtf8,
}

impl ReadFileError {
    /// What kind of error this is.
    pub fn kind(&self) -> ReadFileErrorKind {
        match self {
            ReadFileError::Io { .. } => ReadFileErrorKind::Io,
            ReadFileError::TooLarge { .. } => ReadFileErrorKind::TooLarge,
            ReadFileError::NotUtf8 { .. } => ReadFileErrorKind::NotUtf8,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadFileError::Io { path, .. }
            | ReadFileError::TooLarge { path, .. }
            | ReadFileError::NotUtf8 { path, .. } => path,
        }
    }
}

/// Reads the whole of `path`, refusing it once more than `limit` bytes have been read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadFileError> {
    let io_error = |source| ReadFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    read_bounded_from(file, path, limit)
}

/// Reads `reader` (named `path` in errors) to its end, refusing it once more than `limit` bytes
/// have been read. For standard input and other readers that are not opened by path.
pub fn read_bounded_from(
    reader: impl Read,
    path: &Path,
    limit: u64,
) -> Result<Vec<u8>, ReadFileError> {
    let mut bytes = Vec::new();
    // One byte past the limit tells a file of exactly `limit` bytes from a larger one.
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ReadFileError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadFileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Reads the whole of `path` as UTF-8 text, refusing it once more than `limit` bytes have been
/// read.
pub fn read_to_string_bounded(path: &Path, limit: u64) -> Result<String, ReadFileError> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|source| ReadFileError::NotUtf8 {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_up_to_the_limit_is_read_whole() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("exact");
        std::fs::write(&path, b"12345").expect("writing");
        assert_eq!(read_bounded(&path, 5).expect("at the limit"), b"12345");
        assert_eq!(read_to_string_bounded(&path, 10).expect("under"), "12345");
        let error = read_bounded(&path, 4).expect_err("over the limit");
        assert_eq!(error.kind(), ReadFileErrorKind::TooLarge);
        assert_eq!(error.path(), path);
    }

    #[test]
    fn an_endless_device_is_refused_at_the_limit() {
        let error = read_bounded(Path::new("/dev/zero"), 1024 * 1024).expect_err("endless");
        assert_eq!(error.kind(), ReadFileErrorKind::TooLarge);
        assert!(error.to_string().contains("/dev/zero"));
        assert!(error.to_string().contains("1048576"));
    }

    #[test]
    fn a_fifo_is_read_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&fifo)
                    .expect("opening the fifo for writing");
                // More than the limit; the reader stops and closes, so a write may fail (EPIPE).
                for _ in 0..64 {
                    if file.write_all(&[b'x'; 1024]).is_err() {
                        break;
                    }
                }
            }
        });
        let error = read_bounded(&fifo, 4096).expect_err("more than the limit");
        assert_eq!(error.kind(), ReadFileErrorKind::TooLarge);
        writer.join().expect("the writer ends");
    }

    #[test]
    fn missing_files_and_non_text_have_their_own_kinds() {
        let missing = read_bounded(Path::new("/nonexistent/file"), 10).expect_err("missing");
        assert_eq!(missing.kind(), ReadFileErrorKind::Io);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("binary");
        std::fs::write(&path, [0xff, 0xfe]).expect("writing");
        let error = read_to_string_bounded(&path, 10).expect_err("not UTF-8");
        assert_eq!(error.kind(), ReadFileErrorKind::NotUtf8);
    }
}
