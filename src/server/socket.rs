//! Unix socket paths the server listens on: what may be replaced before binding, and removing
//! our own socket again when the server exits.
//!
//! Binding a unix socket needs the path to be free. Only a stale socket (one nobody accepts
//! on any more, left by a server that died) is removed to make way; a regular file, a directory
//! or any other object is refused untouched, and so is a socket a live server still accepts on
//! (a second server must not take over the first one's clients).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a socket path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("{path}: exists and is not a socket ({kind}); refusing to replace it", path = .0.display(), kind = .1)]
    NotASocket(PathBuf, &'static str),
    #[error("{path}: another server is listening on this socket", path = .0.display())]
    InUse(PathBuf),
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "not a socket"
    }
}

/// Make `path` free for binding a listening socket: nothing there is fine, a stale socket is
/// removed, anything else is refused and left as it is.
pub fn claim_socket_path(path: &Path) -> Result<(), SocketPathError> {
    let io = |e| SocketPathError::Io(path.to_owned(), e);
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketPathError::NotASocket(
            path.to_owned(),
            kind(meta.file_type()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketPathError::InUse(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// A socket this server bound: removed on drop, if the path still holds that socket (not one
/// another process put there since).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Remember the socket just bound at `path`.
    pub fn bound(path: &Path) -> Result<SocketFile, SocketPathError> {
        let m =
            std::fs::symlink_metadata(path).map_err(|e| SocketPathError::Io(path.to_owned(), e))?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), "cannot remove socket: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_stale_live_and_foreign_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        // Nothing there.
        claim_socket_path(&p).unwrap();
        // A live socket is refused and kept.
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(matches!(
            claim_socket_path(&p),
            Err(SocketPathError::InUse(_))
        ));
        assert!(p.exists());
        // Stale once nobody listens: removed.
        drop(l);
        claim_socket_path(&p).unwrap();
        assert!(!p.exists());
        // A regular file is refused and intact.
        std::fs::write(&p, b"data").unwrap();
        let e = claim_socket_path(&p).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        // A directory too.
        let dir = d.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            claim_socket_path(&dir),
            Err(SocketPathError::NotASocket(..))
        ));
    }

    #[test]
    fn socket_file_removes_only_its_own_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let f = SocketFile::bound(&p).unwrap();
        drop(f);
        assert!(!p.exists());
        drop(l);
        // Replaced by someone else's file meanwhile: left alone.
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let f = SocketFile::bound(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"other").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"other");
    }
}
