//! The files in `deploy/`: the systemd unit verifies with `systemd-analyze verify`, and the
//! example config is what the agent reads.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is not installed (Debian package `systemd`)");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // The unit names /usr/local/bin/mesh; verify a copy that names the binary just built.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mesh.service"))
        .unwrap()
        .replace("/usr/local/bin/mesh", env!("CARGO_BIN_EXE_mesh"));
    let path = dir.path().join("mesh.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("mesh.service"),
        "{stderr}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default();
    println!("{summary}");
    assert!(summary.contains("Overall exposure level"), "{text}");
}
