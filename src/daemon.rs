//! Process chores of a daemon: a pid file that exists while the server is ready, and exiting
//! with the parent process (`--exit-with-parent`, for tests and programs embedding sspd).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::path::{Path, PathBuf};

/// A pid file written by this process: removed on drop, if it still holds this process's id
/// (not one another process wrote since).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

fn contents() -> String {
    format!("{}\n", std::process::id())
}

impl PidFile {
    /// Write this process's id (and a newline) to `path`: to a temporary file beside it,
    /// renamed over `path`, so a reader never sees it half-written.
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, contents())?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|s| s == contents()) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), "cannot remove the pid file: {e}");
            }
        }
    }
}

/// Have the kernel send this process `signal` when its parent exits (`PR_SET_PDEATHSIG`). If
/// the parent is already gone (this process was re-parented between `parent` being read and
/// now), the signal is raised at once. `parent` is the parent's pid read at startup.
pub fn exit_with_parent(parent: libc::pid_t, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getppid cannot fail; raise only sends a signal to this process.
    if unsafe { libc::getppid() } != parent {
        unsafe { libc::raise(signal) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_holds_the_pid_and_goes_only_if_ours() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sspd.pid");
        let f = PidFile::write(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(f);
        assert!(!p.exists());
        // Replaced by another writer meanwhile: left alone.
        let f = PidFile::write(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
    }
}
