//! The SQL both backends share: a filter's conditions, spelled for either one.
//! Everything else a backend says in SQL is in its own `sql.rs`.

use super::query::EventFilter;

impl EventFilter {
    /// The filter's conditions as SQL for `dialect`, joined by `AND` (or `TRUE`),
    /// over `events e` and `deliveries d` as each backend names them, with
    /// placeholders numbered from `first`; and their values in order.
    pub(crate) fn sql(&self, dialect: Dialect, first: usize) -> (String, Vec<Value>) {
        let mut sql = Vec::new();
        let mut values = Vec::new();
        let mut add = |template: &str, value: Value| {
            let n = first + values.len();
            sql.push(template.replace('?', &dialect.placeholder(n)));
            values.push(value);
        };
        if let Some(state) = self.state {
            add("d.state = ?", Value::Text(state.as_str().to_owned()));
        }
        if let Some(source) = &self.source {
            add("e.source = ?", Value::Text(source.clone()));
        }
        if let Some(provider) = &self.provider {
            add("e.provider = ?", Value::Text(provider.clone()));
        }
        if let Some(subject) = &self.subject {
            add("e.subject = ?", Value::Text(subject.clone()));
        }
        if let Some(key) = &self.routing_key {
            add("e.routing_key = ?", Value::Text(key.clone()));
        }
        if let Some(pattern) = self.routing_pattern() {
            add("e.routing_key LIKE ? ESCAPE '\\'", Value::Text(pattern));
        }
        if let Some(since) = self.since_us {
            add("e.received_at >= ?", Value::Int(since));
        }
        if let Some(until) = self.until_us {
            add("e.received_at < ?", Value::Int(until));
        }
        if let Some(q) = &self.q {
            add(
                dialect.body_contains(),
                Value::Bytes(q.clone().into_bytes()),
            );
        }
        let sql = if sql.is_empty() {
            "TRUE".to_owned()
        } else {
            sql.join(" AND ")
        };
        (sql, values)
    }
}

/// The SQL spelling that differs between the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?1`, `instr` on a blob.
    Sqlite,
    /// `$1`, `position` in a `bytea`.
    Postgres,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }

    fn body_contains(self) -> &'static str {
        match self {
            Self::Sqlite => "instr(e.body, ?) > 0",
            Self::Postgres => "position(?::bytea in e.body) > 0",
        }
    }
}

/// A filter value, bound by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// Bytes (the body search).
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::State;

    #[test]
    fn an_empty_filter_matches_everything() {
        let (sql, values) = EventFilter::default().sql(Dialect::Sqlite, 1);
        assert_eq!(sql, "TRUE");
        assert!(values.is_empty());
    }

    #[test]
    fn conditions_are_numbered_from_the_first_placeholder() {
        let filter = EventFilter {
            state: Some(State::Dead),
            subject: Some("ord-1".to_owned()),
            q: Some("8f3".to_owned()),
            ..EventFilter::default()
        };
        let (sql, values) = filter.sql(Dialect::Postgres, 3);
        assert_eq!(
            sql,
            "d.state = $3 AND e.subject = $4 AND position($5::bytea in e.body) > 0"
        );
        assert_eq!(values.len(), 3);
    }
}
