//! The two systemd interfaces sspd speaks, without libsystemd: readiness notification
//! (`sd_notify(3)`: `READY=1`, `STOPPING=1`, `STATUS=…` datagrams to `$NOTIFY_SOCKET`) and
//! socket activation (`sd_listen_fds(3)`: listening sockets inherited from descriptor 3 on,
//! announced by `$LISTEN_FDS` and `$LISTEN_PID`, optionally named by `$LISTEN_FDNAMES`).
//! Both are no-ops when their variables are not set, so the same binary runs anywhere.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More inherited sockets than this is taken for a mistake.
const MAX_LISTEN_FDS: usize = 64;

/// Why inherited sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of descriptors (at most {MAX_LISTEN_FDS})")]
    BadCount(String),
    #[error("inherited descriptor {fd}")]
    Io { fd: RawFd, source: std::io::Error },
    #[error("inherited descriptor {fd} is not a listening stream socket ({what})")]
    NotListening { fd: RawFd, what: &'static str },
}

/// A listening socket handed over by the service manager.
#[derive(Debug)]
pub enum Inherited {
    Tcp(std::net::TcpListener),
    /// With its path, when it has one (not abstract, not unnamed).
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Result<libc::c_int, ActivationError> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a writable c_int and `len` its size, as these integer options expect.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(ActivationError::Io {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(v)
}

/// Take the sockets systemd (or `systemd-socket-activate`, or any manager following
/// `sd_listen_fds(3)`) passed to this process. Empty when `$LISTEN_PID` is not this process
/// (the variables were meant for another one). The variables are removed so that children do
/// not take the sockets for theirs; the descriptors are marked close-on-exec.
pub fn take_listen_fds() -> Result<Vec<Inherited>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ActivationError::BadCount(count.clone()))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: F_SETFD on a descriptor number touches no memory; a bad one returns EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(ActivationError::Io {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
            return Err(ActivationError::NotListening {
                fd,
                what: "not a stream socket",
            });
        }
        if sockopt(fd, libc::SO_ACCEPTCONN)? == 0 {
            return Err(ActivationError::NotListening {
                fd,
                what: "not listening",
            });
        }
        let domain = sockopt(fd, libc::SO_DOMAIN)?;
        out.push(match domain {
            libc::AF_INET | libc::AF_INET6 => {
                // SAFETY: the descriptor is an open listening TCP socket handed to this process
                // (LISTEN_PID is ours), and nothing else in it owns the descriptor.
                Inherited::Tcp(unsafe { std::net::TcpListener::from_raw_fd(fd) })
            }
            libc::AF_UNIX => {
                // SAFETY: as above, a listening unix stream socket that nothing else owns.
                let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.to_owned()));
                Inherited::Unix(l, path)
            }
            _ => {
                return Err(ActivationError::NotListening {
                    fd,
                    what: "neither TCP nor unix",
                })
            }
        });
    }
    Ok(out)
}

/// Send `state` (newline-separated `KEY=VALUE` assignments) to the service manager. `Ok(false)`
/// when `$NOTIFY_SOCKET` is not set (not started by one that listens).
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => notify_to(&target, state).map(|()| true),
        None => Ok(false),
    }
}

/// Send `state` to the notification socket `target`: a path, or `@name` for an abstract one.
fn notify_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = target.as_encoded_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), target)?;
    }
    Ok(())
}

/// [`notify`], with a failure logged rather than returned: the server keeps serving when the
/// manager cannot be told.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_socket_by_path_or_abstract_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        notify_to(p.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ssp-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
