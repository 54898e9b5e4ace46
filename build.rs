//! Records the git commit the binaries are built from (`ssp_build_info{commit}`): the
//! SSP_GIT_COMMIT environment variable if set (a release build from a tarball), otherwise
//! `git rev-parse`, otherwise "unknown".
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    if !o.status.success() {
        return None;
    }
    let s = String::from_utf8(o.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SSP_GIT_COMMIT");
    let commit = match std::env::var("SSP_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Rebuilt when HEAD moves: HEAD itself (a branch switch) and the branch's ref.
            let mut watch = vec!["HEAD".to_owned()];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(r);
            }
            watch.push("packed-refs".into());
            for w in watch {
                if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=SSP_GIT_COMMIT={commit}");
}
