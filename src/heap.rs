//! The center process's heap policy on glibc: keep freed memory for reuse
//! while traffic flows, give it back to the OS once a crowd of sessions has
//! left (issue 11, item 8; figures in docs/PERFORMANCE.md, "Memory after a crowd").
//!
//! Three glibc behaviours shape it, each measured:
//! - Trimming after every burst of frees (glibc's default) put 5–10 ms
//!   stalls into the `sfu` p99s (the freed pages are faulted back in on the
//!   next joins). So [`tune`] fixes the mmap threshold and sets a 1 GiB trim
//!   threshold at start-up, and [`give_back_after_crowds_leave`] trims
//!   explicitly, rarely.
//! - `malloc_trim` returns only whole free pages inside free chunks (and the
//!   main arena's top): a small block still in use pins its page. Each
//!   thread's cache (tcache: up to 7 freed chunks of each size up to 1,032
//!   bytes) holds such blocks, the last ones the crowd's sessions freed,
//!   scattered over the heap: about one pinned page each, several MB.
//!   [`give_back`] refills every runtime worker's cache with chunks cut side
//!   by side from free space, so the scattered ones go back to the arena and
//!   coalesce before the trim.
//! - `malloc_trim` does not shrink the top of a per-thread arena; glibc
//!   does that only when a large free finds more than the trim threshold
//!   there. So [`give_back`] lowers the threshold for its duration and has
//!   each worker free a 256 KiB block in its own arena. (For the same
//!   reason the cache cannot simply be switched off with `GLIBC_TUNABLES=
//!   glibc.malloc.tcache_count=0`, which is also only read at exec: the
//!   freed memory then merges into those tops and stays, 32–39 MB after the
//!   crowd that this leaves at ~3 MB.)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Sets the allocator's parameters. Call it first thing in `main`, before
/// any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    set_trim_threshold(TRIM_THRESHOLD);
}

/// glibc trims an arena's top by itself only past this much free space.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Sets how much free space at an arena's top glibc keeps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_trim_threshold(bytes: i32) {
    // SAFETY: mallopt only sets an allocator parameter, under the main
    // arena's lock; readers see either value.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, bytes);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_trim_threshold(_: i32) {}

/// Sets the allocator's parameters (nothing to set off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// Returns free heap pages to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// glibc's tcache on 64-bit: 64 size classes, requests of 24 + 16·i bytes,
/// and 7 chunks kept per class (the defaults of `glibc.malloc.tcache_*`).
const CACHE_CLASSES: usize = 64;
const CACHE_DEPTH: usize = 7;

/// Replaces the chunks this thread's cache holds with chunks cut side by
/// side from free space: takes every cached chunk out, takes as many fresh
/// ones, frees the fresh ones first (they fill the cache) and then the old
/// ones (the cache is full, so they go back to the arena and coalesce).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn refill_thread_cache() {
    let size = |class: usize| 24 + 16 * class;
    let mut old = [[std::ptr::null_mut::<libc::c_void>(); CACHE_DEPTH]; CACHE_CLASSES];
    let mut fresh = old;
    // SAFETY: plain malloc/free pairs on this thread; every pointer is
    // freed exactly once (free of a null pointer does nothing).
    unsafe {
        for (class, slots) in old.iter_mut().enumerate() {
            for slot in slots.iter_mut() {
                *slot = libc::malloc(size(class));
            }
        }
        for (class, slots) in fresh.iter_mut().enumerate() {
            for slot in slots.iter_mut() {
                *slot = libc::malloc(size(class));
            }
        }
        for p in fresh.iter().flatten().chain(old.iter().flatten()) {
            libc::free(*p);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn refill_thread_cache() {}

/// Trims the top of this thread's arena, which `malloc_trim` leaves alone
/// in per-thread arenas: freeing a block of 64 KiB or more makes glibc trim
/// the arena's top when it holds more than the trim threshold (which
/// [`give_back`] lowers meanwhile).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_thread_arena_top() {
    // SAFETY: one malloc and the free of what it returned (or of null).
    unsafe {
        libc::free(libc::malloc(256 << 10));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_thread_arena_top() {}

/// Which round of [`give_back`] is running, and how many workers have
/// tidied their cache and arena in it.
static ROUND: AtomicU64 = AtomicU64::new(0);
static REFILLED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The last round this thread tidied its cache and arena in.
    static REFILLED_IN: Cell<u64> = const { Cell::new(0) };
}

/// Refills the cache and trims the arena of the worker it runs on, once
/// per round.
fn tidy_this_worker(round: u64) {
    if ROUND.load(Ordering::Acquire) != round || REFILLED_IN.with(|r| r.replace(round)) == round {
        return;
    }
    refill_thread_cache();
    trim_thread_arena_top();
    REFILLED.fetch_add(1, Ordering::AcqRel);
    // Hold this worker a moment, so that the probe spawned beside this one
    // is taken by another worker.
    std::thread::sleep(Duration::from_millis(1));
}

/// Gives free heap back to the OS: a trim (which also merges the small
/// free lists, so the refills cut from coalesced space), every worker of
/// `runtime` refills its cache and trims its arena's top (waiting at most
/// `patience` for them), and a second trim. Blocks for a few milliseconds: call it on a blocking
/// thread. Returns how many workers refilled their cache.
pub fn give_back(runtime: &tokio::runtime::Handle, patience: Duration) -> usize {
    trim();
    set_trim_threshold(128 << 10);
    let round = ROUND.fetch_add(1, Ordering::AcqRel) + 1;
    REFILLED.store(0, Ordering::Release);
    let workers = runtime.metrics().num_workers();
    // tokio cannot aim a task at a worker: spawn a probe per worker until
    // every worker has run one. A worker busy with traffic may miss out; it
    // only keeps its cache's pages.
    let deadline = std::time::Instant::now() + patience;
    while REFILLED.load(Ordering::Acquire) < workers && std::time::Instant::now() < deadline {
        for _ in 0..workers {
            runtime.spawn(async move { tidy_this_worker(round) });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    trim();
    set_trim_threshold(TRIM_THRESHOLD);
    REFILLED.load(Ordering::Acquire)
}

/// How long [`give_back_after_crowds_leave`] waits for the workers to
/// refill their caches (it takes them a few milliseconds when idle).
const PATIENCE: Duration = Duration::from_millis(250);

/// Gives freed heap back after a crowd leaves: checked every second (a
/// coarser sample misses short spikes), once sessions plus users have fallen
/// by a quarter (and at least 256) from their peak since the last trim *and*
/// held still for one check. Waiting for the departures to settle matters:
/// a trim in the middle of them frees little (live blocks still pin the top
/// of each arena) and resets the peak, so the rest of the crowd would never
/// trigger another. Users count because those of closed sessions leave only
/// when their reconnect grace ends. Rare by design: trimming after every
/// departure brought back the p99 stalls [`tune`] removed.
pub async fn give_back_after_crowds_leave(center: crate::center::Center) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut peak, mut last) = (0usize, 0usize);
    loop {
        tick.tick().await;
        let (sessions, _, users, _) = center.counts();
        let load = sessions + users;
        peak = peak.max(load);
        let settled = load == last;
        last = load;
        if settled && peak - load >= (peak / 4).max(256) {
            let started = std::time::Instant::now();
            let runtime = tokio::runtime::Handle::current();
            // Off the runtime's workers: a trim of a large heap takes a while.
            let refilled = tokio::task::spawn_blocking(move || give_back(&runtime, PATIENCE))
                .await
                .unwrap_or_default();
            tracing::info!(from = peak, to = load, took = ?started.elapsed(), workers = refilled, "heap given back after sessions and users left");
            peak = load;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_of_the_runtime_refills_its_cache() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        // Twice: the second round must reach every worker again.
        for _ in 0..2 {
            assert_eq!(give_back(runtime.handle(), Duration::from_secs(20)), 4);
        }
    }
}
