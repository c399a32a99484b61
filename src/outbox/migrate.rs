//! One migration scheme for every backend.
//!
//! A backend's schema has a version, a whole number the outbox records with the
//! oldest version whose releases may still run on it (`readable_by`), and an
//! ordered list of [`Step`]s: step `n` brings the schema from version `n − 1` to
//! `n`, and version `0` is an empty outbox. At open, `serve` applies the steps
//! past the recorded version, each in one transaction with its version recorded
//! in it, so a relay killed during a migration leaves the outbox at the last
//! version it completed and the next start goes on from there.
//!
//! **Rollbacks.** A step that only adds (a table, an index, a column with a
//! default older releases need not fill) is `compatible`: the version it records
//! stays readable by the releases before it. So a release started on an outbox of
//! a newer version runs if that version is still readable by its own, and is
//! refused (with what to do) if not: it cannot tell what the newer one stores.
//! Rows a newer release wrote and this one cannot read are set aside, not
//! misread (see `Unreadable`).
//!
//! How a step runs (SQL text, or code for a step that must look first) is the
//! backend's; which steps run, what each records, the refusal and what is logged
//! are decided here.

use super::{Fault, FaultKind, OutboxError};

/// One step of a backend's schema: what it brings, and how (the backend's type).
pub(crate) struct Step<How> {
    /// What this version adds, for the log.
    pub(crate) what: &'static str,
    /// Whether releases that know only the versions before it still run on it.
    pub(crate) compatible: bool,
    /// How the backend applies it.
    pub(crate) how: How,
}

/// A schema version as the outbox records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    /// The version.
    pub(crate) version: i64,
    /// The oldest version whose releases may still run on it.
    pub(crate) readable_by: i64,
}

impl Version {
    /// An empty outbox.
    pub(crate) const EMPTY: Self = Self {
        version: 0,
        readable_by: 0,
    };
}

/// The steps to apply to an outbox at `current`, each with the version to record
/// once it is applied. An outbox newer than `steps` know is run on as it is when
/// it is still readable by them, and refused when not.
pub(crate) fn plan<How>(
    current: Version,
    steps: &[Step<How>],
) -> Result<Vec<(Version, &Step<How>)>, OutboxError> {
    let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    if current.version > known {
        if current.readable_by <= known {
            tracing::warn!(
                version = current.version,
                known,
                "the outbox's schema is newer than this release's and still readable by it (a rollback?): running on it as it is"
            );
            return Ok(Vec::new());
        }
        return Err(OutboxError::Storage(Fault::new(
            FaultKind::Other,
            format!(
                "the outbox has schema version {}, made by a newer hookrelay than this one (which knows {known}) and not readable by older ones: upgrade this relay",
                current.version
            ),
        )));
    }
    let mut readable_by = current.readable_by;
    let mut planned = Vec::new();
    for (version, step) in (1..)
        .zip(steps)
        .skip(usize::try_from(current.version).unwrap_or(0))
    {
        if !step.compatible {
            readable_by = version;
        }
        planned.push((
            Version {
                version,
                readable_by,
            },
            step,
        ));
    }
    Ok(planned)
}

/// Logs a step once its transaction has committed.
pub(crate) fn applied<How>(version: Version, step: &Step<How>) {
    tracing::info!(
        version = version.version,
        readable_by = version.readable_by,
        what = step.what,
        "outbox schema migrated"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> [Step<()>; 3] {
        [("one", false), ("two", false), ("three", true)].map(|(what, compatible)| Step {
            what,
            compatible,
            how: (),
        })
    }

    fn at(version: i64, readable_by: i64) -> Version {
        Version {
            version,
            readable_by,
        }
    }

    #[test]
    fn the_steps_past_the_recorded_version_run_in_order_and_record_who_reads_them() {
        let steps = steps();
        let planned = |current| {
            plan(current, &steps)
                .map(|steps| {
                    steps
                        .into_iter()
                        .map(|(v, s)| (v, s.what))
                        .collect::<Vec<_>>()
                })
                .ok()
        };
        assert_eq!(
            planned(Version::EMPTY),
            Some(vec![
                (at(1, 1), "one"),
                (at(2, 2), "two"),
                (at(3, 2), "three")
            ]),
            "an adding step stays readable by the release before it"
        );
        assert_eq!(planned(at(2, 2)), Some(vec![(at(3, 2), "three")]));
        assert_eq!(planned(at(3, 2)), Some(vec![]));
    }

    #[test]
    fn a_newer_schema_is_run_on_while_readable_and_refused_with_what_to_do_when_not() {
        assert_eq!(plan(at(5, 3), &steps()).map(|p| p.len()).ok(), Some(0));
        let refused = plan(at(5, 4), &steps()).map(|_| ()).unwrap_err();
        assert!(
            refused.to_string().contains("newer hookrelay")
                && refused.to_string().contains("upgrade this relay"),
            "{refused}"
        );
    }
}
