//! Puts the commit the binary is built from into `portvakt --version` (`PORTVAKT_COMMIT`):
//! the environment's `PORTVAKT_COMMIT` if set (a container or package build), else `git`'s
//! short hash with `-dirty` for uncommitted changes, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PORTVAKT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=.git/index");
    let commit = std::env::var("PORTVAKT_COMMIT").ok().or_else(git_commit);
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PORTVAKT_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let hash = run(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
