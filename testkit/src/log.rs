//! The relay's log as it is written (`HOOKRELAY_LOG_FORMAT=json`, one JSON object a
//! line), read on threads of their own: its lines, the addresses it says it
//! listens on, and its warnings and errors.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Distinct WARN/ERROR messages remembered (with their counts) by [`Log::problems`].
const PROBLEMS_KEPT: usize = 5;

/// What a relay process logged so far.
#[derive(Debug)]
pub struct Log {
    lines: VecDeque<String>,
    /// The most lines kept; older ones are dropped.
    keep: usize,
    ingress: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    warnings: u64,
    errors: u64,
    /// The first distinct WARN/ERROR messages, with how often each was logged.
    problems: Vec<(String, u64)>,
}

impl Log {
    /// An empty log that keeps at most the last `keep` lines (the counts and
    /// addresses cover every line).
    pub fn new(keep: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            keep,
            ingress: None,
            admin: None,
            warnings: 0,
            errors: 0,
            problems: Vec::new(),
        }
    }

    /// Reads one line: a JSON object of the relay's log, or anything else (kept,
    /// not interpreted: a panic message, valgrind's output).
    pub fn push(&mut self, line: String) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            let addr = || value["addr"].as_str().and_then(|a| a.parse().ok());
            match value["message"].as_str() {
                Some("ingress listening") => self.ingress = self.ingress.or_else(addr),
                Some("admin listening") => self.admin = self.admin.or_else(addr),
                _ => {}
            }
            let level = value["level"].as_str();
            match level {
                Some("WARN") => self.warnings += 1,
                Some("ERROR") => self.errors += 1,
                _ => {}
            }
            if let Some(level @ ("WARN" | "ERROR")) = level {
                let fields = &value["fields"];
                let text = format!(
                    "{level} {}{}",
                    fields["message"]
                        .as_str()
                        .or(value["message"].as_str())
                        .unwrap_or("?"),
                    fields["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                if let Some(seen) = self.problems.iter_mut().find(|(t, _)| *t == text) {
                    seen.1 += 1;
                } else if self.problems.len() < PROBLEMS_KEPT {
                    self.problems.push((text, 1));
                }
            }
        }
        if self.lines.len() >= self.keep {
            self.lines.pop_front();
        }
        if self.keep > 0 {
            self.lines.push_back(line);
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// The last `n` lines kept, one a line.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The ingress and admin addresses (`ingress listening`, `admin listening`),
    /// once both were logged.
    pub fn listeners(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.ingress.zip(self.admin)
    }

    /// WARN and ERROR lines so far.
    pub fn warnings_errors(&self) -> (u64, u64) {
        (self.warnings, self.errors)
    }

    /// The first distinct WARN/ERROR messages (`LEVEL message: error`), at most 5,
    /// with how often each was logged.
    pub fn problems(&self) -> Vec<(String, u64)> {
        self.problems.clone()
    }
}

/// Reads `stream` line by line into `log` on a thread of its own, until it ends.
pub(crate) fn read_into(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<Log>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut log) = log.lock() {
                log.push(line);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_problems_and_a_bounded_tail() {
        let mut log = Log::new(3);
        log.push(
            r#"{"level":"INFO","message":"ingress listening","addr":"127.0.0.1:4000"}"#.into(),
        );
        assert_eq!(log.listeners(), None);
        log.push(r#"{"level":"INFO","message":"admin listening","addr":"127.0.0.1:4001"}"#.into());
        for _ in 0..2 {
            log.push(
                r#"{"level":"WARN","fields":{"message":"publish failed","error":"closed"}}"#.into(),
            );
        }
        log.push("thread 'main' panicked".into());
        assert_eq!(
            log.listeners(),
            Some((
                "127.0.0.1:4000".parse().expect("addr"),
                "127.0.0.1:4001".parse().expect("addr")
            ))
        );
        assert_eq!(log.warnings_errors(), (2, 0));
        assert_eq!(
            log.problems(),
            vec![("WARN publish failed: closed".to_owned(), 2)]
        );
        assert_eq!(log.lines().len(), 3);
        assert_eq!(log.tail(1), "thread 'main' panicked");
    }
}
