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
//!   higher one (and never one below [`crate::ids::epoch_floor`]),
//!   written and synced before any session opens, so session ids never
//!   repeat across restarts ([`crate::ids`]).
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

mod format;
mod writer;

use super::{At, Entry, Frozen, Replica, Store};
use crate::error::CenterError;
use crate::ids::{MAX_EPOCH, epoch_floor};
use format::{
    cut_back, read_segment, read_snapshot, record, replace_synced, segment_path, segments,
    write_snapshot,
};
use parking_lot::{Condvar, Mutex};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use writer::{FlushQueue, Pending, SegmentWriter, flush_loop};

/// How often `batch` and `never` write what was gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

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

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileStoreError + '_ {
    move |error| FileStoreError::Io {
        path: path.to_owned(),
        error,
    }
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
    let now_ms = crate::clock::unix_ms(SystemTime::now());
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

/// The state directory as the center's store (see the module docs).
pub struct FileStore {
    shared: Arc<FlushQueue>,
    /// This start's epoch: the high bits of its session ids.
    epoch: u32,
    fsync: Fsync,
    snapshot_every: u64,
    since_snapshot: AtomicU64,
    compacting: Arc<AtomicBool>,
    /// The thread writing the last periodic snapshot: the final one waits
    /// for it, or an older snapshot could land over the final one after it
    /// removed the segments the older one needs.
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
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

    fn compact(&self, state: Box<dyn Frozen>) {
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
        match spawned {
            // The one before it has finished (only one runs at a time).
            Ok(thread) => drop(self.compactor.lock().replace(thread)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the snapshot thread");
                self.compacting.store(false, Ordering::Release);
            }
        }
    }

    fn close(&self, state: Box<dyn Frozen>) -> Result<(), CenterError> {
        if let Some(thread) = self.compactor.lock().take() {
            let _ = thread.join();
        }
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

/// Opens (or creates) the state directory, builds the state `build` makes
/// on this store from what it keeps, and returns it ready to serve: the
/// former process's sessions are closed, so their users wait out the
/// reconnect grace.
pub fn open<R: Replica>(
    config: &FileStoreConfig,
    build: impl FnOnce(Arc<dyn Store>) -> R,
) -> Result<(R, Recovered), FileStoreError> {
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

    let shared = Arc::new(FlushQueue {
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
        compactor: Mutex::new(None),
        flusher: Mutex::new(flusher),
        _lock: lock,
    });
    let center = build(store.clone());
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
    center.replay_finished();
    recovered.sessions = center.end_former_sessions();
    recovered.users = center.state_counts().users;
    // The one line about the past: the entries replayed logged nothing of
    // their own (they were logged when they happened).
    tracing::info!(dir = %dir.display(), epoch, snapshot = snapshot.is_some(), entries = recovered.entries, sessions = recovered.sessions, users = recovered.users, took = ?started.elapsed(), "state loaded: the former sessions' users wait for their peers");
    if recovered.entries > 0 {
        // The next start reads one snapshot instead of this log.
        store.compact(center.freeze());
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
    use super::format::{HEADER, LOG_MAGIC};
    use super::*;
    use crate::cluster_proto as cp;

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

    /// A replica that is only its store, for the store's own tests.
    struct Bare(Arc<dyn Store>);

    impl Replica for Bare {
        fn load_snapshot(&self, _: &cp::Snapshot) {}
        fn replay(&self, _: Entry, _: At) {}
        fn replay_finished(&self) {}
        fn freeze(&self) -> Box<dyn Frozen> {
            Box::new(Marked(0, None))
        }
        fn end_former_sessions(&self) -> usize {
            0
        }
        fn state_counts(&self) -> crate::store::StateCounts {
            crate::store::StateCounts::default()
        }
    }

    /// A state marked by its feed number, whose snapshot is made only once
    /// its gate opens.
    struct Marked(u64, Option<std::sync::mpsc::Receiver<()>>);

    impl Frozen for Marked {
        fn into_snapshot(self: Box<Self>) -> cp::Snapshot {
            if let Some(gate) = &self.1 {
                let _ = gate.recv();
            }
            cp::Snapshot {
                feed_seq: self.0,
                ..Default::default()
            }
        }
    }

    /// A clean stop while a periodic snapshot is still being written: the
    /// final snapshot waits for it, so the older one can never land over
    /// the final one (after which the segments it needs would be gone).
    #[test]
    fn the_final_snapshot_waits_for_a_periodic_one_being_written() {
        let dir = std::env::temp_dir().join(format!("pilot-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = FileStoreConfig {
            dir: dir.clone(),
            fsync: Fsync::Never,
            snapshot_every: 1,
        };
        let (bare, _) = open(&config, Bare).unwrap();
        let (open_gate, gate) = std::sync::mpsc::channel();
        bare.0.compact(Box::new(Marked(1, Some(gate))));
        let store = bare.0.clone();
        let closing = std::thread::spawn(move || store.close(Box::new(Marked(2, None))));
        // A close that did not wait would finish meanwhile.
        let until = std::time::Instant::now() + Duration::from_millis(300);
        while !closing.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        open_gate.send(()).unwrap();
        closing.join().unwrap().unwrap();
        // Had the periodic snapshot not been waited for, it would land now.
        let until = std::time::Instant::now() + Duration::from_millis(300);
        loop {
            let (_, snap) = format::read_snapshot(&dir.join("snapshot"))
                .unwrap()
                .unwrap();
            assert_eq!(snap.feed_seq, 2, "an older snapshot replaced the final one");
            if std::time::Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(bare);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
