//! A large outbox for the `console` scenarios, written straight into the relay's
//! own tables with one bulk SQL statement per table (the relay creates the schema
//! first and is stopped while this runs). Rows copy the shape of rows the relay
//! writes itself (`meta` is the compact JSON of its `EventMeta`, `headers` the
//! request's headers, the body a Whitepay webhook of ~600 bytes), and are all
//! either published or dead, so the relay has nothing to publish when it starts.
//!
//! The mix, deterministic in the row number:
//! - subjects (Whitepay order/transaction ids) with 1–5 events each; the k-th event
//!   of a subject is stored ~1000 subjects after its first, as webhooks of one
//!   order arrive minutes apart;
//! - sources `whitepay` 50 %, `shop_eu` 25 %, `shop_us` 15 %, `marketplace` 10 %
//!   (all Whitepay);
//! - kinds `order` 80 %, `transaction` 12 %, `withdrawal` 5 %, `refund` 3 % of the
//!   subjects; intermediate events `created` / `pending` / `partially_paid`, the
//!   last one `succeeded` 85 %, `failed` 10 %, `cancelled` 5 %;
//! - ~1 % dead: the last event of one subject in 33, so a dead row never has a
//!   published row after it in its subject;
//! - received one every 0.52 s, so 1,000,000 rows span the last 6 days (the
//!   relay purges published rows older than its retention, 7 days by default);
//! - [`NEEDLE_OLD`] in the body of the row at 1 % of the ids (an old row) and
//!   [`NEEDLE_MID`] at 50 %; [`NEEDLE_ABSENT`] in none.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Text in exactly one body, in an old row (id `rows / 100`).
pub const NEEDLE_OLD: &str = "needle-old-7c1e5a";
/// Text in exactly one body, in the middle (id `rows / 2`).
pub const NEEDLE_MID: &str = "needle-mid-3b9f20";
/// Text in no body.
pub const NEEDLE_ABSENT: &str = "needle-absent-e4d2c8";

/// Microseconds between two seeded rows: 1,000,000 rows span 6 days, inside the
/// relay's default retention (7 days of published rows), so it purges none of
/// them when it starts (about 1.9 webhooks/s, day and night).
const STEP_US: i64 = 518_400;

/// The ids of the rows holding the two needles.
pub fn needle_ids(rows: u64) -> (i64, i64) {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    ((rows / 100).max(1), (rows / 2).max(1))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `e` as lower-case hex, zero-padded to `w` digits.
    fn hex(self, e: &str, w: usize) -> String {
        match self {
            Self::Sqlite => format!("printf('%0{w}x', {e})"),
            Self::Postgres => format!("lpad(to_hex({e}), {w}, '0')"),
        }
    }

    /// A UUID-shaped text of version `version` from SQL expressions: `hash` gives
    /// the first group and the variant bits, `time_mid` and `time_hi` the middle
    /// groups, `node` the last.
    fn uuid_like(
        self,
        hash: &str,
        time_mid: &str,
        version: char,
        time_hi: &str,
        node: &str,
    ) -> String {
        format!(
            "{} || '-' || {} || '-{version}' || {} || '-' || {} || '-' || {}",
            self.hex(hash, 8),
            self.hex(time_mid, 4),
            self.hex(time_hi, 3),
            self.hex(&format!("32768 + {hash} % 16384"), 4),
            self.hex(node, 12)
        )
    }

    /// `e` as a decimal zero-padded to 2 digits.
    fn pad2(self, e: &str) -> String {
        match self {
            Self::Sqlite => format!("printf('%02d', {e})"),
            Self::Postgres => format!("lpad(CAST({e} AS text), 2, '0')"),
        }
    }

    /// Unix microseconds `e` formatted: `sql` is SQLite's strftime pattern, `pg`
    /// PostgreSQL's to_char pattern.
    fn time(self, e: &str, sql: &str, pg: &str) -> String {
        match self {
            Self::Sqlite => format!("strftime('{sql}', ({e}) / 1000000.0, 'unixepoch')"),
            Self::Postgres => {
                format!("to_char(to_timestamp(({e}) / 1000000.0) AT TIME ZONE 'UTC', '{pg}')")
            }
        }
    }

    fn blob(self, e: &str) -> String {
        match self {
            Self::Sqlite => format!("CAST({e} AS BLOB)"),
            Self::Postgres => format!("convert_to({e}, 'UTF8')"),
        }
    }
}

fn text(e: &str) -> String {
    format!("CAST({e} AS text)")
}

/// The statements that fill `events`/`deliveries` (SQLite) or `hr_event`/
/// `hr_delivery` (PostgreSQL) with `rows` rows, ids 1..=rows, the newest received
/// at `newest_us`. The tables must be empty.
fn statements(d: Dialect, rows: u64, newest_us: i64) -> Vec<String> {
    // Subjects have 1 + h % 5 events, 3 on average: enough subjects, and a margin.
    let subjects = rows / 3 + rows / 50 + 1000;
    let base_us = newest_us - i64::try_from(rows).unwrap_or(0) * STEP_US;
    let (old_id, mid_id) = needle_ids(rows);
    let hash = "(s * 2654435761) % 4294967296";
    let generate = match d {
        Dialect::Sqlite => format!(
            "CREATE TEMP TABLE g AS
             WITH RECURSIVE subj(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM subj WHERE s < {last})
             SELECT s, k, {hash} AS h
             FROM subj CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1 UNION ALL SELECT 2
                                   UNION ALL SELECT 3 UNION ALL SELECT 4) ks
             WHERE k < 1 + ({hash}) % 5",
            last = subjects - 1
        ),
        Dialect::Postgres => format!(
            "CREATE TEMP TABLE g AS
             SELECT s, k, {hash} AS h
             FROM generate_series(0::bigint, {last}) s CROSS JOIN generate_series(0::bigint, 4) k
             WHERE k < 1 + ({hash}) % 5",
            last = subjects - 1
        ),
    };
    let subject = d.uuid_like("h", "(s * 7) % 65536", '4', "s % 4096", "s");
    let event_id = d.uuid_like("hn", "n % 65536", '5', "n % 4096", "n");
    let amount = format!(
        "{} || '.' || {}",
        text("10 + h % 5000"),
        d.pad2("(h / 7) % 100")
    );
    // Layer by layer: numbers, then the classification, then the texts.
    let table = format!(
        "CREATE TEMP TABLE t AS
         SELECT *, CASE pstatus WHEN 'COMPLETE' THEN 'succeeded' WHEN 'DECLINED' THEN 'failed'
                       WHEN 'CANCELLED' THEN 'cancelled' WHEN 'INIT' THEN 'created'
                       WHEN 'OPEN' THEN 'pending' ELSE 'partially_paid' END AS status,
                   CASE kind WHEN 'refund' THEN 'rollback' ELSE kind END || '::' ||
                   CASE WHEN kind = 'refund' THEN 'to_client' WHEN fin = 0 THEN 'status_changed'
                        WHEN pstatus = 'COMPLETE' THEN 'completed'
                        WHEN pstatus = 'DECLINED' THEN 'declined' ELSE 'cancelled' END AS event_type
         FROM (
           SELECT *,
                  CASE WHEN fin = 1 THEN
                         CASE WHEN (h / 1024) % 100 < 85 THEN 'COMPLETE'
                              WHEN (h / 1024) % 100 < 95 THEN 'DECLINED' ELSE 'CANCELLED' END
                       ELSE CASE k WHEN 0 THEN 'INIT' WHEN 1 THEN 'OPEN'
                                   WHEN 2 THEN 'PARTIALLY_FULFILLED' ELSE 'PATIALLY_FULFILLED' END
                  END AS pstatus,
                  CASE WHEN fin = 1 AND (h / 65536) % 33 = 0 THEN 1 ELSE 0 END AS dead
           FROM (
             SELECT n, s, k, h, (n * 2654435761) % 4294967296 AS hn,
                    CASE WHEN k = h % 5 THEN 1 ELSE 0 END AS fin,
                    {base_us} + n * {STEP_US} AS recv,
                    CASE WHEN s % 20 < 10 THEN 'whitepay' WHEN s % 20 < 15 THEN 'shop_eu'
                         WHEN s % 20 < 18 THEN 'shop_us' ELSE 'marketplace' END AS src,
                    CASE WHEN (h / 8) % 100 < 80 THEN 'order' WHEN (h / 8) % 100 < 92 THEN 'transaction'
                         WHEN (h / 8) % 100 < 97 THEN 'withdrawal' ELSE 'refund' END AS kind,
                    {subject} AS subject,
                    CASE s % 4 WHEN 0 THEN 'USDT' WHEN 1 THEN 'UAH' WHEN 2 THEN 'EUR' ELSE 'USD' END AS currency,
                    {amount} AS amount
             FROM (SELECT row_number() OVER (ORDER BY s + k * 1000, s) AS n, s, k, h FROM g) numbered
             WHERE n <= {rows}
           ) a
         ) b"
    );
    let created = d.time("recv", "%Y-%m-%d %H:%M:%S", "YYYY-MM-DD HH24:MI:SS");
    let event_time = d.time(
        "recv",
        "%Y-%m-%dT%H:%M:%SZ",
        "YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"",
    );
    let received = d.time(
        "recv",
        "%Y-%m-%dT%H:%M:%fZ",
        "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"",
    );
    let merchant = format!("'m-' || src || '-' || {}", text("s"));
    let addr = format!("{} || {}", d.hex("h * 3", 17), d.hex("hn", 16));
    let txid = format!(
        "{} || {} || {} || {}",
        d.hex("h", 16),
        d.hex("hn", 16),
        d.hex("s", 16),
        d.hex("n", 16)
    );
    let body = format!(
        "'{{\"' || CASE kind WHEN 'order' THEN 'order' ELSE 'transaction' END || '\":{{\"id\":\"' || subject ||
         '\",\"currency\":\"' || currency || '\",\"value\":\"' || amount ||
         '\",\"expected_amount\":\"' || amount ||
         '\",\"received_total\":\"' || CASE pstatus WHEN 'COMPLETE' THEN amount ELSE '0' END ||
         '\",\"status\":\"' || pstatus || '\",\"external_order_id\":\"' || {merchant} ||
         '\",\"created_at\":\"' || {created} || '\",\"completed_at\":' ||
         CASE WHEN fin = 1 THEN '\"' || {created} || '\"' ELSE 'null' END ||
         ',\"network\":\"TRC20\",\"payment_address\":\"T' || {addr} ||
         '\",\"txid\":\"' || {txid} ||
         '\",\"description\":\"' || CASE n WHEN {old_id} THEN '{NEEDLE_OLD}' WHEN {mid_id} THEN '{NEEDLE_MID}'
                                   ELSE 'Order ' || {merchant} || ' at ' || src END ||
         '\",\"customer_email\":\"buyer-' || {s} || '@example.com\",\"acquiring_url\":\"https:\\/\\/merchant.pay.whitepay.com\\/fiat-order\\/' ||
         subject || '\"}},\"event_type\":\"' || event_type || '\"}}'",
        s = text("s"),
    );
    let meta = format!(
        "'{{\"id\":\"' || event_id || '\",\"provider\":\"whitepay\",\"source\":\"' || src ||
         '\",\"class\":[\"' || kind || '\",\"' || status || '\"],\"subject\":\"' || subject ||
         '\",\"idempotency_key\":\"' || ikey || '\",\"provider_event_type\":\"' || event_type ||
         '\",\"provider_status\":\"' || pstatus || '\",\"order_id\":\"' || subject ||
         '\",\"merchant_order_id\":\"' || {merchant} || '\",\"amount\":\"' || amount ||
         '\",\"currency\":\"' || currency || '\",\"event_time\":\"' || {event_time} ||
         '\",\"received_at\":\"' || {received} ||
         '\",\"routing_prefix\":\"whitepay\",\"redact\":[],\"verified\":true}}'"
    );
    let sig = format!(
        "{} || {} || {} || {}",
        d.hex("hn", 16),
        d.hex("h", 16),
        d.hex("n", 16),
        d.hex("s", 16)
    );
    let headers = format!(
        "'{{\"content-length\":\"' || {len} || '\",\"content-type\":\"application/json\",\"host\":\"hooks.example.com\",\"signature\":\"' ||
         {sig} || '\",\"user-agent\":\"Whitepay-Webhook/1.0\"}}'",
        len = text("length(body_text)"),
    );
    let traceparent = format!(
        "'00-' || {} || {} || '-' || {} || '-01'",
        d.hex("hn", 16),
        d.hex("n", 16),
        d.hex("h", 16)
    );
    let rows_with_texts = format!(
        "SELECT *, {body} AS body_text FROM (
           SELECT *, {event_id} AS event_id,
                  event_type || ':' || subject || ':' || pstatus AS ikey,
                  'whitepay.' || kind || '.' || status AS routing_key
           FROM t) x"
    );
    let (events, deliveries, part, part_column, overriding) = match d {
        Dialect::Sqlite => ("events", "deliveries", String::new(), "", ""),
        Dialect::Postgres => (
            "hr_event",
            "hr_delivery",
            // The relay's partition: the first byte of SHA-256 over `source NUL subject`.
            ", get_byte(sha256(convert_to(src, 'UTF8') || '\\x00'::bytea || convert_to(subject, 'UTF8')), 0)"
                .to_owned(),
            ", part",
            "OVERRIDING SYSTEM VALUE",
        ),
    };
    let dead_error =
        "the broker returned the message: NO_ROUTE (no queue bound for its routing key)";
    let mut out = vec![
        generate,
        table,
        format!(
            "INSERT INTO {events} (id, event_id, source, provider, idempotency_key, subject{part_column},
                                   routing_key, meta, headers, body, traceparent, received_at)
             {overriding}
             SELECT n, event_id, src, 'whitepay', ikey, subject{part}, routing_key, {meta},
                    {headers}, {blob}, {traceparent}, recv
             FROM ({rows_with_texts}) y ORDER BY n",
            blob = d.blob("body_text"),
        ),
    ];
    match d {
        Dialect::Sqlite => out.push(format!(
            "INSERT INTO deliveries (id, source, subject, state, attempts, permanent_attempts,
                                     next_attempt_at, last_error, published_at, released_at)
             SELECT n, src, subject, CASE dead WHEN 1 THEN 'dead' ELSE 'published' END,
                    CASE dead WHEN 1 THEN 6 ELSE 1 END, dead, recv,
                    CASE dead WHEN 1 THEN '{dead_error}' END,
                    CASE dead WHEN 1 THEN NULL ELSE recv + 4000 END, NULL
             FROM t ORDER BY n"
        )),
        Dialect::Postgres => {
            out.push(format!(
                "INSERT INTO {deliveries} (id, part, source, subject, state, attempts, permanent_attempts,
                                          next_attempt_at, last_error, published_at, released_at)
                 SELECT t.n, e.part, t.src, t.subject, CASE t.dead WHEN 1 THEN 'dead' ELSE 'published' END,
                        CASE t.dead WHEN 1 THEN 6 ELSE 1 END, t.dead, t.recv,
                        CASE t.dead WHEN 1 THEN '{dead_error}' END,
                        CASE t.dead WHEN 1 THEN NULL ELSE t.recv + 4000 END, NULL
                 FROM t JOIN {events} e ON e.id = t.n ORDER BY t.n"
            ));
            out.push(format!(
                "SELECT setval(pg_get_serial_sequence('{events}', 'id'), {rows})"
            ));
        }
    }
    out.push("DROP TABLE t".to_owned());
    out.push("DROP TABLE g".to_owned());
    out
}

/// Seeds a SQLite outbox with the `sqlite3` shell (the relay must be stopped):
/// rollback journal and no syncs while seeding, one transaction, then back to WAL
/// as the relay keeps it.
pub fn sqlite(db: &Path, rows: u64, newest_us: i64) -> anyhow::Result<()> {
    let mut script = String::from(
        "PRAGMA journal_mode = DELETE;\nPRAGMA synchronous = OFF;\nPRAGMA cache_size = -1048576;\nPRAGMA temp_store = MEMORY;\nBEGIN;\n",
    );
    for statement in statements(Dialect::Sqlite, rows, newest_us) {
        script.push_str(&statement);
        script.push_str(";\n");
    }
    script.push_str("COMMIT;\nPRAGMA journal_mode = WAL;\n");
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `sqlite3` (the SQLite shell seeds the console scenario's outbox; install it, e.g. apt-get install sqlite3)")?;
    child
        .stdin
        .take()
        .context("sqlite3 stdin")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "sqlite3 failed seeding {}: {}",
            db.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Seeds a PostgreSQL outbox in one transaction, then `VACUUM (ANALYZE)` as
/// autovacuum would after a bulk of inserts (the relay itself vacuums
/// `hr_delivery`).
pub async fn postgres(
    client: &tokio_postgres::Client,
    rows: u64,
    newest_us: i64,
) -> anyhow::Result<()> {
    client.batch_execute("SET work_mem = '256MB'").await?;
    client.batch_execute("BEGIN").await?;
    for statement in statements(Dialect::Postgres, rows, newest_us) {
        if let Err(e) = client.batch_execute(&statement).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e).with_context(|| format!("seeding: {}", first_line(&statement)));
        }
    }
    client.batch_execute("COMMIT").await?;
    // VACUUM cannot run in a transaction block, nor in a multi-statement string.
    client.batch_execute("VACUUM (ANALYZE) hr_event").await?;
    client.batch_execute("VACUUM (ANALYZE) hr_delivery").await?;
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needles_are_distinct_and_in_no_other_text() {
        for (a, b) in [
            (NEEDLE_OLD, NEEDLE_MID),
            (NEEDLE_OLD, NEEDLE_ABSENT),
            (NEEDLE_MID, NEEDLE_ABSENT),
        ] {
            assert!(!a.contains(b) && !b.contains(a));
        }
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let sql = statements(d, 1000, 1_700_000_000_000_000).join(";\n");
            assert!(!sql.contains(NEEDLE_ABSENT));
            assert_eq!(sql.matches(NEEDLE_OLD).count(), 1);
        }
        assert_eq!(needle_ids(1_000_000), (10_000, 500_000));
    }
}
