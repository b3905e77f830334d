//! The agent's hardware profile: what kind of machine this is ([`DeviceClass`]), how capable it
//! is (a 0..=100 score) and which [`Profile`] the agent runs with ([`ProfileSettings`]).
//!
//! Owns the probe (sysinfo plus a few Linux sysfs/procfs files), the classification rules, the
//! score formula, the profile thresholds and what each profile changes. Does not own where the
//! profile is advertised (the node/state layer carries [`HardwareInfo`] to peers), how placement
//! uses the score, nor the `--profile` flag (the CLI parses it with [`Profile`]'s `FromStr` and
//! overwrites [`HardwareInfo::profile`]). The wire form is specified in
//! `protocol/hardware-profile.md`.
//!
//! # Inputs and outputs
//!
//! [`probe`] reads the machine once, at agent start, and returns a [`HardwareInfo`]. It blocks on
//! a handful of small file reads (call it before the runtime starts or in `spawn_blocking`),
//! never panics, and degrades unknown values: an unreadable CPU list falls back to
//! `std::thread::available_parallelism` (and at least 1), unknown memory is 0 (which classifies
//! as [`DeviceClass::Tiny`]: a machine we cannot measure is not offered services), unknown text
//! is `""`, unknown board/battery is `None`. The value is a start-time snapshot: battery level and
//! power source are not refreshed while the agent runs.
//!
//! Everything after the reads is a pure core over [`ProbeInputs`], unit-tested with fabricated
//! machines: [`classify`], [`capability_score`], [`profile_for`] and [`from_inputs`]. Tests and
//! simulations build a [`HardwareInfo`] with [`from_inputs`] instead of probing.
//!
//! # Sources
//!
//! | value | source |
//! |---|---|
//! | cores | sysinfo logical CPU count (`/proc/stat` on Linux) |
//! | cpu model | sysinfo brand of the first CPU (vendor id if the brand is empty) |
//! | memory | sysinfo total RAM (`MemTotal`), not the cgroup limit |
//! | os, arch | `std::env::consts::OS` / `ARCH` of this binary |
//! | os version | sysinfo long OS version, with Linux's `Linux (…)` wrapper removed |
//! | board model | `/proc/device-tree/model` (ARM/RISC-V boards), NUL and whitespace trimmed |
//! | chassis type | `/sys/class/dmi/id/chassis_type` (SMBIOS, x86 and some ARM servers) |
//! | battery | `/sys/class/power_supply/*/` (see below) |
//!
//! Battery: every supply whose `type` is `Battery`, skipping peripherals (`scope` = `Device`,
//! e.g. a wireless mouse) and empty bays (`present` = `0`). `percent` is the mean of their
//! `capacity` (or `energy_now/energy_full`, or `charge_now/charge_full`), rounded down.
//! `charging` means *on external power*: a battery reports `Charging`, `Full` or `Not charging`
//! (plugged in, charge threshold reached), or a `Mains`/`USB` supply reports `online` = `1`.
//! "On battery" below means a battery is present and `charging` is false.
//!
//! # Nominal memory
//!
//! `MemTotal` is smaller than the RAM on the label: firmware, the kernel and (on a Raspberry Pi)
//! the GPU keep their share, so a 4 GiB Pi 4 reports ~3.7 GiB, a 1 GiB Pi 3 ~0.92 GiB and a
//! 32 GiB server ~31.3 GiB. Every memory rule below therefore uses the *nominal* memory,
//! `memory_bytes + memory_bytes / 8` (12.5 % headroom), so machines land on the size they were
//! sold as.
//!
//! # Device class
//!
//! First matching rule wins:
//!
//! 1. **tiny**: nominal memory < 1 GiB, or a board (below) with cores <= 1.
//! 2. **single-board**: a board model is present (`/proc/device-tree/model` exists on ARM and
//!    RISC-V boards such as "Raspberry Pi 4 Model B Rev 1.4").
//! 3. **laptop**: a battery is present, or DMI chassis type is 8, 9, 10, 14, 30, 31 or 32
//!    (portable, laptop, notebook, sub-notebook, tablet, convertible, detachable).
//! 4. **server**: chassis type 17, 23, 28 or 29 (main server, rack mount, blade, blade
//!    enclosure), or cores >= 16 and nominal memory >= 32 GiB.
//! 5. **desktop**: everything else (including VMs, whose chassis type is usually 1 "other").
//!
//! # Capability score
//!
//! ```text
//! core_points   = min(40, floor(10 * log2(cores)))                 0 for cores <= 1
//! memory_points = min(40, floor(5 * log2(nominal_memory / 128 MiB))) 0 below 128 MiB
//! class_points  = server 20 | desktop 15 | laptop 10 | single-board 5 | tiny 0
//! penalty       = 10 if on battery, else 0
//! score         = clamp(core_points + memory_points + class_points - penalty, 0, 100)
//! ```
//!
//! So 10 points per doubling of cores (2 → 10, 4 → 20, 8 → 30, 16+ → 40) and 5 points per
//! doubling of memory (1 GiB → 15, 4 GiB → 25, 8 GiB → 30, 32+ GiB → 40). The score never
//! decreases when cores or memory grow (class changes caused by growth only raise the bonus).
//! Examples: Pi Zero (1 core, 512 MiB) 10; Pi 4 (4 cores, 4 GiB) 50; laptop (8 cores, 16 GiB,
//! plugged in) 75; server (32 cores, 128 GiB) 100.
//!
//! # Profile
//!
//! From the score: **full** >= 70, **standard** >= 40, **edge** >= 20, else **lite**; then caps:
//! tiny is always lite, single-board is at most edge (SD-card storage, thermal throttling,
//! often on flaky power), on battery is at most standard. [`Profile::settings`] says what each
//! profile changes; the table is in [`ProfileSettings`].

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// One mebibyte, in bytes.
const MIB: u64 = 1024 * 1024;
/// One gibibyte, in bytes.
const GIB: u64 = 1024 * MIB;

/// Longest text field (cpu model, OS version, board model) kept in a [`HardwareInfo`], in
/// characters. These strings travel to every peer and are shown in one `mesh peers` row; real
/// values are under 80 characters, so 128 only cuts garbage.
pub const MAX_TEXT_LEN: usize = 128;

/// Where the device-tree board model lives; the second path is the same file without the
/// `/proc` symlink, for systems that mount `/proc` oddly (containers).
const BOARD_MODEL_PATHS: [&str; 2] = [
    "/proc/device-tree/model",
    "/sys/firmware/devicetree/base/model",
];

/// SMBIOS chassis type as exposed by the kernel's DMI driver (absent on most ARM boards).
const CHASSIS_TYPE_PATH: &str = "/sys/class/dmi/id/chassis_type";

/// Directory of the kernel's power-supply class: one subdirectory per battery or charger.
const POWER_SUPPLY_DIR: &str = "/sys/class/power_supply";

/// At most this many power supplies are examined. Laptops have 2-6 (batteries, AC, USB-C
/// ports); the bound only stops a pathological sysfs from stalling start-up.
const MAX_POWER_SUPPLIES: usize = 64;

/// Reported memory is raised by `1 / MEMORY_HEADROOM_DIVISOR` (12.5 %) to estimate the nominal
/// size (see "Nominal memory" in the module doc). 8 covers a Pi's GPU split (~7 %) plus kernel
/// reservations; a smaller divisor would push 7 GiB VMs into the 8 GiB bracket.
const MEMORY_HEADROOM_DIVISOR: u64 = 8;

/// Below this nominal memory a machine is [`DeviceClass::Tiny`]: 512 MiB boards (Pi Zero) can
/// run the agent but not services next to it.
const TINY_MEMORY_BELOW_BYTES: u64 = GIB;

/// A board with at most this many cores is [`DeviceClass::Tiny`] (Pi Zero, Pi 1): the agent's
/// own work would compete with any service for the only core.
const TINY_MAX_CORES: u32 = 1;

/// Without a server chassis, a machine needs at least this many logical CPUs (and
/// [`SERVER_MIN_MEMORY_BYTES`]) to count as a server: below it, it is a workstation.
const SERVER_MIN_CORES: u32 = 16;

/// Nominal memory a machine needs (with [`SERVER_MIN_CORES`]) to count as a server.
const SERVER_MIN_MEMORY_BYTES: u64 = 32 * GIB;

/// SMBIOS chassis types of portable machines: 8 portable, 9 laptop, 10 notebook,
/// 14 sub-notebook, 30 tablet, 31 convertible, 32 detachable.
const PORTABLE_CHASSIS_TYPES: [u32; 7] = [8, 9, 10, 14, 30, 31, 32];

/// SMBIOS chassis types of servers: 17 main server chassis, 23 rack mount, 28 blade,
/// 29 blade enclosure.
const SERVER_CHASSIS_TYPES: [u32; 4] = [17, 23, 28, 29];

/// Score points per doubling of logical CPUs; with [`CORE_POINTS_MAX`] the maximum is reached
/// at 16 cores, where more cores stop mattering for the services a home mesh runs.
const CORE_POINTS_PER_DOUBLING: u32 = 10;

/// Most points cores can earn (40 % of the score).
const CORE_POINTS_MAX: u32 = 40;

/// Memory below this earns no points; each doubling above it earns
/// [`MEMORY_POINTS_PER_DOUBLING`]. 128 MiB is about what the agent itself needs.
const MEMORY_POINTS_FLOOR_BYTES: u64 = 128 * MIB;

/// Score points per doubling of memory above [`MEMORY_POINTS_FLOOR_BYTES`]; eight doublings
/// (128 MiB → 32 GiB) reach [`MEMORY_POINTS_MAX`].
const MEMORY_POINTS_PER_DOUBLING: u32 = 5;

/// Most points memory can earn (40 % of the score).
const MEMORY_POINTS_MAX: u32 = 40;

/// Points subtracted when running on battery: such a machine may vanish when the battery dies
/// or the lid closes, so placement should prefer a plugged-in peer of equal size.
const ON_BATTERY_PENALTY: u32 = 10;

/// Highest score; with 40 + 40 + 20 the formula reaches it exactly for a big server.
const MAX_SCORE: u32 = 100;

/// Added to `points * log2(ratio)` before rounding down, so that exact powers of two (4 cores,
/// 4 GiB) never lose a point to a libm that returns 1.9999999 for log2(4).
const LOG_EPSILON: f64 = 1e-9;

/// Lowest score for [`Profile::Full`].
const FULL_MIN_SCORE: u8 = 70;
/// Lowest score for [`Profile::Standard`].
const STANDARD_MIN_SCORE: u8 = 40;
/// Lowest score for [`Profile::Edge`]; below it, [`Profile::Lite`].
const EDGE_MIN_SCORE: u8 = 20;

/// The profile names accepted by [`Profile::from_str`], as listed in its error.
const VALID_PROFILES: &str = "full, standard, edge, lite";

/// This machine's hardware as advertised to peers and shown by `mesh peers`.
///
/// Field names are the wire names (JSON and CBOR); see `protocol/hardware-profile.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareInfo {
    /// Logical CPUs (hardware threads), at least 1.
    pub cores: u32,
    /// CPU brand string, e.g. "AMD Ryzen 7 5800X" or "Cortex-A72"; `""` if unknown.
    pub cpu_model: String,
    /// Total RAM in bytes as the OS reports it (`MemTotal`, a little under the label size);
    /// 0 if unknown.
    pub memory_bytes: u64,
    /// Operating system, lowercase as `std::env::consts::OS`: "linux", "macos", "windows".
    pub os: String,
    /// Human OS version, e.g. "Debian GNU/Linux 12" or "macOS 15.1.1 Sequoia"; `""` if unknown.
    pub os_version: String,
    /// CPU architecture of this binary, as `std::env::consts::ARCH`: "x86_64", "aarch64", "arm".
    pub arch: String,
    /// Kind of machine; see the module doc for the rules.
    pub device_class: DeviceClass,
    /// Device-tree board model, e.g. "Raspberry Pi 4 Model B Rev 1.4"; `None` off boards.
    #[serde(default)]
    pub board_model: Option<String>,
    /// Battery state at probe time; `None` if the machine has no battery.
    #[serde(default)]
    pub battery: Option<Battery>,
    /// Capability score, 0..=100; see the module doc for the formula.
    pub score: u8,
    /// Profile the agent runs with: derived from the score, or overridden by `--profile`.
    pub profile: Profile,
}

/// Battery state at probe time (all batteries of the machine combined).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Battery {
    /// Charge level in percent, 0..=100 (mean over batteries).
    pub percent: u8,
    /// True when the machine runs on external power (charging, full, or plugged in and held at
    /// a charge threshold); false means it is draining its battery.
    pub charging: bool,
}

/// Kind of machine, decided by [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    /// Rack or tower server: server chassis, or many cores and much memory.
    Server,
    /// Always-plugged machine that is not a server (also the default for VMs).
    Desktop,
    /// Portable machine: has a battery or a portable chassis.
    Laptop,
    /// Single-board computer recognised by its device-tree model (Raspberry Pi and the like).
    SingleBoard,
    /// Too small to host services next to the agent: < 1 GiB nominal memory or a one-core board.
    Tiny,
}

impl DeviceClass {
    /// Every class, from most to least capable.
    pub const ALL: [DeviceClass; 5] = [
        DeviceClass::Server,
        DeviceClass::Desktop,
        DeviceClass::Laptop,
        DeviceClass::SingleBoard,
        DeviceClass::Tiny,
    ];

    /// The wire and display name: "server", "desktop", "laptop", "single-board", "tiny".
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Server => "server",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Laptop => "laptop",
            DeviceClass::SingleBoard => "single-board",
            DeviceClass::Tiny => "tiny",
        }
    }

    /// Score bonus of the class: how much the kind of machine says about its fitness for
    /// services beyond cores and memory (always on, cooling, storage).
    const fn points(self) -> u32 {
        match self {
            DeviceClass::Server => 20,
            DeviceClass::Desktop => 15,
            DeviceClass::Laptop => 10,
            DeviceClass::SingleBoard => 5,
            DeviceClass::Tiny => 0,
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much work the agent takes on and how eagerly it polls; see [`ProfileSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Big, plugged-in machines: fastest reactions, most services.
    Full,
    /// Ordinary desktops and laptops.
    Standard,
    /// Small always-on boards: few services, slow polling, small logs.
    Edge,
    /// Tiny or weak machines: member of the mesh, no placed services.
    Lite,
}

impl Profile {
    /// Every profile, from most to least capable.
    pub const ALL: [Profile; 4] = [
        Profile::Full,
        Profile::Standard,
        Profile::Edge,
        Profile::Lite,
    ];

    /// The wire, display and `--profile` name: "full", "standard", "edge", "lite".
    pub const fn as_str(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Standard => "standard",
            Profile::Edge => "edge",
            Profile::Lite => "lite",
        }
    }

    /// What this profile changes in the agent.
    pub const fn settings(self) -> ProfileSettings {
        match self {
            Profile::Full => FULL_SETTINGS,
            Profile::Standard => STANDARD_SETTINGS,
            Profile::Edge => EDGE_SETTINGS,
            Profile::Lite => LITE_SETTINGS,
        }
    }

    /// Capability order: higher is more capable.
    const fn rank(self) -> u8 {
        match self {
            Profile::Full => 3,
            Profile::Standard => 2,
            Profile::Edge => 1,
            Profile::Lite => 0,
        }
    }

    /// `self`, lowered to `cap` if it is above it.
    const fn at_most(self, cap: Profile) -> Profile {
        if self.rank() > cap.rank() { cap } else { self }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = ParseProfileError;

    /// Parses a profile name, ignoring ASCII case and surrounding whitespace.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let wanted = input.trim();
        Profile::ALL
            .into_iter()
            .find(|profile| profile.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ParseProfileError {
                input: input.to_owned(),
            })
    }
}

/// A `--profile` value that names no profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile `{input}`; valid profiles: {VALID_PROFILES}")]
pub struct ParseProfileError {
    /// The rejected text, as given.
    pub input: String,
}

/// What a [`Profile`] changes in the agent.
///
/// | setting | full | standard | edge | lite |
/// |---|---|---|---|---|
/// | `mdns_ip_check_interval` | 5 s | 5 s | 10 s | 30 s |
/// | `redial_interval` | 0.5 s | 0.5 s | 2 s | 10 s |
/// | `event_ring_capacity` | 4096 | 2048 | 512 | 128 |
/// | `log_rotate_bytes` | 64 MiB | 16 MiB | 4 MiB | 1 MiB |
/// | `accepts_services` | yes | yes | yes | no |
/// | `max_services` | 64 | 16 | 4 | 1 |
/// | `snapshot_interval` | 250 ms | 500 ms | 1 s | 2 s |
///
/// Down the profiles, intervals never shrink and capacities never grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSettings {
    /// How often mDNS re-enumerates network interfaces to notice new or changed addresses
    /// (mdns-sd `set_ip_check_interval`, whole seconds) when the node saw no address change:
    /// after one (a netlink event) mDNS rescans every second for a few seconds anyway
    /// (`discovery::mdns::rescan`), so this only bounds what netlink does not report, such as
    /// a link that comes up with the address it already had. Each check walks all interfaces
    /// and wakes the CPU; every second it was ~5 % of an idle agent's CPU.
    pub mdns_ip_check_interval: Duration,
    /// How often the agent redials peers it knows but is not connected to. Each attempt costs a
    /// QUIC handshake (crypto, radio wake-up); shorter heals partitions sooner.
    pub redial_interval: Duration,
    /// How many audit events the agent keeps in memory (a ring; oldest dropped first). Bounds
    /// memory at a few hundred bytes per event; larger keeps more history for `mesh events`.
    pub event_ring_capacity: usize,
    /// Size in bytes a service's log file may reach before it is rotated. Small on boards,
    /// whose SD cards are small and wear out with writes.
    pub log_rotate_bytes: u64,
    /// Whether placement may choose this node for services that are not pinned to it. False
    /// still lets an operator pin a service here explicitly.
    pub accepts_services: bool,
    /// Most services this node runs at once, pinned ones included; placement never exceeds it.
    pub max_services: u32,
    /// Shortest time between two refreshes of the API's snapshot of peers: reads in between get
    /// the previous snapshot. Bounds the CPU a busy `mesh peers --watch` can cost.
    pub snapshot_interval: Duration,
}

/// Settings of [`Profile::Full`]: machines with cores and memory to spare react fastest
/// (mdns-sd's own 5 s interface check) and run up to 64 services.
const FULL_SETTINGS: ProfileSettings = ProfileSettings {
    mdns_ip_check_interval: Duration::from_secs(5),
    redial_interval: Duration::from_millis(500),
    event_ring_capacity: 4096,
    log_rotate_bytes: 64 * MIB,
    accepts_services: true,
    max_services: 64,
    snapshot_interval: Duration::from_millis(250),
};

/// Settings of [`Profile::Standard`]: ordinary desktops and laptops; half the polling rate and a
/// quarter of full's logs, still quick enough for a laptop that changes networks.
const STANDARD_SETTINGS: ProfileSettings = ProfileSettings {
    mdns_ip_check_interval: Duration::from_secs(5),
    redial_interval: Duration::from_millis(500),
    event_ring_capacity: 2048,
    log_rotate_bytes: 16 * MIB,
    accepts_services: true,
    max_services: 16,
    snapshot_interval: Duration::from_millis(500),
};

/// Settings of [`Profile::Edge`]: always-on boards that rarely change networks; slow polling,
/// small logs for SD cards, a handful of services.
const EDGE_SETTINGS: ProfileSettings = ProfileSettings {
    mdns_ip_check_interval: Duration::from_secs(10),
    redial_interval: Duration::from_secs(2),
    event_ring_capacity: 512,
    log_rotate_bytes: 4 * MIB,
    accepts_services: true,
    max_services: 4,
    snapshot_interval: Duration::from_secs(1),
};

/// Settings of [`Profile::Lite`]: the agent stays a mesh member but placement skips the node; one
/// pinned service at most, minute-scale polling, 1 MiB logs.
const LITE_SETTINGS: ProfileSettings = ProfileSettings {
    mdns_ip_check_interval: Duration::from_secs(30),
    redial_interval: Duration::from_secs(10),
    event_ring_capacity: 128,
    log_rotate_bytes: MIB,
    accepts_services: false,
    max_services: 1,
    snapshot_interval: Duration::from_secs(2),
};

/// Raw facts about a machine, as [`probe`] reads them or a test fabricates them. The input of
/// the pure core ([`classify`], [`capability_score`], [`from_inputs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeInputs {
    /// Logical CPUs; 0 if unknown.
    pub cores: u32,
    /// CPU brand string; `""` if unknown.
    pub cpu_model: String,
    /// Total RAM in bytes as reported by the OS; 0 if unknown.
    pub memory_bytes: u64,
    /// `std::env::consts::OS` style OS name.
    pub os: String,
    /// Human OS version; `""` if unknown.
    pub os_version: String,
    /// `std::env::consts::ARCH` style architecture.
    pub arch: String,
    /// Device-tree board model; `Some` means "this is a board".
    pub board_model: Option<String>,
    /// SMBIOS chassis type (`/sys/class/dmi/id/chassis_type`); `None` if unknown.
    pub chassis_type: Option<u32>,
    /// Battery state; `None` if there is no battery.
    pub battery: Option<Battery>,
}

/// Decides the machine's [`DeviceClass`] (rules in the module doc; first match wins).
pub fn classify(inputs: &ProbeInputs) -> DeviceClass {
    let memory = nominal_memory_bytes(inputs.memory_bytes);
    let is_board = inputs
        .board_model
        .as_deref()
        .is_some_and(|model| !model.trim().is_empty());
    let chassis_in = |types: &[u32]| inputs.chassis_type.is_some_and(|c| types.contains(&c));

    if memory < TINY_MEMORY_BELOW_BYTES || (is_board && inputs.cores <= TINY_MAX_CORES) {
        DeviceClass::Tiny
    } else if is_board {
        DeviceClass::SingleBoard
    } else if inputs.battery.is_some() || chassis_in(&PORTABLE_CHASSIS_TYPES) {
        DeviceClass::Laptop
    } else if chassis_in(&SERVER_CHASSIS_TYPES)
        || (inputs.cores >= SERVER_MIN_CORES && memory >= SERVER_MIN_MEMORY_BYTES)
    {
        DeviceClass::Server
    } else {
        DeviceClass::Desktop
    }
}

/// The machine's capability score, 0..=100 (formula in the module doc). Never decreases when
/// `cores` or `memory_bytes` grow and everything else stays the same.
pub fn capability_score(inputs: &ProbeInputs) -> u8 {
    let class = classify(inputs);
    let core_points = log2_points(
        f64::from(inputs.cores),
        CORE_POINTS_PER_DOUBLING,
        CORE_POINTS_MAX,
    );
    // `as f64` may round huge values but never reorders them, so the score stays monotonic.
    let memory_ratio =
        nominal_memory_bytes(inputs.memory_bytes) as f64 / MEMORY_POINTS_FLOOR_BYTES as f64;
    let memory_points = log2_points(memory_ratio, MEMORY_POINTS_PER_DOUBLING, MEMORY_POINTS_MAX);
    let penalty = if is_on_battery(inputs.battery.as_ref()) {
        ON_BATTERY_PENALTY
    } else {
        0
    };
    let score = (core_points + memory_points + class.points())
        .saturating_sub(penalty)
        .min(MAX_SCORE);
    u8::try_from(score).expect("score is clamped to 100, which fits in u8")
}

/// The profile a machine runs with, from its score and class: full >= 70, standard >= 40,
/// edge >= 20, else lite; tiny is always lite, single-board at most edge, on battery at most
/// standard.
pub fn profile_for(score: u8, class: DeviceClass, on_battery: bool) -> Profile {
    let by_score = if score >= FULL_MIN_SCORE {
        Profile::Full
    } else if score >= STANDARD_MIN_SCORE {
        Profile::Standard
    } else if score >= EDGE_MIN_SCORE {
        Profile::Edge
    } else {
        Profile::Lite
    };
    let by_class = match class {
        DeviceClass::Tiny => by_score.at_most(Profile::Lite),
        DeviceClass::SingleBoard => by_score.at_most(Profile::Edge),
        DeviceClass::Server | DeviceClass::Desktop | DeviceClass::Laptop => by_score,
    };
    if on_battery {
        by_class.at_most(Profile::Standard)
    } else {
        by_class
    }
}

/// Builds the [`HardwareInfo`] for `inputs`: classifies, scores, picks the profile, and bounds
/// the text fields to [`MAX_TEXT_LEN`] printable characters.
pub fn from_inputs(inputs: ProbeInputs) -> HardwareInfo {
    let device_class = classify(&inputs);
    let score = capability_score(&inputs);
    let profile = profile_for(score, device_class, is_on_battery(inputs.battery.as_ref()));
    HardwareInfo {
        cores: inputs.cores,
        cpu_model: bounded_text(&inputs.cpu_model),
        memory_bytes: inputs.memory_bytes,
        os: bounded_text(&inputs.os),
        os_version: bounded_text(&inputs.os_version),
        arch: bounded_text(&inputs.arch),
        device_class,
        board_model: inputs
            .board_model
            .as_deref()
            .map(bounded_text)
            .filter(|model| !model.is_empty()),
        battery: inputs.battery.map(|battery| Battery {
            percent: battery.percent.min(100),
            charging: battery.charging,
        }),
        score,
        profile,
    }
}

/// Probes this machine (see the module doc for sources and fallbacks). Blocking; never panics.
pub fn probe() -> HardwareInfo {
    let info = from_inputs(probe_inputs());
    tracing::info!(
        cores = info.cores,
        memory_bytes = info.memory_bytes,
        device_class = %info.device_class,
        score = info.score,
        profile = %info.profile,
        "hardware probed"
    );
    info
}

/// Reads the raw facts of this machine; every failure degrades to an "unknown" value.
fn probe_inputs() -> ProbeInputs {
    let refresh = RefreshKind::nothing()
        .with_cpu(CpuRefreshKind::nothing())
        .with_memory(MemoryRefreshKind::nothing().with_ram());
    let (cpu_count, cpu_model, memory_bytes) = match System::new_with_specifics(refresh) {
        Ok(system) => {
            let cpus = system.cpus();
            let model = cpus
                .first()
                .map(|cpu| {
                    let brand = cpu.brand().trim();
                    if brand.is_empty() {
                        cpu.vendor_id().trim()
                    } else {
                        brand
                    }
                })
                .unwrap_or_default()
                .to_owned();
            (cpus.len(), model, system.total_memory())
        }
        Err(err) => {
            tracing::warn!(%err, "sysinfo unavailable; cpu model and memory unknown");
            (0, String::new(), 0)
        }
    };
    let cores = if cpu_count == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cpu_count
    };
    let os_version = System::long_os_version()
        .map(|long| os_version_text(&long))
        .unwrap_or_else(|err| {
            tracing::debug!(%err, "OS version unknown");
            String::new()
        });
    ProbeInputs {
        cores: u32::try_from(cores).unwrap_or(u32::MAX),
        cpu_model,
        memory_bytes,
        os: std::env::consts::OS.to_owned(),
        os_version,
        arch: std::env::consts::ARCH.to_owned(),
        board_model: BOARD_MODEL_PATHS
            .iter()
            .find_map(|path| fs::read(path).ok().and_then(|raw| parse_board_model(&raw))),
        chassis_type: fs::read_to_string(CHASSIS_TYPE_PATH)
            .ok()
            .and_then(|text| parse_chassis_type(&text)),
        battery: read_battery(Path::new(POWER_SUPPLY_DIR)),
    }
}

/// Nominal memory: the reported size plus 12.5 % (see the module doc).
fn nominal_memory_bytes(reported: u64) -> u64 {
    reported.saturating_add(reported / MEMORY_HEADROOM_DIVISOR)
}

/// `min(max, floor(per_doubling * log2(ratio)))`, 0 when `ratio <= 1`.
fn log2_points(ratio: f64, per_doubling: u32, max: u32) -> u32 {
    if ratio.is_nan() || ratio <= 1.0 {
        return 0;
    }
    let points = (f64::from(per_doubling) * ratio.log2() + LOG_EPSILON).floor();
    if points >= f64::from(max) {
        max
    } else {
        // 0 < points < max <= u32::MAX, so the conversion is exact.
        points as u32
    }
}

/// True when a battery is present and the machine is not on external power.
fn is_on_battery(battery: Option<&Battery>) -> bool {
    battery.is_some_and(|battery| !battery.charging)
}

/// Trims, drops control characters and keeps at most [`MAX_TEXT_LEN`] characters.
fn bounded_text(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT_LEN)
        .collect()
}

/// sysinfo's Linux long version is "Linux (Debian GNU/Linux 12)"; `os` already says Linux, so
/// keep the distribution. Other platforms' strings ("macOS 15.1.1 Sequoia") pass unchanged.
fn os_version_text(long: &str) -> String {
    long.strip_prefix("Linux (")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or(long)
        .trim()
        .to_owned()
}

/// The device-tree model file is a NUL-terminated string; `None` if empty.
fn parse_board_model(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let model = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!model.is_empty()).then(|| model.to_owned())
}

/// The DMI chassis type file holds a decimal number and a newline.
fn parse_chassis_type(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

/// Reads one sysfs attribute, trimmed; `None` if missing or unreadable.
fn read_attribute(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// Reads one numeric sysfs attribute.
fn read_number(dir: &Path, name: &str) -> Option<u64> {
    read_attribute(dir, name)?.parse().ok()
}

/// Charge of one battery in percent: `capacity`, else `energy_now/energy_full`, else
/// `charge_now/charge_full`; clamped to 100.
fn battery_percent(dir: &Path) -> Option<u64> {
    let ratio = |now: &str, full: &str| {
        let full = read_number(dir, full).filter(|&full| full > 0)?;
        Some(read_number(dir, now)?.saturating_mul(100) / full)
    };
    read_number(dir, "capacity")
        .or_else(|| ratio("energy_now", "energy_full"))
        .or_else(|| ratio("charge_now", "charge_full"))
        .map(|percent| percent.min(100))
}

/// Combines the system batteries under `power_supply_dir` (normally `/sys/class/power_supply`)
/// into one [`Battery`]; `None` when there is no system battery (rules in the module doc).
fn read_battery(power_supply_dir: &Path) -> Option<Battery> {
    let entries = fs::read_dir(power_supply_dir).ok()?;
    let mut percent_sum: u64 = 0;
    let mut battery_count: u64 = 0;
    let mut external_power = false;
    for entry in entries.flatten().take(MAX_POWER_SUPPLIES) {
        let dir = entry.path();
        match read_attribute(&dir, "type").as_deref() {
            Some("Battery") => {
                let is_peripheral = read_attribute(&dir, "scope").as_deref() == Some("Device");
                let is_absent = read_attribute(&dir, "present").as_deref() == Some("0");
                if is_peripheral || is_absent {
                    continue;
                }
                if matches!(
                    read_attribute(&dir, "status").as_deref(),
                    Some("Charging" | "Full" | "Not charging")
                ) {
                    external_power = true;
                }
                if let Some(percent) = battery_percent(&dir) {
                    percent_sum += percent;
                    battery_count += 1;
                }
            }
            Some("Mains" | "USB") if read_attribute(&dir, "online").as_deref() == Some("1") => {
                external_power = true;
            }
            _ => {}
        }
    }
    let mean = percent_sum.checked_div(battery_count)?;
    Some(Battery {
        percent: u8::try_from(mean.min(100)).expect("percent is clamped to 100"),
        charging: external_power,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pi4() -> ProbeInputs {
        ProbeInputs {
            cores: 4,
            cpu_model: "Cortex-A72".into(),
            memory_bytes: 4 * GIB,
            os: "linux".into(),
            os_version: "Debian GNU/Linux 12".into(),
            arch: "aarch64".into(),
            board_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
            chassis_type: None,
            battery: None,
        }
    }

    fn pi_zero() -> ProbeInputs {
        ProbeInputs {
            cores: 1,
            cpu_model: "ARM1176".into(),
            memory_bytes: 512 * MIB,
            arch: "arm".into(),
            board_model: Some("Raspberry Pi Zero W Rev 1.1".into()),
            ..pi4()
        }
    }

    fn laptop(charging: bool) -> ProbeInputs {
        ProbeInputs {
            cores: 8,
            cpu_model: "Intel(R) Core(TM) i7-1165G7".into(),
            memory_bytes: 16 * GIB,
            os: "linux".into(),
            os_version: "Ubuntu 24.04".into(),
            arch: "x86_64".into(),
            board_model: None,
            chassis_type: Some(10),
            battery: Some(Battery {
                percent: 80,
                charging,
            }),
        }
    }

    fn server() -> ProbeInputs {
        ProbeInputs {
            cores: 32,
            cpu_model: "AMD EPYC 7543".into(),
            memory_bytes: 128 * GIB,
            os: "linux".into(),
            arch: "x86_64".into(),
            ..ProbeInputs::default()
        }
    }

    fn desktop() -> ProbeInputs {
        ProbeInputs {
            cores: 8,
            memory_bytes: 32 * GIB,
            chassis_type: Some(3),
            ..server()
        }
    }

    #[test]
    fn raspberry_pi_4_is_a_single_board_on_edge() {
        let info = from_inputs(pi4());
        assert_eq!(info.device_class, DeviceClass::SingleBoard);
        assert_eq!(info.score, 20 + 25 + 5);
        assert_eq!(info.profile, Profile::Edge);
    }

    #[test]
    fn pi_4_reporting_less_than_its_label_scores_the_same() {
        // A 4 GiB Pi 4 reports ~3.7 GiB MemTotal after the GPU split.
        let reported = ProbeInputs {
            memory_bytes: 3794 * MIB,
            ..pi4()
        };
        assert_eq!(capability_score(&reported), capability_score(&pi4()));
    }

    #[test]
    fn pi_zero_is_tiny_and_lite() {
        let info = from_inputs(pi_zero());
        assert_eq!(info.device_class, DeviceClass::Tiny);
        assert_eq!(info.score, 10);
        assert_eq!(info.profile, Profile::Lite);
    }

    #[test]
    fn four_core_pi_zero_2_is_tiny_by_memory() {
        let zero2 = ProbeInputs {
            cores: 4,
            memory_bytes: 427 * MIB,
            ..pi_zero()
        };
        assert_eq!(classify(&zero2), DeviceClass::Tiny);
        assert_eq!(from_inputs(zero2).profile, Profile::Lite);
    }

    #[test]
    fn one_gib_pi_3_is_a_single_board_not_tiny() {
        let pi3 = ProbeInputs {
            memory_bytes: 926 * MIB,
            board_model: Some("Raspberry Pi 3 Model B Rev 1.2".into()),
            ..pi4()
        };
        assert_eq!(classify(&pi3), DeviceClass::SingleBoard);
    }

    #[test]
    fn laptop_with_battery_is_a_laptop() {
        let plugged = from_inputs(laptop(true));
        assert_eq!(plugged.device_class, DeviceClass::Laptop);
        assert_eq!(plugged.score, 30 + 35 + 10);
        assert_eq!(plugged.profile, Profile::Full);

        let unplugged = from_inputs(laptop(false));
        assert_eq!(unplugged.score, 30 + 35 + 10 - 10);
        assert_eq!(unplugged.profile, Profile::Standard);
    }

    #[test]
    fn battery_alone_or_portable_chassis_alone_make_a_laptop() {
        let battery_only = ProbeInputs {
            chassis_type: None,
            ..laptop(true)
        };
        let chassis_only = ProbeInputs {
            battery: None,
            ..laptop(true)
        };
        assert_eq!(classify(&battery_only), DeviceClass::Laptop);
        assert_eq!(classify(&chassis_only), DeviceClass::Laptop);
    }

    #[test]
    fn big_laptop_on_battery_is_never_full() {
        let big = ProbeInputs {
            cores: 16,
            memory_bytes: 64 * GIB,
            ..laptop(false)
        };
        let info = from_inputs(big);
        assert_eq!(info.score, 40 + 40 + 10 - 10);
        assert_eq!(info.profile, Profile::Standard);
    }

    #[test]
    fn big_server_scores_100_and_runs_full() {
        let info = from_inputs(server());
        assert_eq!(info.device_class, DeviceClass::Server);
        assert_eq!(info.score, 100);
        assert_eq!(info.profile, Profile::Full);
    }

    #[test]
    fn server_chassis_or_size_make_a_server() {
        let rack = ProbeInputs {
            cores: 4,
            memory_bytes: 8 * GIB,
            chassis_type: Some(23),
            ..server()
        };
        assert_eq!(classify(&rack), DeviceClass::Server);
        // A nominal 32 GiB machine reports ~31.3 GiB and still counts.
        let reported = ProbeInputs {
            cores: 16,
            memory_bytes: 32_050 * MIB,
            chassis_type: None,
            ..server()
        };
        assert_eq!(classify(&reported), DeviceClass::Server);
        let workstation = ProbeInputs {
            cores: 12,
            ..reported
        };
        assert_eq!(classify(&workstation), DeviceClass::Desktop);
    }

    #[test]
    fn desktop_is_the_default() {
        let info = from_inputs(desktop());
        assert_eq!(info.device_class, DeviceClass::Desktop);
        assert_eq!(info.score, 30 + 40 + 15);
        assert_eq!(info.profile, Profile::Full);
        let vm = ProbeInputs {
            cores: 2,
            memory_bytes: 4 * GIB,
            chassis_type: Some(1),
            ..desktop()
        };
        assert_eq!(classify(&vm), DeviceClass::Desktop);
        assert_eq!(from_inputs(vm).profile, Profile::Standard);
    }

    #[test]
    fn unknown_everything_degrades_to_tiny_lite() {
        let info = from_inputs(ProbeInputs::default());
        assert_eq!(info.device_class, DeviceClass::Tiny);
        assert_eq!(info.score, 0);
        assert_eq!(info.profile, Profile::Lite);
    }

    #[test]
    fn profile_thresholds_and_caps() {
        use DeviceClass::*;
        assert_eq!(profile_for(70, Desktop, false), Profile::Full);
        assert_eq!(profile_for(69, Desktop, false), Profile::Standard);
        assert_eq!(profile_for(40, Desktop, false), Profile::Standard);
        assert_eq!(profile_for(39, Desktop, false), Profile::Edge);
        assert_eq!(profile_for(20, Desktop, false), Profile::Edge);
        assert_eq!(profile_for(19, Desktop, false), Profile::Lite);
        assert_eq!(profile_for(100, Tiny, false), Profile::Lite);
        assert_eq!(profile_for(100, SingleBoard, false), Profile::Edge);
        assert_eq!(profile_for(10, SingleBoard, false), Profile::Lite);
        assert_eq!(profile_for(100, Server, true), Profile::Standard);
        assert_eq!(profile_for(30, Laptop, true), Profile::Edge);
    }

    #[test]
    fn text_fields_are_bounded_and_cleaned() {
        let inputs = ProbeInputs {
            cpu_model: format!("  {}\u{1b}[31m  ", "x".repeat(500)),
            board_model: Some("   ".into()),
            ..desktop()
        };
        let info = from_inputs(inputs);
        assert_eq!(info.cpu_model.chars().count(), MAX_TEXT_LEN);
        assert!(!info.cpu_model.contains('\u{1b}'));
        assert_eq!(info.board_model, None);
        assert_eq!(info.device_class, DeviceClass::Desktop);
    }

    #[test]
    fn serde_names_match_display_and_wire_spec() {
        for class in DeviceClass::ALL {
            let json = serde_json::to_string(&class).expect("enum serializes");
            assert_eq!(json, format!("\"{class}\""));
        }
        for profile in Profile::ALL {
            let json = serde_json::to_string(&profile).expect("enum serializes");
            assert_eq!(json, format!("\"{profile}\""));
            assert_eq!(profile.to_string().parse::<Profile>(), Ok(profile));
        }
        assert_eq!(DeviceClass::SingleBoard.to_string(), "single-board");

        let info = from_inputs(pi4());
        let json = serde_json::to_value(&info).expect("info serializes");
        assert_eq!(json["device_class"], "single-board");
        assert_eq!(json["profile"], "edge");
        assert_eq!(json["board_model"], "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(json["battery"], serde_json::Value::Null);
        let back: HardwareInfo = serde_json::from_value(json).expect("info round-trips");
        assert_eq!(back, info);
    }

    #[test]
    fn optional_fields_may_be_omitted_on_the_wire() {
        let mut json = serde_json::to_value(from_inputs(laptop(true))).expect("serializes");
        let object = json.as_object_mut().expect("struct is a JSON object");
        object.remove("battery");
        object.remove("board_model");
        object.insert("future_field".into(), serde_json::Value::Bool(true));
        let back: HardwareInfo = serde_json::from_value(json).expect("still deserializes");
        assert_eq!(back.battery, None);
        assert_eq!(back.board_model, None);
    }

    #[test]
    fn profile_parses_leniently_and_errors_clearly() {
        assert_eq!("lite".parse::<Profile>(), Ok(Profile::Lite));
        assert_eq!(" FULL ".parse::<Profile>(), Ok(Profile::Full));
        let err = "turbo"
            .parse::<Profile>()
            .expect_err("turbo is not a profile");
        assert_eq!(
            err.to_string(),
            "unknown profile `turbo`; valid profiles: full, standard, edge, lite"
        );
        let listed: Vec<&str> = Profile::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(VALID_PROFILES, listed.join(", "));
    }

    #[test]
    fn lower_profiles_never_do_more() {
        for pair in Profile::ALL.windows(2) {
            let (higher, lower) = (pair[0].settings(), pair[1].settings());
            assert!(lower.mdns_ip_check_interval >= higher.mdns_ip_check_interval);
            assert!(lower.redial_interval >= higher.redial_interval);
            assert!(lower.snapshot_interval >= higher.snapshot_interval);
            assert!(lower.event_ring_capacity <= higher.event_ring_capacity);
            assert!(lower.log_rotate_bytes <= higher.log_rotate_bytes);
            assert!(lower.max_services <= higher.max_services);
            assert!(higher.accepts_services || !lower.accepts_services);
        }
        for profile in Profile::ALL {
            let settings = profile.settings();
            assert_eq!(
                settings.mdns_ip_check_interval.subsec_nanos(),
                0,
                "mdns-sd takes whole seconds"
            );
            assert!(settings.max_services >= 1 && settings.event_ring_capacity >= 1);
        }
        assert!(!Profile::Lite.settings().accepts_services);
    }

    #[test]
    fn os_version_drops_the_linux_wrapper() {
        assert_eq!(
            os_version_text("Linux (Debian GNU/Linux 12)"),
            "Debian GNU/Linux 12"
        );
        assert_eq!(
            os_version_text("macOS 15.1.1 Sequoia"),
            "macOS 15.1.1 Sequoia"
        );
        assert_eq!(os_version_text("Linux"), "Linux");
    }

    #[test]
    fn board_model_and_chassis_parse_sysfs_text() {
        assert_eq!(
            parse_board_model(b"Raspberry Pi 4 Model B Rev 1.4\0"),
            Some("Raspberry Pi 4 Model B Rev 1.4".into())
        );
        assert_eq!(parse_board_model(b"\0"), None);
        assert_eq!(parse_chassis_type("10\n"), Some(10));
        assert_eq!(parse_chassis_type("garbage"), None);
    }

    /// Writes `attributes` as files of a fake power supply `name` under `root`.
    fn fake_supply(root: &Path, name: &str, attributes: &[(&str, &str)]) {
        let dir = root.join(name);
        fs::create_dir(&dir).expect("create fake supply dir");
        for (attribute, value) in attributes {
            fs::write(dir.join(attribute), format!("{value}\n")).expect("write fake attribute");
        }
    }

    #[test]
    fn battery_reads_sysfs_power_supplies() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_battery(root.path()), None);

        fake_supply(
            root.path(),
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("capacity", "5"),
                ("status", "Discharging"),
            ],
        );
        assert_eq!(
            read_battery(root.path()),
            None,
            "a mouse battery is not the system's"
        );

        fake_supply(
            root.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("present", "1"),
                ("capacity", "70"),
                ("status", "Discharging"),
            ],
        );
        fake_supply(
            root.path(),
            "BAT1",
            &[
                ("type", "Battery"),
                ("energy_now", "45000000"),
                ("energy_full", "50000000"),
                ("status", "Unknown"),
            ],
        );
        assert_eq!(
            read_battery(root.path()),
            Some(Battery {
                percent: 80,
                charging: false
            })
        );

        fake_supply(root.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(
            read_battery(root.path()),
            Some(Battery {
                percent: 80,
                charging: true
            })
        );
    }

    #[test]
    fn full_or_threshold_held_battery_counts_as_external_power() {
        for status in ["Charging", "Full", "Not charging"] {
            let root = tempfile::tempdir().expect("tempdir");
            fake_supply(
                root.path(),
                "BAT0",
                &[("type", "Battery"), ("capacity", "120"), ("status", status)],
            );
            assert_eq!(
                read_battery(root.path()),
                Some(Battery {
                    percent: 100,
                    charging: true
                }),
                "status {status}"
            );
        }
    }

    #[test]
    fn probe_on_this_machine_is_sane() {
        let info = probe();
        assert!(info.cores >= 1);
        assert!(info.memory_bytes > 0);
        assert_eq!(info.arch, std::env::consts::ARCH);
        assert_eq!(info.os, std::env::consts::OS);
        assert!(info.score <= 100);
        assert!(info.cpu_model.chars().count() <= MAX_TEXT_LEN);
        if let Some(battery) = info.battery {
            assert!(battery.percent <= 100);
        }
    }

    fn any_inputs() -> impl Strategy<Value = ProbeInputs> {
        (
            0u32..512,
            0u64..(1 << 42),
            proptest::option::of(prop_oneof![Just(
                "Raspberry Pi 5 Model B Rev 1.0".to_owned()
            )]),
            proptest::option::of(0u32..40),
            proptest::option::of((0u8..=100, any::<bool>())),
        )
            .prop_map(
                |(cores, memory_bytes, board_model, chassis_type, battery)| ProbeInputs {
                    cores,
                    memory_bytes,
                    board_model,
                    chassis_type,
                    battery: battery.map(|(percent, charging)| Battery { percent, charging }),
                    ..ProbeInputs::default()
                },
            )
    }

    proptest! {
        #[test]
        fn score_is_monotonic_in_cores(inputs in any_inputs(), extra in 0u32..512) {
            let more = ProbeInputs { cores: inputs.cores + extra, ..inputs.clone() };
            prop_assert!(capability_score(&more) >= capability_score(&inputs));
        }

        #[test]
        fn score_is_monotonic_in_memory(inputs in any_inputs(), extra in 0u64..(1 << 42)) {
            let more = ProbeInputs { memory_bytes: inputs.memory_bytes + extra, ..inputs.clone() };
            prop_assert!(capability_score(&more) >= capability_score(&inputs));
        }

        #[test]
        fn info_respects_the_caps(inputs in any_inputs()) {
            let info = from_inputs(inputs);
            prop_assert!(info.score <= 100);
            if info.device_class == DeviceClass::Tiny {
                prop_assert_eq!(info.profile, Profile::Lite);
            }
            if info.battery.is_some_and(|b| !b.charging) {
                prop_assert_ne!(info.profile, Profile::Full);
            }
        }
    }
}
