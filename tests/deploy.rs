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

/// The aarch64 build (`deploy/cross.sh aarch64-unknown-linux-gnu`: Pi 3/4/5, 64-bit OS) runs
/// under qemu-user: `mesh --version`, and an agent that answers `mesh status` (both emulated).
/// Skips with the reason when the binary has not been built or qemu-user is missing.
#[test]
fn the_aarch64_build_runs_under_qemu_and_answers_status() {
    runs_under_qemu(
        "aarch64-unknown-linux-gnu",
        "qemu-aarch64",
        "/usr/aarch64-linux-gnu",
        "ld-linux-aarch64.so.1",
        "libc6-dev-arm64-cross",
    );
}

/// The same for the 32-bit Raspberry Pi OS build (`armv7-unknown-linux-gnueabihf`).
#[test]
fn the_armv7_build_runs_under_qemu_and_answers_status() {
    runs_under_qemu(
        "armv7-unknown-linux-gnueabihf",
        "qemu-arm",
        "/usr/arm-linux-gnueabihf",
        "ld-linux-armhf.so.3",
        "libc6-dev-armhf-cross",
    );
}

fn runs_under_qemu(triple: &str, qemu: &str, sysroot: &str, loader: &str, libc_package: &str) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(triple);
    let Some(bin) = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("mesh"))
        .find(|p| p.exists())
    else {
        println!("skipped: no {triple} build (run `deploy/cross.sh {triple}` first)");
        return;
    };
    if Command::new(qemu).arg("--version").output().is_err() {
        println!("skipped: {qemu} is not installed (Debian package `qemu-user`)");
        return;
    }
    // The dynamic loader and C library of the target, from the cross C library package.
    if !std::path::Path::new(sysroot)
        .join("lib")
        .join(loader)
        .exists()
    {
        println!("skipped: {sysroot} is missing (Debian package `{libc_package}`)");
        return;
    }
    let emulated = |args: &[&str]| {
        let mut cmd = Command::new(qemu);
        cmd.arg("-L").arg(sysroot).arg(&bin).args(args);
        cmd
    };
    let out = emulated(&["--version"]).output().expect("qemu runs");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.starts_with("mesh "),
        "{version} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = listener.local_addr().unwrap().to_string();
    drop(listener);
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = emulated(&[
        "agent",
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "qemu-pi",
        "--no-mdns",
        "--listen",
        "127.0.0.1:0",
        "--api",
        &api,
    ])
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .expect("qemu starts the agent");
    // Emulation is slow: a generous ceiling, looking every 250 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let out = emulated(&["status", "--json", "--api", &api])
            .output()
            .expect("qemu runs");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if std::time::Instant::now() > deadline || agent.try_wait().unwrap().is_some() {
            let _ = agent.kill();
            panic!(
                "the emulated agent never answered: {}",
                std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["name"], "qemu-pi", "{status}");
    let size = std::fs::metadata(&bin).unwrap().len();
    println!(
        "{triple} {} ({:.1} MB) under {qemu} answered `mesh status`: {}",
        bin.display(),
        size as f64 / 1e6,
        status["hardware"]["arch"]
    );
}

/// `deploy/install.sh --root DIR` lays out the binary, unit, config and directories; run again
/// it keeps an edited config; `--uninstall` keeps the config and data, `--purge` removes them.
#[test]
fn install_sh_installs_upgrades_keeps_the_config_and_uninstalls() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/install.sh");
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(script)
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .expect("bash runs");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "install.sh {args:?}: {text}");
        text
    };
    let path = |p: &str| root.path().join(p);
    let mode = |p: &str| std::fs::metadata(path(p)).unwrap().permissions().mode() & 0o777;
    run(&["--binary", env!("CARGO_BIN_EXE_mesh")]);
    assert_eq!(mode("usr/local/bin/mesh"), 0o755);
    assert_eq!(mode("etc/systemd/system/mesh.service"), 0o644);
    assert_eq!(mode("var/lib/mesh"), 0o700);
    let config = std::fs::read_to_string(path("etc/mesh/config.toml")).unwrap();
    assert!(config.contains("data_dir"), "the example config");
    let out = Command::new(path("usr/local/bin/mesh"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mesh "));

    // Again, over an edited config: the binary and unit are replaced, the config kept.
    std::fs::write(path("etc/mesh/config.toml"), "name = \"kitchen\"\n").unwrap();
    std::fs::write(path("var/lib/mesh/identity.key"), "x").unwrap();
    let again = run(&["--binary", env!("CARGO_BIN_EXE_mesh")]);
    assert!(again.contains("kept the existing"), "{again}");
    assert_eq!(
        std::fs::read_to_string(path("etc/mesh/config.toml")).unwrap(),
        "name = \"kitchen\"\n"
    );

    run(&["--uninstall"]);
    assert!(!path("usr/local/bin/mesh").exists());
    assert!(!path("etc/systemd/system/mesh.service").exists());
    assert!(path("etc/mesh/config.toml").exists() && path("var/lib/mesh/identity.key").exists());
    run(&["--uninstall", "--purge"]);
    assert!(!path("etc/mesh").exists() && !path("var/lib/mesh").exists());
}
