//! The state directory (`center.state_dir`): a single center's log of
//! entries kept on local disk, so a restart or an upgrade loses nothing.
//!
//! Layout (docs/STATE.md has the why):
//! - `log.N`: segments of the log, `PILOTLG1` then records, each
//!   `len: u32 LE | crc32: u32 LE | payload`, the payload being
//!   `grace: u64 LE ns | wall: u64 LE ms | pilot.cluster.v1.Entry`;
//! - `snapshot`: `PILOTSN1 | next segment: u64 LE | len: u64 LE |
//!   crc32: u32 LE | pilot.cluster.v1.Snapshot`, the state after every
//!   entry of the segments below `next segment` (the same codec a Redis
//!   cluster's joining node loads);
//! - `LOCK`: held while a center uses the directory;
//! - `epoch`: the epoch the last start took, in decimal: each start takes a
//!   higher one (and never one below [`crate::center::ids::epoch_floor`]),
//!   written and synced before any session opens, so session ids never
//!   repeat across restarts ([`crate::center::ids`]).
//!
//! On start the snapshot is loaded and the segments from its `next` on are
//! replayed, in order, with the time each entry was first applied at; then
//! every session of the former process is closed (its users wait out the
//! reconnect grace for their peer to come back under its identity). A torn
//! last record (the process died mid-write) is cut off with a warning; a
//! record that fails its checksum with more after it stops the start with
//! an error that says how to keep the valid prefix ([`repair`]).
//!
//! Durability (`center.fsync`): `always` writes and syncs each entry before
//! it is applied (its reply and notifications follow durability); `batch`
//! and `never` gather entries and write them every [`FLUSH_EVERY`], `batch`
//! syncing them too. A process killed loses at most the last interval of
//! `batch`/`never`; a machine that loses power also what the OS had not
//! written (`never`).

use crate::center::ids::{MAX_EPOCH, epoch_floor};
use crate::center::{At, Center, CenterConfig, Entry, FrozenState, Store};
use crate::cluster_proto as cp;
use crate::error::CenterError;
use parking_lot::{Condvar, Mutex};
use prost::Message as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How often `batch` and `never` write what was gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
const LOG_MAGIC: &[u8; 8] = b"PILOTLG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"PILOTSN1";
/// Record header: length and checksum.
const HEADER: usize = 8;
/// Payload before the entry: grace time and wall time.
const TIMES: usize = 16;
/// The largest record a reader accepts (an entry is a few KiB at most).
const MAX_RECORD: usize = 64 << 20;

/// When entries reach the disk (`center.fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Each entry written and synced before it is applied.
    Always,
    /// Entries written and synced every [`FLUSH_EVERY`] (group commit).
    #[default]
    Batch,
    /// Entries written every [`FLUSH_EVERY`]; the OS syncs when it likes.
    Never,
}

/// Settings of the state directory.
#[derive(Debug, Clone)]
pub struct FileStoreConfig {
    /// The directory.
    pub dir: PathBuf,
    /// When entries reach the disk.
    pub fsync: Fsync,
    /// Entries between snapshots (each snapshot lets the log before it go).
    pub snapshot_every: u64,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// A file could not be read or written.
    #[error("state directory: {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Another process uses the directory.
    #[error(
        "state directory {path} is in use by another center (its LOCK is held); \
         stop that one, or give this one another center.state_dir"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A log segment is damaged before its end.
    #[error(
        "state directory: {path}: damaged at byte {offset} ({reason}); the {entries} entries \
         before it are intact. To start from them, run `pilot-center repair-state {dir}` \
         (it keeps that prefix and moves the rest to *.damaged), or move the directory \
         aside to start empty"
    )]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// The directory.
        dir: String,
        /// Where the damage starts.
        offset: u64,
        /// Intact entries before it in this segment.
        entries: u64,
        /// What is wrong.
        reason: String,
    },
    /// The epoch file cannot be read.
    #[error(
        "state directory: {path}: unreadable epoch ({reason}); remove the file to take \
         an epoch from the clock (session ids of recent starts may then repeat)"
    )]
    BadEpoch {
        /// The epoch file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot cannot be read.
    #[error(
        "state directory: {path}: unreadable snapshot ({reason}); the state cannot be \
         rebuilt without it. Move the directory aside to start empty"
    )]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileStoreError + '_ {
    move |error| FileStoreError::Io {
        path: path.to_owned(),
        error,
    }
}

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}"))
}

/// The segments in `dir`, by generation, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, FileStoreError> {
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
fn record(entry: &Entry, at: At) -> Vec<u8> {
    let grace = u64::try_from(at.grace.as_nanos()).unwrap_or(u64::MAX);
    let wall = crate::center::unix_ms(at.wall);
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
struct Read {
    /// The entries, with their times.
    entries: Vec<(Entry, At)>,
    /// Where the valid prefix ends.
    valid_len: u64,
    /// What is wrong after it, if anything, and whether it is only a torn
    /// last record (the process died while writing it).
    damage: Option<(String, bool)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads a segment's records up to its end or the first damaged one.
fn read_segment(bytes: &[u8]) -> Read {
    let mut out = Read {
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
fn read_snapshot(path: &Path) -> Result<Option<(u64, cp::Snapshot)>, FileStoreError> {
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

/// Takes this start's epoch: above the last one the directory kept and not
/// below the clock's floor; kept (written, synced, renamed, the directory
/// synced) before it is used.
fn take_epoch(dir: &Path) -> Result<u32, FileStoreError> {
    let path = dir.join("epoch");
    let bad = |reason: String| FileStoreError::BadEpoch {
        path: path.clone(),
        reason,
    };
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|e| bad(format!("{e}: {:?}", text.trim())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(bad(e.to_string())),
    };
    let now_ms = crate::center::unix_ms(SystemTime::now());
    let epoch = last.saturating_add(1).max(epoch_floor(now_ms));
    if epoch > MAX_EPOCH {
        return Err(bad(format!("{epoch} is past the last epoch, {MAX_EPOCH}")));
    }
    replace_synced(dir, "epoch", |f| {
        f.write_all(format!("{epoch}\n").as_bytes())
    })
    .map_err(io(&path))?;
    Ok(epoch)
}

/// Replaces `dir/name` as a whole or not at all: `write` fills
/// `name.tmp`, which is synced and renamed over it, then the directory is
/// synced.
fn replace_synced(
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
fn write_snapshot(dir: &Path, next: u64, state: FrozenState) -> std::io::Result<usize> {
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

/// Appends records to segment files, opening the next one when the
/// generation moves on.
struct SegmentWriter {
    dir: PathBuf,
    current: Option<Segment>,
}

/// The segment being written.
struct Segment {
    generation: u64,
    file: File,
    /// Its length: where a failed write is cut back to.
    len: u64,
}

impl SegmentWriter {
    fn write(&mut self, generation: u64, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.generation != generation)
        {
            if let Some(old) = self.current.take()
                && sync
            {
                old.file.sync_data()?;
            }
            let path = segment_path(&self.dir, generation);
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            let mut len = file.metadata()?.len();
            if len == 0 {
                file.write_all(LOG_MAGIC)?;
                len = LOG_MAGIC.len() as u64;
            }
            self.current = Some(Segment {
                generation,
                file,
                len,
            });
        }
        let Some(segment) = self.current.as_mut() else {
            return Ok(());
        };
        let written = segment.file.write_all(bytes).and_then(|()| {
            if sync {
                segment.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => segment.len += bytes.len() as u64,
            // Never leave half a record before the next one.
            Err(_) => {
                let _ = segment.file.set_len(segment.len);
            }
        }
        written
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match &self.current {
            Some(s) => s.file.sync_data(),
            None => Ok(()),
        }
    }
}

/// Cuts `path` back to its first `len` bytes, durably.
fn cut_back(path: &Path, len: u64) -> Result<(), FileStoreError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// What appends and the flusher share.
struct Pending {
    /// The generation new records go to.
    generation: u64,
    /// Records of `generation` not yet written (`batch`, `never`).
    bytes: Vec<u8>,
    /// Records of earlier generations not yet written, in order.
    sealed: Vec<(u64, Vec<u8>)>,
    /// Writes each record itself (`always`, and after the flusher stopped).
    direct: Option<SegmentWriter>,
}

struct Shared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    stop: AtomicBool,
    healthy: AtomicBool,
}

/// The state directory as the center's store (see the module docs).
pub struct FileStore {
    shared: Arc<Shared>,
    /// This start's epoch: the high bits of its session ids.
    epoch: u32,
    fsync: Fsync,
    snapshot_every: u64,
    since_snapshot: AtomicU64,
    compacting: Arc<AtomicBool>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the store's life: one center per directory.
    _lock: File,
}

impl Store for FileStore {
    fn node_number(&self) -> u32 {
        self.epoch
    }

    fn append(&self, entry: &Entry, at: At) -> Result<(), CenterError> {
        let bytes = record(entry, at);
        let mut p = self.shared.pending.lock();
        let generation = p.generation;
        if let Some(w) = p.direct.as_mut() {
            if let Err(e) = w.write(generation, &bytes, self.fsync != Fsync::Never) {
                if self.shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(dir = %self.shared.dir.display(), error = %e, "state directory: cannot write: changes refused");
                }
                return Err(CenterError::StoreUnavailable);
            }
            self.shared.healthy.store(true, Ordering::Relaxed);
        } else {
            p.bytes.extend_from_slice(&bytes);
        }
        self.since_snapshot.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn ready(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    fn wants_snapshot(&self) -> bool {
        self.since_snapshot.load(Ordering::Relaxed) >= self.snapshot_every
            && !self.compacting.load(Ordering::Relaxed)
    }

    fn compact(&self, state: FrozenState) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since_snapshot.store(0, Ordering::Relaxed);
        let next = self.seal();
        let dir = self.shared.dir.clone();
        let compacting = self.compacting.clone();
        // Copying and encoding every user takes a while on a large state:
        // off the center's lock, on a thread of its own.
        let spawned = std::thread::Builder::new()
            .name("pilot-snapshot".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match write_snapshot(&dir, next, state) {
                    Ok(bytes) => {
                        tracing::info!(bytes, took = ?started.elapsed(), next, "state snapshot written")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot write a state snapshot"),
                }
                compacting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the snapshot thread");
            self.compacting.store(false, Ordering::Release);
        }
    }

    fn close(&self, state: FrozenState) -> Result<(), CenterError> {
        self.stop_flusher();
        let next = self.seal();
        // What is sealed was written by the flusher as it stopped; anything
        // made from now on is written directly.
        write_snapshot(&self.shared.dir, next, state).map_err(|e| {
            tracing::error!(error = %e, "cannot write the final state snapshot");
            CenterError::StoreUnavailable
        })?;
        tracing::info!(dir = %self.shared.dir.display(), "state saved");
        Ok(())
    }
}

impl FileStore {
    /// Closes the current segment: records from now on go to the next one,
    /// whose generation is returned (the snapshot of the state now comes
    /// before it).
    fn seal(&self) -> u64 {
        let mut p = self.shared.pending.lock();
        let bytes = std::mem::take(&mut p.bytes);
        let generation = p.generation;
        if !bytes.is_empty() {
            p.sealed.push((generation, bytes));
        }
        p.generation += 1;
        p.generation
    }

    /// Stops the flusher after it wrote everything gathered; from then on
    /// each record is written as it comes.
    fn stop_flusher(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        if let Some(handle) = self.flusher.lock().take() {
            let _ = handle.join();
        }
        let mut p = self.shared.pending.lock();
        if p.direct.is_none() {
            p.direct = Some(SegmentWriter {
                dir: self.shared.dir.clone(),
                current: None,
            });
        }
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// Writes what appends gathered, every [`FLUSH_EVERY`], until stopped (then
/// once more).
fn flush_loop(shared: Arc<Shared>, sync: bool) {
    let mut writer = SegmentWriter {
        dir: shared.dir.clone(),
        current: None,
    };
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let chunks = {
            let mut p = shared.pending.lock();
            if !stopping && p.bytes.is_empty() && p.sealed.is_empty() {
                shared.wake.wait_for(&mut p, FLUSH_EVERY);
            }
            let mut chunks = std::mem::take(&mut p.sealed);
            if !p.bytes.is_empty() {
                let bytes = std::mem::take(&mut p.bytes);
                chunks.push((p.generation, bytes));
            }
            chunks
        };
        let mut failed = None;
        for (i, (generation, bytes)) in chunks.iter().enumerate() {
            if let Err(e) = writer.write(*generation, bytes, false) {
                failed = Some((i, e));
                break;
            }
        }
        if failed.is_none()
            && sync
            && let Err(e) = writer.sync()
        {
            failed = Some((chunks.len(), e));
        }
        match failed {
            None => {
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("state directory writable again");
                }
            }
            Some((i, e)) => {
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(dir = %shared.dir.display(), error = %e, "state directory: cannot write; retrying");
                }
                // Kept, in order, ahead of what came meanwhile.
                let mut p = shared.pending.lock();
                let mut again: Vec<(u64, Vec<u8>)> = chunks.into_iter().skip(i).collect();
                if let Some((g, _)) = again.last()
                    && *g == p.generation
                    && let Some((_, mut bytes)) = again.pop()
                {
                    bytes.extend_from_slice(&p.bytes);
                    p.bytes = bytes;
                }
                again.append(&mut p.sealed);
                p.sealed = again;
                drop(p);
                if stopping {
                    tracing::error!("state directory: stopping with entries not written");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        if stopping {
            return;
        }
    }
}

/// What opening the state directory found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovered {
    /// Entries replayed after the snapshot.
    pub entries: u64,
    /// Sessions of the former process, now closed.
    pub sessions: usize,
    /// Users in the state, every one waiting for its peer or held.
    pub users: usize,
}

/// Opens (or creates) the state directory, builds the center from what it
/// keeps, and returns it ready to serve: the former process's sessions are
/// closed, so their users wait out the reconnect grace.
pub fn open(
    config: &FileStoreConfig,
    center_config: CenterConfig,
) -> Result<(Center, Recovered), FileStoreError> {
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(FileStoreError::Locked { path: dir.clone() });
    }
    let started = std::time::Instant::now();
    let epoch = take_epoch(dir)?;
    let snapshot_path = dir.join("snapshot");
    let snapshot = read_snapshot(&snapshot_path)?;
    let first = snapshot.as_ref().map_or(0, |(next, _)| *next);
    let found = segments(dir)?;
    // Segments a snapshot covers (left by a stop before they were removed).
    for g in found.iter().filter(|g| **g < first) {
        let path = segment_path(dir, *g);
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let to_replay: Vec<u64> = found.into_iter().filter(|g| *g >= first).collect();
    let last_generation = to_replay.last().copied().unwrap_or(first);

    let shared = Arc::new(Shared {
        dir: dir.clone(),
        pending: Mutex::new(Pending {
            // A new segment per start: what was read is never appended to.
            generation: last_generation + 1,
            bytes: Vec::new(),
            sealed: Vec::new(),
            direct: (config.fsync == Fsync::Always).then(|| SegmentWriter {
                dir: dir.clone(),
                current: None,
            }),
        }),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
        healthy: AtomicBool::new(true),
    });
    let flusher = if config.fsync == Fsync::Always {
        None
    } else {
        let shared = shared.clone();
        let sync = config.fsync == Fsync::Batch;
        Some(
            std::thread::Builder::new()
                .name("pilot-state-flush".into())
                .spawn(move || flush_loop(shared, sync))
                .map_err(io(dir))?,
        )
    };
    let store = Arc::new(FileStore {
        shared,
        epoch,
        fsync: config.fsync,
        snapshot_every: config.snapshot_every.max(1),
        since_snapshot: AtomicU64::new(0),
        compacting: Arc::new(AtomicBool::new(false)),
        flusher: Mutex::new(flusher),
        _lock: lock,
    });
    let center = Center::with_store(center_config, store.clone());
    if let Some((_, snap)) = &snapshot {
        center.load_snapshot(snap);
    }
    let mut recovered = Recovered::default();
    for (i, generation) in to_replay.iter().enumerate() {
        let path = segment_path(dir, *generation);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let read = read_segment(&bytes);
        let is_last = i + 1 == to_replay.len();
        if let Some((reason, torn)) = &read.damage {
            if !(*torn && is_last) {
                return Err(FileStoreError::Damaged {
                    path: path.clone(),
                    dir: dir.display().to_string(),
                    offset: read.valid_len,
                    entries: read.entries.len() as u64,
                    reason: reason.clone(),
                });
            }
            tracing::warn!(file = %path.display(), at = read.valid_len, reason, "state directory: the last record was cut short (the process stopped while writing it); the entries before it are kept");
            cut_back(&path, read.valid_len)?;
        }
        for (entry, at) in read.entries {
            center.replay(entry, at);
            recovered.entries += 1;
        }
    }
    recovered.sessions = center.end_former_sessions();
    recovered.users = center.counts().2;
    // The one line about the past: the entries replayed logged nothing of
    // their own (they were logged when they happened).
    tracing::info!(dir = %dir.display(), epoch, snapshot = snapshot.is_some(), entries = recovered.entries, sessions = recovered.sessions, users = recovered.users, took = ?started.elapsed(), "state loaded: the former sessions' users wait for their peers");
    if recovered.entries > 0 {
        // The next start reads one snapshot instead of this log.
        center.compact_store();
    }
    Ok((center, recovered))
}

/// Makes a damaged state directory usable again: in the first damaged
/// segment the valid prefix is kept and the rest moved to
/// `log.N.damaged`; later segments are moved aside whole. Returns what was
/// moved.
pub fn repair(dir: &Path) -> Result<Vec<PathBuf>, FileStoreError> {
    let mut moved = Vec::new();
    let mut damaged = false;
    for generation in segments(dir)? {
        let path = segment_path(dir, generation);
        let aside = dir.join(format!("log.{generation}.damaged"));
        if damaged {
            std::fs::rename(&path, &aside).map_err(io(&path))?;
            moved.push(aside);
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let read = read_segment(&bytes);
        if read.damage.is_none() {
            continue;
        }
        damaged = true;
        let cut = usize::try_from(read.valid_len).unwrap_or(bytes.len());
        std::fs::write(&aside, &bytes[cut..]).map_err(io(&aside))?;
        cut_back(&path, read.valid_len)?;
        moved.push(aside);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            node_id: String::new(),
            origin_seq: n,
            kind: Some(cp::entry::Kind::Barrier(cp::Barrier {})),
            ..Entry::default()
        }
    }

    fn at(ms: u64) -> At {
        At {
            grace: Duration::from_millis(ms),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        }
    }

    fn segment(n: u64) -> Vec<u8> {
        let mut b = LOG_MAGIC.to_vec();
        for i in 0..n {
            b.extend(record(&entry(i), at(i)));
        }
        b
    }

    #[test]
    fn records_read_back_with_their_times() {
        let read = read_segment(&segment(3));
        assert!(read.damage.is_none());
        assert_eq!(read.entries.len(), 3);
        assert_eq!(read.entries[2].0, entry(2));
        assert_eq!(read.entries[2].1.grace, Duration::from_millis(2));
    }

    #[test]
    fn a_torn_tail_keeps_the_prefix_at_every_cut() {
        let whole = segment(3);
        let two = segment(2).len();
        for cut in two + 1..whole.len() {
            let read = read_segment(&whole[..cut]);
            assert_eq!(read.entries.len(), 2, "cut at {cut}");
            assert_eq!(read.valid_len, two as u64);
            assert!(matches!(read.damage, Some((_, true))), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_before_the_end_is_damage_not_a_torn_tail() {
        let mut b = segment(3);
        let second = segment(1).len() + HEADER + 3;
        b[second] ^= 0x40;
        let read = read_segment(&b);
        assert_eq!(read.entries.len(), 1);
        assert!(matches!(read.damage, Some((ref r, false)) if r == "checksum mismatch"));
    }
}
