//! Shared test helpers: running the `kfr` binary in a clean environment.

use assert_cmd::Command;
use std::path::Path;

/// The `kfr` binary with no `KFR_*` variables from the developer's shell and a working
/// directory of the test's choosing (so no stray `./kfr.toml` is picked up).
pub fn kfr(cwd: &Path) -> Command {
    let mut cmd = Command::cargo_bin("kfr").expect("kfr binary");
    for (k, _) in std::env::vars() {
        if k.starts_with("KFR_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd).env("NO_COLOR", "1");
    cmd
}

/// stdout and stderr of a finished command, as text.
pub fn output_text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
