//! The disk ceiling: how many `fdatasync`s per second the outbox's filesystem
//! gives one thread. Every group commit of the relay costs at least one (SQLite in
//! WAL mode with `synchronous=FULL` syncs the WAL at each commit), so
//! `acked/s ≤ fsyncs/s × webhooks per commit`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::load::histogram;

/// What the probe measured.
pub struct Fsync {
    pub count: u64,
    pub window: Duration,
    /// Latency of one 4 KiB append + `fdatasync`, microseconds.
    pub latency: Histogram<u64>,
}

/// Appends 4 KiB and syncs it, again and again, for `duration` (at most 1,000,000
/// times), in a temporary file under `dir`, deleted afterwards.
pub fn probe(dir: &Path, duration: Duration) -> anyhow::Result<Fsync> {
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix("hookrelay-bench-fsync-")
        .tempfile_in(dir)?;
    let block = vec![0x5a_u8; 4096];
    let mut latency = histogram();
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration && count < 1_000_000 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.as_file().sync_data()?;
        latency.saturating_record((t.elapsed().as_micros() as u64).max(1));
        count += 1;
        // Keep the file small, like a WAL that is checkpointed: rewrite from the start.
        if count.is_multiple_of(1024) {
            file.as_file_mut().set_len(0)?;
            std::io::Seek::rewind(file.as_file_mut())?;
        }
    }
    Ok(Fsync {
        count,
        window: start.elapsed(),
        latency,
    })
}
