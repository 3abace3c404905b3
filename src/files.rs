//! Reading the small files an operator names (credentials, certificates and keys, CA bundles, the
//! config file): regular files only, and only so much of them. A FIFO or a device named by mistake
//! would block the reader or never end (`/dev/zero` grows memory until the process is killed);
//! here either is a clear error naming the file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The most read of a credential, certificate, key or CA file.
pub(crate) const SMALL_FILE_MAX: u64 = 64 * 1024;

/// The most read of the config file.
pub(crate) const CONFIG_FILE_MAX: u64 = 1024 * 1024;

/// The whole file at `path`, if it is a regular file (a symbolic link to one is) of at most
/// `max` bytes. The type is checked before opening, so a FIFO is never opened (opening one for
/// reading blocks until a writer comes), and again on the opened file, in case it was swapped.
pub(crate) fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory is never read)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_limited`] as UTF-8 text.
pub(crate) fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_limited(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("fgw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, "abc").unwrap();
        assert_eq!(read_text(&small, 3).unwrap(), "abc");
        let e = read_limited(&small, 2).unwrap_err();
        assert!(e.to_string().contains("larger than 2 bytes"), "{e}");
        // A device without end, and a directory: refused before a byte is read.
        for path in [Path::new("/dev/zero"), dir.as_path()] {
            let e = read_limited(path, 10).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
