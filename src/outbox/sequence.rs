//! The per-subject sequence (contract §5): which number a due row is published
//! with, and whether its status went backwards (`stale`), decided once for every
//! backend from what the driver read beside the row.
//!
//! A driver keeps, per `(source, subject)`, the last number it handed out and the
//! furthest stage published per kind (the `stages` text, see [`Stages`]), and per
//! row the number and `stale` flag it was first published with. The fetch reads
//! both; [`place`] turns them into a [`Place`]; the settle of a confirmed publish
//! writes the row's number and raises the subject's (both drivers, in the settle's
//! transaction). Only the oldest holding row of a subject is ever due, so two rows
//! of one subject are never numbered at once: until a settle commits, every fetch
//! of the row (after a crash, on the replica that took its partition over) gives
//! it the same number.
//!
//! Leaf of `outbox/`: it knows no backend and no SQL.

use crate::event::{Kind, Status};

/// Where a due row stands in its subject's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    /// Its number: 1 for a subject's first published event.
    pub(crate) sequence: i64,
    /// Its status is behind one already published for its subject and kind.
    pub(crate) stale: bool,
    /// `Some` when the row was never published before: the settle of its
    /// confirmed publish records the number and these stages for the subject.
    pub(crate) first: Option<First>,
}

/// What the settle of a row's first confirmed publish records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct First {
    /// The number the row was published with.
    pub(crate) sequence: i64,
    /// Whether it was published as stale.
    pub(crate) stale: bool,
    /// The subject's furthest stage per kind, with this row's included.
    pub(crate) stages: String,
}

/// What a driver read beside a due row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The number the row was published with before (a republish, a replay).
    pub(crate) sequence: Option<i64>,
    /// The `stale` flag it was published with before.
    pub(crate) stale: bool,
    /// The subject's last number handed out (`None`: no event of it published).
    pub(crate) last: Option<i64>,
    /// The subject's stages text.
    pub(crate) stages: Option<String>,
}

/// Places a due row of class `class` (`None`: unrecognized) in its subject's
/// sequence. A row published before keeps its number and flag; any other gets
/// the next free number.
pub(crate) fn place(stored: &Stored, class: Option<(Kind, Status)>) -> Place {
    if let Some(sequence) = stored.sequence {
        return Place {
            sequence,
            stale: stored.stale,
            first: None,
        };
    }
    let sequence = stored.last.unwrap_or(0).saturating_add(1);
    let mut stages = Stages::parse(stored.stages.as_deref().unwrap_or(""));
    let stale = class.is_some_and(|(kind, status)| stages.record(kind, status.stage()));
    Place {
        sequence,
        stale,
        first: Some(First {
            sequence,
            stale,
            stages: stages.to_string(),
        }),
    }
}

/// The furthest stage published per kind of a subject, stored as text
/// (`order:4,refund:5`): a handful of kinds at most, so a list beats a table.
/// Text a newer release wrote with kinds this one does not know is kept as it is.
#[derive(Debug, Default)]
struct Stages(Vec<(String, u8)>);

impl Stages {
    fn parse(text: &str) -> Self {
        Self(
            text.split(',')
                .filter_map(|pair| {
                    let (kind, stage) = pair.split_once(':')?;
                    Some((kind.to_owned(), stage.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Records a published `stage` of `kind`; whether it is behind the furthest
    /// one already published (stale).
    fn record(&mut self, kind: Kind, stage: u8) -> bool {
        match self.0.iter_mut().find(|(k, _)| k == kind.as_str()) {
            Some((_, furthest)) if *furthest > stage => true,
            Some((_, furthest)) => {
                *furthest = stage;
                false
            }
            None => {
                self.0.push((kind.as_str().to_owned(), stage));
                false
            }
        }
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, (kind, stage)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{kind}:{stage}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER_SUCCEEDED: Option<(Kind, Status)> = Some((Kind::Order, Status::Succeeded));
    const ORDER_PENDING: Option<(Kind, Status)> = Some((Kind::Order, Status::Pending));

    #[test]
    fn a_subjects_first_event_is_one_and_each_next_one_more() {
        let first = place(&Stored::default(), ORDER_PENDING);
        assert_eq!(first.sequence, 1);
        assert!(!first.stale);
        let recorded = first.first.unwrap_or_else(|| panic!("a first publish"));
        assert_eq!(recorded.stages, "order:1");
        let next = place(
            &Stored {
                last: Some(1),
                stages: Some(recorded.stages),
                ..Stored::default()
            },
            ORDER_SUCCEEDED,
        );
        assert_eq!(next.sequence, 2);
        assert_eq!(next.first.map(|f| f.stages).as_deref(), Some("order:4"));
    }

    #[test]
    fn a_row_published_before_keeps_its_number_and_flag() {
        let again = place(
            &Stored {
                sequence: Some(3),
                stale: true,
                last: Some(9),
                stages: Some("order:4".to_owned()),
            },
            ORDER_SUCCEEDED,
        );
        assert_eq!(
            again,
            Place {
                sequence: 3,
                stale: true,
                first: None
            }
        );
    }

    #[test]
    fn a_status_behind_its_kinds_furthest_is_stale_and_leaves_the_stages() {
        let late = place(
            &Stored {
                last: Some(2),
                stages: Some("refund:5,order:4".to_owned()),
                ..Stored::default()
            },
            ORDER_PENDING,
        );
        assert!(late.stale);
        assert_eq!(late.sequence, 3);
        assert_eq!(
            late.first.map(|f| f.stages).as_deref(),
            Some("refund:5,order:4")
        );
        // Another kind of the same subject has its own order.
        let refund = place(
            &Stored {
                last: Some(3),
                stages: Some("order:4".to_owned()),
                ..Stored::default()
            },
            Some((Kind::Refund, Status::Pending)),
        );
        assert!(!refund.stale);
    }

    #[test]
    fn unrecognized_events_and_unknown_stage_text_are_never_stale() {
        let odd = place(
            &Stored {
                last: Some(1),
                stages: Some("future_kind:9,garbage,order:x".to_owned()),
                ..Stored::default()
            },
            None,
        );
        assert!(!odd.stale);
        assert_eq!(
            odd.first.map(|f| f.stages).as_deref(),
            Some("future_kind:9")
        );
    }
}
