//! The agent's configuration file (`mesh agent --config FILE`; `/etc/mesh/config.toml` by
//! default when it exists and the agent runs as root): TOML with one key per `mesh agent` flag.
//! Flags given on the command line (or through their environment variables) override the
//! file; unknown keys are refused with their name, so a typo never passes silently.
//!
//! Owns the file's format ([`ConfigFile`]), reading it ([`load`]) and the rule that picks it
//! ([`default_path`]). Does not own what the settings mean (the daemon's [`super::AgentOptions`]).
//! Example: `deploy/config.toml`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The configuration file a root agent reads when no `--config` is given, if it exists.
pub const SYSTEM_CONFIG: &str = "/etc/mesh/config.toml";
/// Largest configuration file read, in bytes: a config is a few hundred bytes; the bound keeps
/// a wrong path (a log, a device) from being read whole.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Every setting of `mesh agent`, each optional; the flag of the same name (with `-` for `_`)
/// overrides it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `--name`.
    pub name: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--mesh-key`: the file holding the mesh key.
    pub mesh_key: Option<PathBuf>,
    /// `--listen` (each entry one address).
    #[serde(default)]
    pub listen: Vec<String>,
    /// `--peer` (each entry one address).
    #[serde(default)]
    pub peers: Vec<String>,
    /// `--rendezvous` (each entry one multiaddr with `/p2p/ID`).
    #[serde(default)]
    pub rendezvous: Vec<String>,
    /// `--rendezvous-server`.
    pub rendezvous_server: Option<bool>,
    /// `--rendezvous-open`.
    pub rendezvous_open: Option<bool>,
    /// `--rendezvous-max-registrations`.
    pub rendezvous_max_registrations: Option<usize>,
    /// `--rendezvous-max-per-peer`.
    pub rendezvous_max_per_peer: Option<usize>,
    /// `--rendezvous-min-ttl` (e.g. `"2h"`).
    pub rendezvous_min_ttl: Option<String>,
    /// `--rendezvous-max-ttl`.
    pub rendezvous_max_ttl: Option<String>,
    /// `--relay-server`.
    pub relay_server: Option<bool>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--sample-interval-ms`.
    pub sample_interval_ms: Option<u64>,
    /// `--external-addr` (each entry one address).
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// `--api`.
    pub api: Option<String>,
    /// `--log-format`: `human` or `json`.
    pub log_format: Option<String>,
    /// `false` is `--no-mdns`.
    pub mdns: Option<bool>,
    /// `--profile`: `full`, `standard`, `edge` or `lite`.
    pub profile: Option<String>,
    /// `--port-pool` (each entry `NAME=FIRST-LAST[,FIRST-LAST...]`).
    #[serde(default)]
    pub port_pools: Vec<String>,
    /// `--leave-services-running`.
    pub leave_services_running: Option<bool>,
    /// `--accept-services`: `all`, `own` or `none`.
    pub accept_services: Option<String>,
    /// `--join-file`: a ticket file joined with (and deleted) at start, when it exists.
    pub join_file: Option<PathBuf>,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading config {}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "config {} is {} bytes; a config file is at most {MAX_CONFIG_BYTES}",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    parse(&text).with_context(|| format!("config {}", path.display()))
}

/// Parses the text of a configuration file.
pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(format) = &file.log_format
        && !matches!(format.as_str(), "human" | "json")
    {
        anyhow::bail!("log_format = {format:?}: expected \"human\" or \"json\"");
    }
    if let Some(whose) = &file.accept_services
        && !matches!(whose.as_str(), "all" | "own" | "none")
    {
        anyhow::bail!("accept_services = {whose:?}: expected \"all\", \"own\" or \"none\"");
    }
    if let Some(profile) = &file.profile {
        profile
            .parse::<crate::hardware::Profile>()
            .map_err(|e| anyhow::anyhow!("profile = {profile:?}: {e}"))?;
    }
    Ok(file)
}

/// The file to read: `explicit` if given; else [`SYSTEM_CONFIG`] when the agent runs as root
/// and it exists; else none.
pub fn default_path(explicit: Option<&Path>, is_root: bool) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let system = PathBuf::from(SYSTEM_CONFIG);
            (is_root && system.exists()).then_some(system)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reads_and_unknown_keys_are_named() {
        let text = r#"
name = "pi-kitchen"
data_dir = "/var/lib/mesh"
mesh_key = "/etc/mesh/mesh.key"
listen = ["0.0.0.0:7400", "[::]:7400"]
peers = ["10.0.0.2:7400"]
api = "127.0.0.1:7401"
log_format = "json"
mdns = false
profile = "edge"
port_pools = ["default=20000-20999", "web=8000-8099"]
leave_services_running = true
accept_services = "own"
"#;
        let file = parse(text).expect("parses");
        assert_eq!(file.name.as_deref(), Some("pi-kitchen"));
        assert_eq!(file.listen.len(), 2);
        assert_eq!(file.mdns, Some(false));
        assert_eq!(file.port_pools[1], "web=8000-8099");
        assert_eq!(file.accept_services.as_deref(), Some("own"));
        let err = parse("nmae = \"x\"\n").expect_err("typo").to_string();
        assert!(err.contains("unknown field `nmae`"), "{err}");
        let err = parse("accept_services = \"some\"\n")
            .expect_err("bad")
            .to_string();
        assert!(err.contains("accept_services"), "{err}");
        let err = parse("profile = \"huge\"\n").expect_err("bad").to_string();
        assert!(err.contains("profile"), "{err}");
    }

    #[test]
    fn the_example_in_deploy_parses() {
        let text = include_str!("../../deploy/config.toml");
        assert_eq!(parse(text).expect("parses"), ConfigFile::default());
        // Uncommented, every key of it parses too.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = parse(&uncommented).expect("uncommented parses");
        assert_eq!(file.name.as_deref(), Some("pi-kitchen"));
        assert_eq!(file.accept_services.as_deref(), Some("all"));
    }

    #[test]
    fn the_system_file_is_read_only_by_root_and_only_if_it_exists() {
        let explicit = Path::new("/tmp/x.toml");
        assert_eq!(
            default_path(Some(explicit), false).as_deref(),
            Some(explicit)
        );
        let system = Path::new(SYSTEM_CONFIG).exists();
        assert_eq!(default_path(None, true).is_some(), system);
        assert_eq!(default_path(None, false), None);
    }
}
