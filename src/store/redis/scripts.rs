//! The Lua scripts that make each step on the log one atomic step in Redis
//! (leases, fenced appends, "node lost"), and what their replies mean.

use super::link::Link;

/// Redis time in ms, for the lease scripts (leases are counted in Redis's
/// clock, never in the nodes').
pub(super) const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Notes a renewal at `now` (KEYS[a] renewed, KEYS[b] live-since): after a
/// gap longer than a lease (`ARGV[ttl]`) with no renewal from anyone, the
/// cluster is live again only from now.
pub(super) const NOTE_RENEWAL: &str = "local last = tonumber(redis.call('GET', RENEWED) or '0')\nif now - last > TTL then redis.call('SET', LIVE_SINCE, now) end\nredis.call('SET', RENEWED, now)\n";

/// A new lease: a node number never used before, its lease until now+ttl.
/// The number is the counter's next, but never below `ARGV[3]` (above the
/// highest number the node has seen) nor below the epoch floor of Redis's
/// clock (`ARGV[4]` base ms, `ARGV[5]` unit ms: [`crate::ids`]), so
/// a Redis that lost its counter does not count from 1 again; the counter
/// is raised to the number taken. KEYS: node-numbers, leases, renewed,
/// live-since, node-ids; ARGV: ttl ms, node id, floors. Returns the number.
pub(super) static JOIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}local n = redis.call('INCR', KEYS[1])\nlocal floor = math.max(tonumber(ARGV[3]), math.floor((now - tonumber(ARGV[4])) / tonumber(ARGV[5])) + 1)\nif n < floor then n = floor redis.call('SET', KEYS[1], n) end\nredis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), n)\nredis.call('HSET', KEYS[5], n, ARGV[2])\n{}return n",
        NOTE_RENEWAL
            .replace("RENEWED", "KEYS[3]")
            .replace("LIVE_SINCE", "KEYS[4]")
            .replace("TTL", "tonumber(ARGV[1])")
    )
});

/// Renews lease `ARGV[1]` for `ARGV[2]` ms if it is still held. KEYS:
/// leases, renewed, live-since. Returns Redis time (ms), or 0 when the lease
/// is gone (the node was declared lost: it is fenced).
pub(super) static RENEW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end\n{}redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\nreturn now",
        NOTE_RENEWAL
            .replace("RENEWED", "KEYS[2]")
            .replace("LIVE_SINCE", "KEYS[3]")
            .replace("TTL", "tonumber(ARGV[2])")
    )
});

/// Appends `ARGV[2..]`, entries of lease `ARGV[1]`, to the log if that
/// lease is still held: a node declared lost can never append again
/// (fencing). KEYS: leases, log. Returns how many were appended, or -1
/// when the lease is gone (nothing appended).
pub(super) const APPEND: &str = "if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end\nfor i = 2, #ARGV do redis.call('XADD', KEYS[2], '*', 'e', ARGV[i]) end\nreturn #ARGV - 1";

/// Declares node `ARGV[2]` lost if its lease lapsed while the cluster was
/// live (not in an outage for everyone), by the holder of lease `ARGV[1]`:
/// removes the lease and its position and appends `ARGV[4]` (its "node
/// lost" entry) in one step. KEYS: leases, live-since, log, positions;
/// ARGV[3]: ttl ms. Returns 1 (declared), 0 (not), -1 (the declarer itself
/// is fenced).
pub(super) static DECLARE_LOST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end\nlocal live = tonumber(redis.call('GET', KEYS[2]) or '0')\nif now - live < tonumber(ARGV[3]) then return 0 end\nlocal e = redis.call('ZSCORE', KEYS[1], ARGV[2])\nif not e or tonumber(e) >= now then return 0 end\nredis.call('ZREM', KEYS[1], ARGV[2])\nredis.call('HDEL', KEYS[4], ARGV[2])\nredis.call('XADD', KEYS[3], '*', 'e', ARGV[4])\nreturn 1"
    )
});

/// Runs `script` with `keys` and `args`.
pub(super) async fn eval<T: redis::FromRedisValue>(
    conn: &mut Link,
    script: &str,
    keys: &[&str],
    args: &[&[u8]],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await
}

/// What the log answered to an append (the `APPEND` script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Appended {
    /// The entries are in the log.
    Taken,
    /// The lease they were sent under is no longer held: this node was
    /// declared lost, and nothing was appended.
    Fenced,
}

impl Appended {
    /// The script's reply: how many were appended, or -1 when fenced.
    pub(super) fn from_reply(n: i64) -> Self {
        if n < 0 { Self::Fenced } else { Self::Taken }
    }
}
