//! `pilot-msu`'s configuration file (YAML); see `msu.yaml` at the root of
//! the repository for every setting with its default.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The center to serve.
    pub center: CenterLink,
    /// This MSU.
    pub msu: Identity,
    /// Where the hub's media socket is.
    pub media: Media,
    /// Where recordings are written.
    #[serde(default)]
    pub recording: Recording,
}

/// Recording settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// The directory recordings are written under (one directory per
    /// recording); created when needed.
    #[serde(default = "default_recording_dir")]
    pub dir: std::path::PathBuf,
    /// Recorded video that sent no key frame for this many seconds is
    /// asked for one (0: never), so that a playback can start and catch up
    /// anywhere in the file.
    #[serde(default = "default_keyframe_secs")]
    pub keyframe_secs: u64,
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            dir: default_recording_dir(),
            keyframe_secs: default_keyframe_secs(),
        }
    }
}

fn default_keyframe_secs() -> u64 {
    5
}

fn default_recording_dir() -> std::path::PathBuf {
    "recordings".into()
}

/// How to reach the center.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterLink {
    /// `wss://host:port/pilot/center` (or `ws://`); `?peer=` and
    /// `?incarnation=` are added.
    pub url: String,
    /// A bearer token, when the center requires one.
    #[serde(default)]
    pub token: String,
    /// Accept any certificate (the center's development one); for
    /// development only.
    #[serde(default)]
    pub insecure_tls: bool,
    /// For `wss://` without `insecure_tls`: a PEM file of the certificates
    /// to trust (the center's CA or its own certificate).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Seconds between heartbeats (`echo`).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Seconds between reports of the relays' counters (`relayStats`).
    #[serde(default = "default_heartbeat")]
    pub stats_secs: u64,
}

/// Who this MSU is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Its id, registered with the center and its identity (`?peer=`): an
    /// MSU back under the same id, on the same address, gets its relays
    /// again.
    pub id: String,
}

/// The media socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// The address to bind.
    pub listen_ip: IpAddr,
    /// The address SFUs send to (told to the center); `listen_ip` when
    /// unset.
    #[serde(default)]
    pub advertised_ip: Option<IpAddr>,
    /// The first port to try.
    pub port_min: u16,
    /// The last port to try: the first free one from `port_min` is bound.
    pub port_max: u16,
    /// RTP packets kept per stream to answer NACKs.
    #[serde(default = "default_history")]
    pub history_packets: usize,
    /// Key-frame requests for one stream are sent upstream at most once per
    /// this many milliseconds (the others are coalesced into it).
    #[serde(default = "default_keyframe_ms")]
    pub keyframe_interval_ms: u64,
}

fn default_heartbeat() -> u64 {
    5
}

fn default_history() -> usize {
    512
}

fn default_keyframe_ms() -> u64 {
    500
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Not valid YAML for this configuration.
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses and checks `yaml`.
    pub fn parse(yaml: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(yaml)?;
        if config.msu.id.is_empty() {
            return Err(ConfigError::Invalid("msu.id must not be empty".into()));
        }
        if config.media.port_min == 0 || config.media.port_max < config.media.port_min {
            return Err(ConfigError::Invalid(
                "media.port_min must be at least 1 and not above media.port_max".into(),
            ));
        }
        if config.media.history_packets == 0 {
            return Err(ConfigError::Invalid(
                "media.history_packets must be at least 1".into(),
            ));
        }
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configuration_parses() {
        let text = include_str!("../../msu.yaml");
        let config = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.media.history_packets, 512);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let yaml = "center: {url: 'ws://x'}\nmsu: {id: m}\nmedia: {listen_ip: 127.0.0.1, port_min: 10, port_max: 9}\n";
        assert!(Config::parse(yaml).is_err());
    }
}
