//! Writing the log: records gathered under the center's lock, written and
//! synced by a flush thread (or at once, for `fsync: always`).

use super::FLUSH_EVERY;
use super::format::{LOG_MAGIC, segment_path};
use parking_lot::{Condvar, Mutex};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Appends records to segment files, opening the next one when the
/// generation moves on.
pub(super) struct SegmentWriter {
    pub(super) dir: PathBuf,
    pub(super) current: Option<Segment>,
}

/// The segment being written.
pub(super) struct Segment {
    pub(super) generation: u64,
    pub(super) file: File,
    /// Its length: where a failed write is cut back to.
    pub(super) len: u64,
}

impl SegmentWriter {
    pub(super) fn write(
        &mut self,
        generation: u64,
        bytes: &[u8],
        sync: bool,
    ) -> std::io::Result<()> {
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

    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        match &self.current {
            Some(s) => s.file.sync_data(),
            None => Ok(()),
        }
    }
}

/// What appends and the flusher share.
pub(super) struct Pending {
    /// The generation new records go to.
    pub(super) generation: u64,
    /// Records of `generation` not yet written (`batch`, `never`).
    pub(super) bytes: Vec<u8>,
    /// Records of earlier generations not yet written, in order.
    pub(super) sealed: Vec<(u64, Vec<u8>)>,
    /// Writes each record itself (`always`, and after the flusher stopped).
    pub(super) direct: Option<SegmentWriter>,
}

/// What the store and its flush thread share: the records not yet written
/// and the signals between them.
pub(super) struct FlushQueue {
    pub(super) dir: PathBuf,
    pub(super) pending: Mutex<Pending>,
    pub(super) wake: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) healthy: AtomicBool,
}

/// Writes what appends gathered, every [`FLUSH_EVERY`], until stopped (then
/// once more).
pub(super) fn flush_loop(shared: Arc<FlushQueue>, sync: bool) {
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
