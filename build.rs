//! Build script: puts the git commit the binary was built from into `KFR_GIT_COMMIT`, for
//! `kfr --version` (an operator reporting a problem can name the exact build).
//!
//! It only runs `git` (no build dependencies, so a debug build stays light) and never fails the
//! build: without git, outside a checkout (a source tarball), or inside some *other* repository
//! (the crate vendored into a parent project) the commit is `unknown`. A packager who knows the
//! commit can set `KFR_GIT_COMMIT` in the build environment instead.
//!
//! When it reruns: on a new commit or branch switch (HEAD, the branch's ref, packed refs) and on
//! any change to the sources, so `-dirty` reflects the tree the binary was compiled from. A source
//! change recompiles the crate anyway, so the extra `git status` costs nothing noticeable.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=KFR_GIT_COMMIT");

    let commit = match std::env::var("KFR_GIT_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=KFR_GIT_COMMIT={commit}");
}

/// `git` with its output trimmed, or `None` if it is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    // --no-optional-locks: `git status` must not rewrite the index behind the developer's back.
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .current_dir(manifest_dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// The short commit, with `-dirty` when tracked files differ from it; `None` when this crate is
/// not the top of a git checkout.
fn from_git() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if !same_dir(&top, &manifest_dir) {
        return None;
    }
    // Watch what moves when a commit is made: HEAD (per worktree), the branch's loose ref and the
    // packed refs (both in the common git dir). Only existing files: cargo reruns the script on
    // every build for a watched path that does not exist.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.extend(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched {
        let path = if Path::new(&path).is_absolute() {
            PathBuf::from(path)
        } else {
            manifest_dir.join(path)
        };
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    let hash = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
