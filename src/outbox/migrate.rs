//! One migration scheme for every backend.
//!
//! A backend's schema has a version, a whole number the outbox records
//! (`PRAGMA user_version` on SQLite, the `hr_schema` table on PostgreSQL), and an
//! ordered list of [`Step`]s: step `n` brings the schema from version `n − 1` to
//! `n`, and the version `0` is an empty outbox. At open, `serve` applies the steps
//! past the recorded version, each in one transaction with the new version
//! recorded in it, so a relay killed during a migration leaves the outbox at the
//! last version it completed and the next start goes on from there. An outbox
//! of a newer version than this release knows is refused: this release cannot tell
//! what the newer one stored.
//!
//! How a step runs (SQL text, or code for a step that must look first) is the
//! backend's; which steps run, the refusal and what is logged are decided here.

use super::{Fault, FaultKind, OutboxError};

/// One step of a backend's schema: what it brings, and how (the backend's type).
pub(crate) struct Step<How> {
    /// What this version adds, for the log.
    pub(crate) what: &'static str,
    /// How the backend applies it.
    pub(crate) how: How,
}

/// The steps to apply to an outbox at version `current`, with the version each
/// brings it to. Fails on an outbox newer than `steps` know.
pub(crate) fn pending<How>(
    current: i64,
    steps: &[Step<How>],
) -> Result<impl Iterator<Item = (i64, &Step<How>)>, OutboxError> {
    let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(OutboxError::Storage(Fault::new(
            FaultKind::Other,
            format!(
                "the outbox has schema version {current}, made by a newer hookrelay than this one (which knows {known}): upgrade this relay"
            ),
        )));
    }
    let done = usize::try_from(current).unwrap_or(0);
    Ok((1..).zip(steps).skip(done))
}

/// Logs a step once its transaction has committed.
pub(crate) fn applied<How>(version: i64, step: &Step<How>) {
    tracing::info!(version, what = step.what, "outbox schema migrated");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> [Step<()>; 3] {
        ["one", "two", "three"].map(|what| Step { what, how: () })
    }

    #[test]
    fn the_steps_past_the_recorded_version_run_in_order() {
        let steps = steps();
        let versions = |current| {
            pending(current, &steps)
                .map(|steps| steps.map(|(v, s)| (v, s.what)).collect::<Vec<_>>())
                .ok()
        };
        assert_eq!(
            versions(0),
            Some(vec![(1, "one"), (2, "two"), (3, "three")])
        );
        assert_eq!(versions(2), Some(vec![(3, "three")]));
        assert_eq!(versions(3), Some(vec![]));
    }

    #[test]
    fn an_outbox_of_a_newer_release_is_refused_with_what_to_do() {
        let refused = pending(4, &steps()).map(|_| ()).unwrap_err();
        assert!(
            refused.to_string().contains("newer hookrelay")
                && refused.to_string().contains("upgrade this relay"),
            "{refused}"
        );
    }
}
