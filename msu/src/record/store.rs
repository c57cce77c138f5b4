//! Where recordings are kept: a directory per recording with its
//! manifest, the files' names, and what is told to the center.

use super::fmp4::{self, Fmp4File, TrackKind};
use super::{SILENCE, TrackSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What happened to a recording, for the center (`recordingStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingEvent {
    /// The recording.
    pub recording_id: String,
    /// The room.
    pub room_id: String,
    /// The recorded user.
    pub user_id: String,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A file was started.
    FileStarted {
        /// Its name in the recording's directory.
        file: String,
    },
    /// A file was closed.
    FileEnded {
        /// Its name.
        file: String,
        /// Its size.
        bytes: u64,
    },
    /// Something could not be recorded (a full disk, an unknown codec).
    Failed {
        /// Why, for a person.
        reason: String,
    },
}

/// One file of a recording, in its manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// The user.
    pub user_id: String,
    /// The file's name in the recording's directory.
    pub file: String,
    /// Its tracks.
    pub tracks: Vec<ManifestTrack>,
    /// Wall-clock time of its first sample (Unix ms).
    pub started_at_unix_ms: u64,
    /// When it was closed (Unix ms); absent while it is written, or when
    /// the MSU was killed (the file is readable up to its last fragment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_unix_ms: Option<u64>,
    /// Its size when closed.
    #[serde(default)]
    pub bytes: u64,
    /// Cut short: the MSU writing it was killed (found when it came back);
    /// readable up to its last fragment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// One track of a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestTrack {
    /// `video` or `audio`.
    pub kind: String,
    /// `H264` or `opus`.
    pub codec: String,
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// The pusher id.
    pub pusher_id: String,
    /// Picture size (video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u16>,
    /// Picture size (video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u16>,
}

/// A recording's manifest (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The recording.
    pub recording_id: String,
    /// The room.
    pub room_id: String,
    /// Its files, in the order they were started.
    pub files: Vec<ManifestFile>,
}

/// Why a recording could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An id that cannot name a directory.
    #[error("not a recording id: {0:?}")]
    BadId(String),
    /// The file system refused.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// Where recordings are kept, and their manifests.
pub struct Store {
    dir: PathBuf,
    /// A recorded video stream gets a key-frame request when it sent none
    /// for this long (0: never), so that a playback can start, and catch up
    /// after a loss, anywhere.
    pub(super) keyframe_every: Duration,
    /// A recorded user whose SFU sent nothing for this long is reported
    /// (once per silence).
    pub(super) silence: Duration,
    manifests: Mutex<HashMap<String, Manifest>>,
    events: tokio::sync::mpsc::UnboundedSender<RecordingEvent>,
}

/// Whether `id` can name a recording's directory: the center's rule for
/// recording ids (letters, digits, `-` and `_`), held here again because
/// it comes from the center.
pub use pilot_center::ids::valid_recording_id as valid_id;

/// A user id as a file name: kept when plain, else hex-escaped byte by byte
/// (`%xx`), so two ids never share a name.
pub fn file_stem(user_id: &str) -> String {
    let mut out = String::new();
    for b in user_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Recordings under `dir` (created when needed); what happens is sent
    /// to `events`.
    pub fn new(dir: PathBuf, events: tokio::sync::mpsc::UnboundedSender<RecordingEvent>) -> Self {
        Self {
            dir,
            keyframe_every: Duration::ZERO,
            silence: SILENCE,
            manifests: Mutex::default(),
            events,
        }
    }

    /// Asks recorded video for a key frame when it sent none for `every`.
    pub fn with_keyframe_every(mut self, every: Duration) -> Self {
        self.keyframe_every = every;
        self
    }

    /// Reports a recorded user whose SFU sent nothing for `silence`.
    pub fn with_silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// The directory of recording `id`.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Manifest>> {
        self.manifests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what it held of recording `id` (deleted).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The manifest of `id` as it stands (read from disk the first time).
    pub fn manifest(&self, id: &str) -> Option<Manifest> {
        let mut all = self.lock();
        if let Some(m) = all.get(id) {
            return Some(m.clone());
        }
        let text = std::fs::read_to_string(self.dir_of(id).join("manifest.json")).ok()?;
        let m: Manifest = serde_json::from_str(&text).ok()?;
        all.insert(id.to_owned(), m.clone());
        Some(m)
    }

    pub(super) fn emit(&self, recording_id: &str, room_id: &str, user_id: &str, kind: EventKind) {
        let _ = self.events.send(RecordingEvent {
            recording_id: recording_id.to_owned(),
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
            kind,
        });
    }

    /// Changes the manifest of `recording_id` with `change` and writes it
    /// (a new file, synced, renamed over the old one).
    fn update(
        &self,
        recording_id: &str,
        room_id: &str,
        change: impl FnOnce(&mut Manifest),
    ) -> Result<(), StoreError> {
        let dir = self.dir_of(recording_id);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| StoreError::Io { path, error }
        };
        // Loaded first, so that an MSU back after a restart appends.
        let _ = self.manifest(recording_id);
        let mut all = self.lock();
        let m = all
            .entry(recording_id.to_owned())
            .or_insert_with(|| Manifest {
                recording_id: recording_id.to_owned(),
                room_id: room_id.to_owned(),
                files: Vec::new(),
            });
        change(m);
        let text = serde_json::to_vec_pretty(m).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join("manifest.json.tmp");
        std::fs::write(&tmp, &text).map_err(io(&tmp))?;
        let path = dir.join("manifest.json");
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// A new file for `user_id` in recording `recording_id`: the next free
    /// part number.
    pub(super) fn new_file(
        &self,
        recording_id: &str,
        room_id: &str,
        user_id: &str,
        tracks: &[TrackKind],
        specs: &[&TrackSpec],
        started: SystemTime,
    ) -> Result<Fmp4File, StoreError> {
        let dir = self.dir_of(recording_id);
        std::fs::create_dir_all(&dir).map_err(|error| StoreError::Io {
            path: dir.clone(),
            error,
        })?;
        let stem = file_stem(user_id);
        let mut part = 1;
        let (file, name) = loop {
            let name = format!("{stem}-{part}.mp4");
            match Fmp4File::create(&dir.join(&name), tracks) {
                Ok(f) => break (f, name),
                Err(fmp4::WriteError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    part += 1;
                }
                Err(fmp4::WriteError::Io { path, error }) => {
                    return Err(StoreError::Io { path, error });
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: dir.join(&name),
                        error: std::io::Error::other(e.to_string()),
                    });
                }
            }
        };
        let entry = ManifestFile {
            user_id: user_id.to_owned(),
            file: name.clone(),
            tracks: tracks
                .iter()
                .zip(specs)
                .map(|(kind, spec)| match kind {
                    TrackKind::H264 { width, height, .. } => ManifestTrack {
                        kind: "video".into(),
                        codec: "H264".into(),
                        ssrc: spec.ssrc,
                        pusher_id: spec.pusher_id.clone(),
                        width: Some(*width),
                        height: Some(*height),
                    },
                    TrackKind::Opus { .. } => ManifestTrack {
                        kind: "audio".into(),
                        codec: "opus".into(),
                        ssrc: spec.ssrc,
                        pusher_id: spec.pusher_id.clone(),
                        width: None,
                        height: None,
                    },
                })
                .collect(),
            started_at_unix_ms: unix_ms(started),
            ended_at_unix_ms: None,
            bytes: 0,
            interrupted: false,
        };
        // Files of this user still open in the manifest were cut short by
        // an MSU killed while writing them (this process writes one file
        // per user and recording): closed now, as they are on disk.
        let mut cut = Vec::new();
        self.update(recording_id, room_id, |m| {
            for f in m.files.iter_mut() {
                if f.user_id == user_id && f.ended_at_unix_ms.is_none() {
                    let meta = std::fs::metadata(dir.join(&f.file)).ok();
                    f.bytes = meta.as_ref().map_or(0, std::fs::Metadata::len);
                    f.ended_at_unix_ms =
                        Some(meta.and_then(|m| m.modified().ok()).map_or(0, unix_ms));
                    f.interrupted = true;
                    cut.push((f.file.clone(), f.bytes));
                }
            }
            m.files.push(entry);
        })?;
        for (file, bytes) in cut {
            tracing::warn!(recording.id = recording_id, user.id = user_id, %file, bytes, "a file cut short by an earlier process, closed as it is");
            self.emit(
                recording_id,
                room_id,
                user_id,
                EventKind::FileEnded { file, bytes },
            );
        }
        self.emit(
            recording_id,
            room_id,
            user_id,
            EventKind::FileStarted { file: name },
        );
        Ok(file)
    }

    pub(super) fn end_file(
        &self,
        recording_id: &str,
        room_id: &str,
        user_id: &str,
        file: &str,
        bytes: u64,
    ) {
        let now = unix_ms(SystemTime::now());
        let updated = self.update(recording_id, room_id, |m| {
            if let Some(f) = m.files.iter_mut().rev().find(|f| f.file == file) {
                f.ended_at_unix_ms = Some(now);
                f.bytes = bytes;
            }
        });
        if let Err(e) = updated {
            tracing::warn!(recording.id = recording_id, error = %e, "manifest not updated");
        }
        self.emit(
            recording_id,
            room_id,
            user_id,
            EventKind::FileEnded {
                file: file.to_owned(),
                bytes,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_user_names_make_safe_paths() {
        assert!(valid_id("20261207-abc_1"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert_eq!(file_stem("alice"), "alice");
        assert_eq!(file_stem("../a b"), "%2e%2e%2fa%20b");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
    }
}
