//! The state directory's formats: log segments of checksummed records, and
//! the snapshot file; reading them back, damage included.

use super::{FileStoreError, io};
use crate::cluster_proto as cp;
use crate::store::{At, Entry, Frozen};
use prost::Message as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub(super) const LOG_MAGIC: &[u8; 8] = b"PILOTLG1";

pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"PILOTSN1";

/// Record header: length and checksum.
pub(super) const HEADER: usize = 8;

/// Payload before the entry: grace time and wall time.
pub(super) const TIMES: usize = 16;

/// The largest record a reader accepts (an entry is a few KiB at most).
pub(super) const MAX_RECORD: usize = 64 << 20;

pub(super) fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}"))
}

/// The segments in `dir`, by generation, ascending.
pub(super) fn segments(dir: &Path) -> Result<Vec<u64>, FileStoreError> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let name = item.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("log."))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// One record of a segment.
pub(super) fn record(entry: &Entry, at: At) -> Vec<u8> {
    let grace = u64::try_from(at.grace.as_nanos()).unwrap_or(u64::MAX);
    let wall = crate::clock::unix_ms(at.wall);
    let len = TIMES + entry.encoded_len();
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&grace.to_le_bytes());
    out.extend_from_slice(&wall.to_le_bytes());
    // Encoding into a Vec cannot fail: it grows as needed.
    let _ = entry.encode(&mut out);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What reading a segment found.
pub(super) struct SegmentRead {
    /// The entries, with their times.
    pub(super) entries: Vec<(Entry, At)>,
    /// Where the valid prefix ends.
    pub(super) valid_len: u64,
    /// What is wrong after it, if anything, and whether it is only a torn
    /// last record (the process died while writing it).
    pub(super) damage: Option<(String, bool)>,
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads a segment's records up to its end or the first damaged one.
pub(super) fn read_segment(bytes: &[u8]) -> SegmentRead {
    let mut out = SegmentRead {
        entries: Vec::new(),
        valid_len: 0,
        damage: None,
    };
    if bytes.len() < LOG_MAGIC.len() {
        // Created, header not (fully) written: nothing in it.
        out.damage = (!bytes.is_empty()).then(|| ("torn header".into(), true));
        return out;
    }
    if &bytes[..LOG_MAGIC.len()] != LOG_MAGIC {
        out.damage = Some(("not a Pilot Center log segment".into(), false));
        return out;
    }
    let mut at = LOG_MAGIC.len();
    out.valid_len = at as u64;
    while at < bytes.len() {
        let rest = bytes.len() - at;
        if rest < HEADER {
            out.damage = Some(("torn record header".into(), true));
            return out;
        }
        let len = u32_at(bytes, at) as usize;
        let crc = u32_at(bytes, at + 4);
        if !(TIMES..=MAX_RECORD).contains(&len) {
            out.damage = Some((format!("impossible record length {len}"), false));
            return out;
        }
        if rest - HEADER < len {
            out.damage = Some(("torn last record".into(), true));
            return out;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            // A bad checksum on the very last record is a torn write too.
            let last = at + HEADER + len == bytes.len();
            out.damage = Some(("checksum mismatch".into(), last));
            return out;
        }
        let entry = match Entry::decode(&payload[TIMES..]) {
            Ok(e) => e,
            Err(e) => {
                out.damage = Some((format!("undecodable entry: {e}"), false));
                return out;
            }
        };
        let at_time = At {
            grace: Duration::from_nanos(u64_at(payload, 0)),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(u64_at(payload, 8)),
        };
        out.entries.push((entry, at_time));
        at += HEADER + len;
        out.valid_len = at as u64;
    }
    out
}

/// Reads the snapshot: the segment after it and the state.
pub(super) fn read_snapshot(path: &Path) -> Result<Option<(u64, cp::Snapshot)>, FileStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let bad = |reason: &str| FileStoreError::BadSnapshot {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let head = SNAPSHOT_MAGIC.len() + 20;
    if bytes.len() < head || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
        return Err(bad("not a Pilot Center snapshot"));
    }
    let next = u64_at(&bytes, 8);
    let len = usize::try_from(u64_at(&bytes, 16)).unwrap_or(usize::MAX);
    let crc = u32_at(&bytes, 24);
    if bytes.len() - head != len {
        return Err(bad("truncated"));
    }
    let body = &bytes[head..];
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let snap = cp::Snapshot::decode(body).map_err(|e| bad(&e.to_string()))?;
    Ok(Some((next, snap)))
}

/// Replaces `dir/name` as a whole or not at all: `write` fills
/// `name.tmp`, which is synced and renamed over it, then the directory is
/// synced.
pub(super) fn replace_synced(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    write(&mut f)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Writes the snapshot of `state` as the one before segment `next`:
/// a new file, synced, renamed over the old one; then the segments below
/// `next` go.
pub(super) fn write_snapshot(
    dir: &Path,
    next: u64,
    state: Box<dyn Frozen>,
) -> std::io::Result<usize> {
    let body = state.into_snapshot().encode_to_vec();
    let mut head = Vec::with_capacity(28);
    head.extend_from_slice(SNAPSHOT_MAGIC);
    head.extend_from_slice(&next.to_le_bytes());
    head.extend_from_slice(&(body.len() as u64).to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    replace_synced(dir, "snapshot", |f| {
        f.write_all(&head)?;
        f.write_all(&body)
    })?;
    for generation in segments(dir).map_err(|e| std::io::Error::other(e.to_string()))? {
        if generation < next {
            std::fs::remove_file(segment_path(dir, generation))?;
        }
    }
    Ok(body.len())
}

/// Cuts `path` back to its first `len` bytes, durably.
pub(super) fn cut_back(path: &Path, len: u64) -> Result<(), FileStoreError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}
