//! A large outbox for the `console` scenarios, stored through the relay's own
//! driver (`hookrelay::testing::seed`, the relay having created the schema and
//! been stopped first): every row is a Whitepay webhook of ~600 bytes with the
//! request's headers, its metadata read from its body by the relay's Whitepay
//! provider, and a state of published or dead, so the relay has nothing to
//! publish when it starts.
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

use anyhow::Context;
use hookrelay::config::Config;
use hookrelay::testing::{Seed, SeedState};

/// Text in exactly one body, in an old row (id `rows / 100`).
pub const NEEDLE_OLD: &str = "needle-old-7c1e5a";
/// Text in exactly one body, in the middle (id `rows / 2`).
pub const NEEDLE_MID: &str = "needle-mid-3b9f20";
/// Text in no body.
pub const NEEDLE_ABSENT: &str = "needle-absent-e4d2c8";

/// The sources rows come in on, all Whitepay, with their share of the subjects
/// (by `subject % 20`).
pub const SOURCES: [(&str, u64); 4] = [
    ("whitepay", 10),
    ("shop_eu", 15),
    ("shop_us", 18),
    ("marketplace", 20),
];

/// Microseconds between two seeded rows: 1,000,000 rows span 6 days, inside the
/// relay's default retention (7 days of published rows), so it purges none of
/// them when it starts (about 1.9 webhooks/s, day and night).
const STEP_US: i64 = 518_400;

/// Rows handed to the driver at a time: bounds the memory the seed holds.
const CHUNK: usize = 50_000;

/// The last error of a dead row.
const DEAD_ERROR: &str =
    "the broker returned the message: NO_ROUTE (no queue bound for its routing key)";

/// The ids of the rows holding the two needles.
pub fn needle_ids(rows: u64) -> (i64, i64) {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    ((rows / 100).max(1), (rows / 2).max(1))
}

/// Stores `rows` rows, the newest received at `newest_us`, in the existing outbox
/// at `outbox_url` (the relay that made it stopped), then vacuums and analyzes a
/// PostgreSQL one as autovacuum would after such a bulk of inserts.
pub async fn seed(outbox_url: &str, rows: u64, newest_us: i64) -> anyhow::Result<()> {
    let mut env = vec![("HOOKRELAY_OUTBOX_URL".to_owned(), outbox_url.to_owned())];
    for (source, _) in SOURCES {
        env.push((
            format!("HOOKRELAY_SOURCES__{}__PROVIDER", source.to_uppercase()),
            "whitepay".to_owned(),
        ));
    }
    let config = Config::load_from(None, &env).context("the seed's configuration")?;
    let config = &config;
    let mut stored = 0;
    let mut pending = Vec::with_capacity(CHUNK);
    for row in mix(rows, newest_us) {
        pending.push(row);
        if pending.len() == CHUNK {
            stored += hookrelay::testing::seed(config, pending.drain(..))
                .await
                .context("seeding the outbox")?;
        }
    }
    stored += hookrelay::testing::seed(config, pending)
        .await
        .context("seeding the outbox")?;
    anyhow::ensure!(stored == rows, "seeded {stored} of {rows} rows");
    hookrelay::testing::vacuum(config)
        .await
        .context("vacuuming the seeded outbox")?;
    Ok(())
}

/// A time as Whitepay writes it: `YYYY-MM-DD HH:MM:SS`, UTC without a zone.
fn naive_utc(us: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_default()
}

/// A subject's hash: spreads the mix over subjects.
fn hash(x: u64) -> u64 {
    x.wrapping_mul(2_654_435_761) % (1 << 32)
}

/// `value` as lower-case hex, zero-padded to `width` digits.
fn hex(value: u64, width: usize) -> String {
    format!("{value:0width$x}")
}

/// A UUID-shaped text of version `version`: `hash` gives the first group and the
/// variant bits, `time_mid` and `time_hi` the middle groups, `node` the last.
fn uuid_like(hash: u64, time_mid: u64, version: char, time_hi: u64, node: u64) -> String {
    format!(
        "{}-{}-{version}{}-{}-{}",
        hex(hash, 8),
        hex(time_mid, 4),
        hex(time_hi, 3),
        hex(32_768 + hash % 16_384, 4),
        hex(node, 12)
    )
}

/// The rows, oldest first.
fn mix(rows: u64, newest_us: i64) -> impl Iterator<Item = Seed> {
    // Subjects have 1 + h % 5 events, 3 on average: enough subjects, and a margin.
    let subjects = rows / 3 + rows / 50 + 1000;
    let mut events: Vec<(u64, u64)> = (0..subjects)
        .flat_map(|s| (0..1 + hash(s) % 5).map(move |k| (s, k)))
        .collect();
    // The k-th event of a subject ~1000 subjects after its first.
    events.sort_unstable_by_key(|&(s, k)| (s + k * 1000, s));
    events.truncate(usize::try_from(rows).unwrap_or(usize::MAX));
    let base_us = newest_us - i64::try_from(rows).unwrap_or(0) * STEP_US;
    let needles = needle_ids(rows);
    events
        .into_iter()
        .zip(1..)
        .map(move |((s, k), n)| row(s, k, n, base_us, needles))
}

/// Row `n`, event `k` of subject `s`.
fn row(s: u64, k: u64, n: i64, base_us: i64, (old, mid): (i64, i64)) -> Seed {
    let h = hash(s);
    let n_u = n.unsigned_abs();
    let hn = hash(n_u);
    let last = k == h % 5;
    let received_at_us = base_us + n * STEP_US;
    let source = SOURCES
        .iter()
        .find(|(_, below)| s % 20 < *below)
        .map_or("whitepay", |(name, _)| *name);
    let kind = match (h / 8) % 100 {
        0..80 => "order",
        80..92 => "transaction",
        92..97 => "withdrawal",
        _ => "refund",
    };
    let subject = uuid_like(h, (s * 7) % 65_536, '4', s % 4096, s);
    let currency = ["USDT", "UAH", "EUR", "USD"][(s % 4) as usize];
    let amount = format!("{}.{:02}", 10 + h % 5000, (h / 7) % 100);
    let status = if last {
        match (h / 1024) % 100 {
            0..85 => "COMPLETE",
            85..95 => "DECLINED",
            _ => "CANCELLED",
        }
    } else {
        ["INIT", "OPEN", "PARTIALLY_FULFILLED", "PATIALLY_FULFILLED"][k.min(3) as usize]
    };
    let event_type = format!(
        "{}::{}",
        if kind == "refund" { "rollback" } else { kind },
        match (kind, last, status) {
            ("refund", ..) => "to_client",
            (_, false, _) => "status_changed",
            (_, _, "COMPLETE") => "completed",
            (_, _, "DECLINED") => "declined",
            _ => "cancelled",
        }
    );
    let created = naive_utc(received_at_us);
    let merchant = format!("m-{source}-{s}");
    let description = match n {
        _ if n == old => NEEDLE_OLD.to_owned(),
        _ if n == mid => NEEDLE_MID.to_owned(),
        _ => format!("Order {merchant} at {source}"),
    };
    let entity = if kind == "order" {
        "order"
    } else {
        "transaction"
    };
    let received_total = if status == "COMPLETE" {
        amount.as_str()
    } else {
        "0"
    };
    let completed_at = if last {
        format!("\"{created}\"")
    } else {
        "null".to_owned()
    };
    let body = format!(
        r#"{{"{entity}":{{"id":"{subject}","currency":"{currency}","value":"{amount}","expected_amount":"{amount}","received_total":"{received_total}","status":"{status}","external_order_id":"{merchant}","created_at":"{created}","completed_at":{completed_at},"network":"TRC20","payment_address":"T{addr}","txid":"{txid}","description":"{description}","customer_email":"buyer-{s}@example.com","acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/{subject}"}},"event_type":"{event_type}"}}"#,
        addr = hex(h * 3, 17) + &hex(hn, 16),
        txid = hex(h, 16) + &hex(hn, 16) + &hex(s, 16) + &hex(n_u, 16),
    );
    let headers_json = format!(
        r#"{{"content-length":"{}","content-type":"application/json","host":"hooks.example.com","signature":"{}","user-agent":"Whitepay-Webhook/1.0"}}"#,
        body.len(),
        hex(hn, 16) + &hex(h, 16) + &hex(n_u, 16) + &hex(s, 16),
    );
    let dead = last && (h / 65_536).is_multiple_of(33);
    Seed {
        source: source.to_owned(),
        body: body.into_bytes(),
        headers_json,
        received_at_us,
        traceparent: format!("00-{}{}-{}-01", hex(hn, 16), hex(n_u, 16), hex(h, 16)),
        state: if dead {
            SeedState::Dead {
                attempts: 6,
                error: DEAD_ERROR.to_owned(),
            }
        } else {
            SeedState::Published {
                at_us: received_at_us + 4000,
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needles_are_distinct_and_each_in_one_body() {
        for (a, b) in [
            (NEEDLE_OLD, NEEDLE_MID),
            (NEEDLE_OLD, NEEDLE_ABSENT),
            (NEEDLE_MID, NEEDLE_ABSENT),
        ] {
            assert!(!a.contains(b) && !b.contains(a));
        }
        let bodies: Vec<String> = mix(1000, 1_700_000_000_000_000)
            .map(|row| String::from_utf8(row.body).expect("text"))
            .collect();
        assert_eq!(bodies.len(), 1000);
        let holding = |needle| bodies.iter().filter(|b| b.contains(needle)).count();
        assert_eq!(
            (
                holding(NEEDLE_OLD),
                holding(NEEDLE_MID),
                holding(NEEDLE_ABSENT)
            ),
            (1, 1, 0)
        );
        assert!(
            bodies[9].contains(NEEDLE_OLD),
            "row 10 of 1000 holds the old needle"
        );
        assert_eq!(needle_ids(1_000_000), (10_000, 500_000));
    }
}
