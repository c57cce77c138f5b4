//! Recording: the MSU writes what its hub relays for a publisher into one
//! fragmented MP4 file per user ([`fmp4`]), H264 ([`h264`]) and Opus
//! timed by their RTP timestamps, and a manifest per recording.
//!
//! Each recorded user has a thread of its own ([`Recorder`]): the hub hands
//! it packets through a bounded queue (never waiting: a full queue drops
//! the packet and counts it), so file writes never hold up the media path.
//! Memory per stream is bounded by that queue, a reorder window of
//! [`REORDER_PACKETS`], at most [`AUDIO_WAIT`] of audio held while the first
//! key frame is awaited, and one fragment (a second of media).
//!
//! Layout: `DIR/RECORDING/manifest.json` and `DIR/RECORDING/USER-N.mp4`,
//! one file per user and part (a new part when the MSU comes back, or when
//! a user's tracks change). The manifest says who, which tracks and codecs,
//! and each file's wall-clock start and end.

pub mod fmp4;
pub mod h264;
pub mod reader;
mod recorder;
mod store;

pub use recorder::{AUDIO_WAIT, QUEUE_PACKETS, REORDER_PACKETS, Recorder, SILENCE, TrackSpec};
pub use store::{
    EventKind, Manifest, ManifestFile, ManifestTrack, RecordingEvent, Store, StoreError, file_stem,
    valid_id,
};
