//! The real `hookrelay` binary as a child process: `hookrelay serve` with an
//! environment of the caller's, its JSON log read on threads of their own, its
//! listeners found in that log, signals, and its `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::log::{self, Log};

/// How often a wait polls the process.
const POLL: Duration = Duration::from_millis(20);

/// How to start one `hookrelay serve`: built with [`Launch::serve`], adjusted with
/// the other methods, started with [`Launch::start`].
#[derive(Clone, Debug)]
pub struct Launch {
    binary: PathBuf,
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    start_within: Duration,
    keep_lines: usize,
    log_stderr: bool,
}

impl Launch {
    /// `binary serve` (tests pass `env!("CARGO_BIN_EXE_hookrelay")`, the bench its
    /// `--relay-bin`) with an environment cleared but for `PATH`, and:
    /// `HOOKRELAY_LOG_FORMAT=json`, `RUST_LOG=warn,hookrelay::relay=info` (the
    /// least that logs the listeners), ingress and admin on `127.0.0.1:0`. The
    /// exchange, the broker, the outbox and the sources are the caller's, with
    /// [`env`](Self::env) or [`broker`](Self::broker); a variable set there
    /// replaces one set here. By default: at most 30 s to start, every log line
    /// kept, the relay's stderr on the caller's.
    pub fn serve(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            wrapper: Vec::new(),
            env: Vec::new(),
            start_within: Duration::from_secs(30),
            keep_lines: usize::MAX,
            log_stderr: false,
        }
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn,hookrelay::relay=info")
        .env("HOOKRELAY_LOG_FORMAT", "json")
        .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
        .env("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0")
    }

    /// Sets one environment variable of the relay (the last value of a name wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `HOOKRELAY_EXCHANGE`.
    pub fn exchange(self, exchange: &str) -> Self {
        self.env("HOOKRELAY_EXCHANGE", exchange)
    }

    /// `HOOKRELAY_AMQP_URL` for RabbitMQ at `host:port` as guest/guest, vhost `/`.
    pub fn broker(self, host_port: &str) -> Self {
        self.env(
            "HOOKRELAY_AMQP_URL",
            format!("amqp://guest:guest@{host_port}/%2f"),
        )
    }

    /// `HOOKRELAY_OUTBOX_URL` (`sqlite://PATH` or `postgres://…`).
    pub fn outbox(self, url: &str) -> Self {
        self.env("HOOKRELAY_OUTBOX_URL", url)
    }

    /// Runs the relay under a program (its arguments after it, the relay's command
    /// line last), such as `valgrind --tool=callgrind`; empty for none.
    pub fn under(mut self, wrapper: &[String]) -> Self {
        self.wrapper = wrapper.to_vec();
        self
    }

    /// How long [`start`](Self::start) waits for both listeners.
    pub fn start_within(mut self, within: Duration) -> Self {
        self.start_within = within;
        self
    }

    /// Keeps only the last `n` log lines (the counts of [`Log`] still cover all).
    pub fn keep_lines(mut self, n: usize) -> Self {
        self.keep_lines = n;
        self
    }

    /// Reads the relay's stderr into its log too (a wrapper's output, a panic),
    /// instead of leaving it on the caller's stderr.
    pub fn log_stderr(mut self) -> Self {
        self.log_stderr = true;
        self
    }

    /// Spawns the relay and waits until it logged both listeners. Fails (and kills
    /// it) if it exits first or is not listening within the bound; the error
    /// carries its log.
    pub fn start(self) -> anyhow::Result<RelayProcess> {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("serve")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(if self.log_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let log = Arc::new(Mutex::new(Log::new(self.keep_lines)));
        let mut readers = vec![log::read_into(
            child.stdout.take().context("stdout")?,
            Arc::clone(&log),
        )];
        if let Some(stderr) = child.stderr.take() {
            readers.push(log::read_into(stderr, Arc::clone(&log)));
        }
        let pid = child.id();
        let mut process = RelayProcess {
            child,
            pid,
            ingress: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            readers,
        };
        let deadline = Instant::now() + self.start_within;
        loop {
            let listeners = process.log().listeners();
            if let Some((ingress, admin)) = listeners {
                process.ingress = ingress;
                process.admin = admin;
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                process.kill(); // reads the log to its end
                bail!(
                    "the relay exited during start ({status}):\n{}",
                    process.log_tail(usize::MAX)
                );
            }
            if Instant::now() > deadline {
                process.kill();
                bail!(
                    "the relay did not start within {} s:\n{}",
                    self.start_within.as_secs(),
                    process.log_tail(usize::MAX)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A running relay, killed (SIGKILL) when dropped.
pub struct RelayProcess {
    child: Child,
    /// Its process id (the wrapper's, under one).
    pub pid: u32,
    /// Where it takes webhooks.
    pub ingress: SocketAddr,
    /// Its admin listener (`/metrics`, `/readyz`, the API).
    pub admin: SocketAddr,
    log: Arc<Mutex<Log>>,
    readers: Vec<JoinHandle<()>>,
}

impl RelayProcess {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log lines kept so far (every line, unless [`Launch::keep_lines`]).
    pub fn logs(&self) -> Vec<String> {
        self.log().lines()
    }

    /// The last `n` log lines, one a line (for error reports).
    pub fn log_tail(&self, n: usize) -> String {
        self.log().tail(n)
    }

    /// WARN and ERROR lines logged so far.
    pub fn warnings_errors(&self) -> (u64, u64) {
        self.log().warnings_errors()
    }

    /// The first distinct WARN/ERROR messages and how often each was logged.
    pub fn problems(&self) -> Vec<(String, u64)> {
        self.log().problems()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`libc::SIGSTOP`, …) to the process.
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.pid).map_err(std::io::Error::other)?;
        // SAFETY: plain kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Freezes the process (SIGSTOP), as a long pause or a stalled VM would.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Asks for a graceful stop (SIGTERM) without waiting; nothing if the process
    /// has already exited (its pid is not signalled once it has been waited for).
    pub fn terminate(&mut self) -> std::io::Result<()> {
        if self.alive() {
            self.signal(libc::SIGTERM)?;
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it
    /// is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the process with SIGTERM, and SIGKILL if it has not exited within
    /// `grace`; its exit status when it exited by itself.
    pub fn stop_within(mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.terminate();
        self.wait_exit(grace)
        // Drop kills it if it is still running.
    }

    /// Kills the process (SIGKILL: no shutdown code runs), waits for it, and
    /// for its log to be read to the end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The admin `/metrics` text (Prometheus exposition format).
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        crate::http::get(self.admin, "/metrics").await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one sample line of a `/metrics` text, named exactly as written
/// (labels included), e.g. `hookrelay_outbox_commit_batch_size_count` or
/// `hookrelay_outbox_events{state="pending"}`.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (sample, value) = line.rsplit_once(' ')?;
        (sample == name).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_whole_name() {
        let text = "# HELP x\nhookrelay_broker_connected 1\n\
            hookrelay_outbox_events{state=\"pending\"} 12\n";
        assert_eq!(sample(text, "hookrelay_broker_connected"), Some(1.0));
        assert_eq!(
            sample(text, "hookrelay_outbox_events{state=\"pending\"}"),
            Some(12.0)
        );
        assert_eq!(sample(text, "hookrelay_outbox_events"), None);
    }

    #[test]
    fn a_binary_that_does_not_exist_is_an_error() {
        let error = Launch::serve("/nonexistent/hookrelay")
            .start()
            .err()
            .expect("no such binary");
        assert!(format!("{error:#}").contains("cannot start"), "{error:#}");
    }
}
