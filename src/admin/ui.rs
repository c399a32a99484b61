//! The console (`/ui/`): server-rendered HTML over the views in
//! [`super::views`], plain links and forms, no script. Everything it shows the
//! API shows too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Admin;
use super::auth::{self, CSRF_FIELD, Caller};
use super::views::{self, FilterParams, ListParams, ReplayRequest, Replayed, ViewError};
use crate::outbox::view::{self, RowView};

/// The console's pages behind the guard.
pub(crate) fn router() -> Router<Arc<Admin>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(events))
        .route("/ui/events/{id}", get(event))
        .route("/ui/subjects/{source}/{subject}", get(subject))
        .route("/ui/sources", get(sources))
        .route("/ui/dead", get(dead))
        .route("/ui/outbox", get(outbox))
        .route("/ui/replay", post(replay))
        .route("/ui/recover", post(recover))
        .route("/ui/logout", post(logout))
}

/// The login form, outside the guard.
pub(crate) fn login_router() -> Router<Arc<Admin>> {
    Router::new().route("/ui/login", get(login_form).post(login))
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}
header a{color:#dfe6f3;text-decoration:none}header a:hover,header a:focus{text-decoration:underline}
header strong{margin-right:1em}header form{margin-left:auto}
main{padding:1em 1.2em;max-width:1400px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef1f5;font-weight:600}
code,pre{font:13px/1.4 ui-monospace,monospace}
pre{background:#fff;border:1px solid #e3e6eb;padding:.6em;overflow:auto;max-height:28em;white-space:pre-wrap;word-break:break-all}
main>form{margin:.8em 0}
form.filters{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:1em}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5466}
input,select,button{font:inherit;padding:.25em .4em}
button{cursor:pointer}
a:focus,button:focus,input:focus,select:focus{outline:2px solid #3d7eff;outline-offset:1px}
.state-dead,.backwards{color:#b42318;font-weight:600}.state-pending{color:#9a6700}
.note{color:#4a5466}.error{color:#b42318}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}
";

/// A whole page: navigation, then `body`.
fn page(title: &str, caller: &Caller, admin: &Admin, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hookrelay" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "hookrelay" }
                    nav aria-label="Console" {
                        a href="/ui/" accesskey="e" { "Events" } " · "
                        a href="/ui/dead" accesskey="d" { "Dead & unrecognized" } " · "
                        a href="/ui/sources" accesskey="s" { "Sources" } " · "
                        a href="/ui/outbox" accesskey="o" { "Outbox" }
                    }
                    @if matches!(caller, Caller::Session(_)) {
                        form method="post" action="/ui/logout" {
                            input type="hidden" name=(CSRF_FIELD) value=(admin.access.csrf(caller));
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// A page that says what went wrong.
fn problem(caller: &Caller, admin: &Admin, error: &ViewError) -> Response {
    let status = match error {
        ViewError::Invalid(_) => StatusCode::BAD_REQUEST,
        ViewError::NotFound(_) => StatusCode::NOT_FOUND,
        ViewError::Outbox(_) | ViewError::Busy | ViewError::Uncounted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let body = html! { p.error role="alert" { (error.to_string()) } };
    (status, page("Problem", caller, admin, body)).into_response()
}

/// The filter fields, filled with what was asked.
fn filter_fields(params: &FilterParams) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let text = |name: &str, label: &str, v: &Option<String>, hint: &str| {
        html! {
            label { (label) input type="text" name=(name) value=(value(v)) placeholder=(hint); }
        }
    };
    html! {
        label { "Search body"
            input type="search" name="q" value=(value(&params.q)) placeholder="order id, text…" autofocus;
        }
        (text("subject", "Subject", &params.subject, "exact id"))
        label { "State"
            select name="state" {
                @for (state, label) in [("", "any"), ("pending", "pending"), ("published", "published"), ("dead", "dead")] {
                    option value=(state) selected[params.state.as_deref() == Some(state)] { (label) }
                }
            }
        }
        (text("source", "Source", &params.source, ""))
        (text("provider", "Provider", &params.provider, ""))
        (text("kind", "Kind", &params.kind, "order, refund…"))
        (text("status", "Status", &params.status, "succeeded…"))
        (text("routing_key", "Routing key", &params.routing_key, ""))
        (text("since", "Since", &params.since, "2h or RFC 3339"))
        (text("until", "Until", &params.until, ""))
    }
}

/// The filters as hidden fields (for the replay form).
fn hidden_filter(params: &FilterParams) -> Markup {
    let fields = [
        ("state", &params.state),
        ("source", &params.source),
        ("provider", &params.provider),
        ("kind", &params.kind),
        ("status", &params.status),
        ("subject", &params.subject),
        ("routing_key", &params.routing_key),
        ("since", &params.since),
        ("until", &params.until),
        ("q", &params.q),
    ];
    html! {
        @for (name, value) in fields {
            @if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                input type="hidden" name=(name) value=(value);
            }
        }
    }
}

/// Link to a subject's timeline.
fn timeline_link(row: &RowView) -> Markup {
    html! {
        a href={ "/ui/subjects/" (auth::encode(&row.source)) "/" (auth::encode(&row.subject)) } { (row.subject) }
    }
}

fn rows_table(rows: &[RowView]) -> Markup {
    html! {
        table {
            thead { tr {
                th { "id" } th { "received" } th { "source" } th { "kind" } th { "status" }
                th { "subject" } th { "amount" } th { "state" } th { "tries" } th { "routing key" }
            } }
            tbody {
                @for row in rows {
                    tr {
                        td { a href={ "/ui/events/" (row.id) } { (row.id) } }
                        td { (row.received_at) }
                        td { (row.source) }
                        td { (row.kind) }
                        td { (row.status) @if let Some(s) = &row.provider_status { " " span.note { "(" (s) ")" } } }
                        td { (timeline_link(row)) }
                        td { (row.amount.clone().unwrap_or_default()) " " (row.currency.clone().unwrap_or_default()) }
                        td class={ "state-" (row.state) } { (row.state) }
                        td { (row.attempts) }
                        td { code { (row.routing_key) } }
                    }
                }
            }
        }
    }
}

async fn events(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return problem(&caller, &admin, &ViewError::Invalid(e.body_text())),
    };
    let found = match views::events(&admin, &params).await {
        Ok(found) => found,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let next = found.next_cursor.map(|cursor| {
        let mut query = serde_urlencoded::to_string(&params.filter).unwrap_or_default();
        if !query.is_empty() {
            query.push('&');
        }
        format!("/ui/?{query}cursor={cursor}")
    });
    let body = html! {
        form.filters method="get" action="/ui/" role="search" {
            (filter_fields(&params.filter))
            button type="submit" { "Find" }
            a href="/ui/" { "Clear" }
        }
        @if found.events.is_empty() {
            p.note { "No events match on this page." }
        } @else {
            (rows_table(&found.events))
        }
        @if let Some(next) = next {
            p { a href=(next) rel="next" { "Older events →" }
                @if found.events.len() < params.paging().map(|(limit, _)| limit).unwrap_or(0) {
                    " " span.note { "(the search stopped at its time budget; older events were not searched yet)" }
                }
            }
        }
        form method="post" action="/ui/replay" {
            input type="hidden" name=(CSRF_FIELD) value=(admin.access.csrf(&caller));
            (hidden_filter(&params.filter))
            button type="submit" { "Replay every event matching these filters…" }
            " " span.note { "shows the count first" }
        }
    };
    page("Events", &caller, &admin, body).into_response()
}

async fn event(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        let error = ViewError::Invalid(format!("`{id}` is not an event id"));
        return problem(&caller, &admin, &error);
    };
    let detail = match views::detail(&admin, id).await {
        Ok(detail) => detail,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let row = &detail.row;
    let headers = row
        .headers
        .as_ref()
        .and_then(|h| serde_json::to_string_pretty(h).ok())
        .unwrap_or_default();
    let body_text = row
        .body
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let cloudevent = detail
        .cloudevent
        .as_ref()
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let body = html! {
        dl {
            dt { "Event id (message id)" } dd { code { (row.event_id) } }
            dt { "Source / provider" } dd { (row.source) " / " (row.provider) }
            dt { "Kind / status" } dd { (row.kind) " / " (row.status)
                @if let Some(s) = &row.provider_status { " (provider: " (s) ")" } }
            dt { "Subject" } dd { (timeline_link(row)) }
            dt { "Amount" } dd { (row.amount.clone().unwrap_or_default()) " " (row.currency.clone().unwrap_or_default()) }
            dt { "Routing key" } dd { code { (row.routing_key) } }
            dt { "State" } dd class={ "state-" (row.state) } { (row.state) }
            dt { "Received" } dd { (row.received_at) }
            dt { "Published" } dd { (row.published_at.clone().unwrap_or_else(|| "–".to_owned())) }
            dt { "Attempts" } dd { (row.attempts) " (" (row.permanent_attempts) " permanent failures)" }
            dt { "Next attempt" } dd { (row.next_attempt_at) }
            dt { "Last error" } dd { (row.last_error.clone().unwrap_or_else(|| "–".to_owned())) }
            dt { "Verification" } dd { (detail.verification) }
            dt { "Idempotency key" } dd { code { (row.idempotency_key) } }
            dt { "traceparent" } dd { code { (row.traceparent.clone().unwrap_or_default()) } }
        }
        form method="post" action="/ui/replay" {
            input type="hidden" name=(CSRF_FIELD) value=(admin.access.csrf(&caller));
            input type="hidden" name="ids" value=(row.id);
            button type="submit" { "Replay this event…" }
        }
        h2 { "Failed attempts" }
        @match &row.failures {
            Some(failures) if !failures.is_empty() => {
                table { thead { tr { th { "at" } th { "became" } th { "error" } } }
                    tbody { @for a in failures { tr { td { (a.at) } td { (a.outcome) } td { (a.error) } } } } }
            }
            _ => { p.note { "None." } }
        }
        h2 { "Headers (secrets removed)" }
        pre { (headers) }
        h2 { "Body as published (redacted)" }
        pre { (body_text) }
        h2 { "CloudEvent" }
        @if let Some(text) = cloudevent { pre { (text) } }
        @if let Some(error) = &detail.cloudevent_error { p.error { (error) } }
    };
    page(&format!("Event {}", row.id), &caller, &admin, body).into_response()
}

async fn subject(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path((source, subject)): Path<(String, String)>,
) -> Response {
    let steps = match views::timeline(&admin, &source, &subject).await {
        Ok(steps) => steps,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let body = html! {
        p.note { "Every event of " code { (subject) } " from source " code { (source) }
            " in the order received. A status that goes back to an earlier stage is flagged." }
        table {
            thead { tr { th { "id" } th { "received" } th { "kind" } th { "provider status" }
                th { "status" } th { "amount" } th { "publish state" } th { "" } } }
            tbody {
                @for step in &steps {
                    tr {
                        td { a href={ "/ui/events/" (step.row.id) } { (step.row.id) } }
                        td { (step.row.received_at) }
                        td { (step.row.kind) }
                        td { (step.row.provider_status.clone().unwrap_or_default()) }
                        td { (step.row.status) }
                        td { (step.row.amount.clone().unwrap_or_default()) " " (step.row.currency.clone().unwrap_or_default()) }
                        td class={ "state-" (step.row.state) } { (step.row.state) }
                        td { @if step.backwards { span.backwards title="status went backwards" { "⚠ backwards" } } }
                    }
                }
            }
        }
        @if steps.is_empty() { p.note { "No events of this subject." } }
    };
    page(&format!("Subject {subject}"), &caller, &admin, body).into_response()
}

/// Unix seconds as RFC 3339, or "never".
fn when(at: Option<i64>) -> String {
    at.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(|| "never".to_owned(), crate::event::rfc3339)
}

async fn sources(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let sources = views::sources(&admin);
    let (gaps, calls) = match admin.recovery.recent(100).await {
        Ok(recent) => recent,
        Err(e) => return problem(&caller, &admin, &ViewError::Outbox(e)),
    };
    let csrf = admin.access.csrf(&caller);
    let time = |us: i64| view::shown_time(us);
    let body = html! {
        p.note { "Counts are this relay's, since it started (each replica counts its own)." }
        table {
            thead { tr { th { "source" } th { "provider" } th { "last received" } th { "last acked" }
                th { "last hour" } th { "last day" } th { "recover" } th {} } }
            tbody {
                @for s in &sources {
                    tr {
                        td { a href={ "/ui/?source=" (s.name) } { (s.name) } }
                        td { (s.provider) }
                        td { (when(s.activity.last_received)) }
                        td { (when(s.activity.last_accepted)) }
                        td { (counts(&s.activity.last_hour)) }
                        td { (counts(&s.activity.last_day)) }
                        td title=[s.recovery_unavailable.as_deref()] { (s.recover) }
                        td {
                            form method="post" action="/ui/recover" {
                                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                                input type="hidden" name="source" value=(s.name);
                                button type="submit" id={ "recover-" (s.name) } { "Recovery…" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Gaps of the last day" }
        p.note { "Times no relay was up, or a source's webhooks were refused (401, 503); see docs/recovery.md." }
        @if gaps.is_empty() { p.note { "None." } } @else {
            table id="gaps" {
                thead { tr { th { "source" } th { "why" } th { "from" } th { "until" } th { "state" } th { "detail" } } }
                tbody { @for gap in &gaps { tr {
                    td { (gap.source) } td { (gap.reason) } td { (time(gap.from_us)) }
                    td { (time(gap.until_us)) } td class={ "gap-" (gap.state) } { (gap.state) } td { (gap.detail) }
                } } }
            }
        }
        h2 { "Calls to providers of the last day" }
        @if calls.is_empty() { p.note { "None." } } @else {
            table id="calls" {
                thead { tr { th { "at" } th { "source" } th { "kind" } th { "subject" } th { "outcome" } th { "detail" } } }
                tbody { @for call in &calls { tr {
                    td { (time(call.called_us)) } td { (call.source) } td { (call.kind) }
                    td { (call.subject) } td { (call.outcome) } td { (call.detail) }
                } } }
            }
        }
    };
    page("Sources", &caller, &admin, body).into_response()
}

/// Outcome counts, the non-zero ones.
fn counts(counts: &std::collections::HashMap<&'static str, u64>) -> Markup {
    html! {
        @for outcome in crate::activity::OUTCOMES {
            @if let Some(n) = counts.get(outcome).filter(|n| **n > 0) {
                span class={ "outcome-" (outcome) } { (outcome) " " (n) } " "
            }
        }
    }
}

async fn dead(State(admin): State<Arc<Admin>>, Extension(caller): Extension<Caller>) -> Response {
    let dead_filter = FilterParams {
        state: Some("dead".to_owned()),
        ..FilterParams::default()
    };
    let unrecognized_filter = FilterParams {
        kind: Some("unrecognized".to_owned()),
        ..FilterParams::default()
    };
    let list = |filter: &FilterParams| ListParams {
        filter: filter.clone(),
        ..ListParams::default()
    };
    let dead = views::events(&admin, &list(&dead_filter)).await;
    let unrecognized = views::events(&admin, &list(&unrecognized_filter)).await;
    let (dead, unrecognized) = match (dead, unrecognized) {
        (Ok(dead), Ok(unrecognized)) => (dead, unrecognized),
        (Err(e), _) | (_, Err(e)) => return problem(&caller, &admin, &e),
    };
    let csrf = admin.access.csrf(&caller);
    let body = html! {
        h2 { "Dead" }
        p.note { "Given up on after permanent failures; each holds back the later events of its subject until replayed or released." }
        @if dead.events.is_empty() { p.note { "None." } } @else {
            (rows_table(&dead.events))
            form method="post" action="/ui/replay" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                (hidden_filter(&dead_filter))
                button type="submit" id="replay-dead" { "Replay all dead events…" }
            }
        }
        h2 { "Unrecognized" }
        p.note { "Authentic webhooks the provider's rules could not map; published as " code { "{provider}.unrecognized" } "." }
        @if unrecognized.events.is_empty() { p.note { "None." } } @else {
            (rows_table(&unrecognized.events))
        }
    };
    page("Dead & unrecognized", &caller, &admin, body).into_response()
}

/// How long the outbox page waits for a count before it answers with the latest.
const COUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn outbox(State(admin): State<Arc<Admin>>, Extension(caller): Extension<Caller>) -> Response {
    let stats = match admin.counts.latest(COUNT_WAIT).await {
        Some(counted) => counted.stats,
        None => return problem(&caller, &admin, &ViewError::Uncounted),
    };
    let oldest = stats.oldest_pending_us.map_or_else(
        || "–".to_owned(),
        |us| {
            let age = (crate::clock::now_micros() - us).max(0) / 1_000_000;
            format!("{age} s ago ({})", view::shown_time(us))
        },
    );
    let broker = admin.metrics.broker.now();
    let body = html! {
        dl {
            dt { "Pending" } dd { a href="/ui/?state=pending" { (stats.pending) } }
            dt { "Oldest pending" } dd { (oldest) }
            dt { "Dead" } dd { a href="/ui/dead" { (stats.dead) } }
            dt { "Subjects held by a dead event" } dd { (stats.held_subjects) }
            dt { "Fenced (committed, not yet readable)" } dd { (stats.fenced) }
            dt { "Partitions this relay leases" } dd { (stats.partitions) }
            dt { "Broker" } dd {
                @match &broker.node {
                    Some(node) => {
                        "connected to " (node)
                        @if broker.blocked_since.is_some() { " " span.error { "(blocked by the broker: a memory or disk alarm)" } }
                    }
                    None => span.error { "disconnected" },
                }
            }
        }
    };
    page("Outbox", &caller, &admin, body).into_response()
}

/// A replay form's fields: filters, ids, and whether the operator confirmed.
fn replay_form(body: &[u8]) -> Result<(ReplayRequest, bool), ViewError> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| ViewError::Invalid(format!("cannot read the form: {e}")))?;
    let mut request = ReplayRequest::default();
    let mut confirmed = false;
    for (key, value) in fields {
        let value = Some(value);
        let filter = &mut request.filter;
        match key.as_str() {
            "ids" => {
                for id in value
                    .iter()
                    .flat_map(|v| v.split([',', ' ']))
                    .filter(|v| !v.is_empty())
                {
                    request.ids.push(
                        id.parse().map_err(|_| {
                            ViewError::Invalid(format!("`{id}` is not an event id"))
                        })?,
                    );
                }
            }
            "confirm" => confirmed = true,
            "state" => filter.state = value,
            "source" => filter.source = value,
            "provider" => filter.provider = value,
            "kind" => filter.kind = value,
            "status" => filter.status = value,
            "subject" => filter.subject = value,
            "routing_key" => filter.routing_key = value,
            "since" => filter.since = value,
            "until" => filter.until = value,
            "q" => filter.q = value,
            _ => {}
        }
    }
    request.dry_run = !confirmed;
    Ok((request, confirmed))
}

/// Bulk replay in two steps: the first POST counts what matches and asks; the
/// confirmed one replays.
async fn replay(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let (request, confirmed) = match replay_form(&body) {
        Ok(form) => form,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let outcome = match views::replay(&admin, &request, "console", from).await {
        Ok(outcome) => outcome,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let csrf = admin.access.csrf(&caller);
    let body = match (outcome, confirmed) {
        (Replayed::Matched(n), _) => html! {
            p role="status" id="matched" { strong { (n) } " events match. Replaying publishes each again with its message id, in received order per subject." }
            @if n > 0 {
                form method="post" action="/ui/replay" {
                    input type="hidden" name=(CSRF_FIELD) value=(csrf);
                    input type="hidden" name="confirm" value="yes";
                    @if !request.ids.is_empty() {
                        input type="hidden" name="ids" value=(request.ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
                    }
                    (hidden_filter(&request.filter))
                    button type="submit" id="confirm" autofocus { "Replay " (n) " events" }
                    " " a href="/ui/" { "Cancel" }
                }
            }
        },
        (Replayed::Replayed(n), _) => html! {
            p role="status" id="replayed" { strong { (n) } " events are pending again; the relay publishes them within a second." }
            p { a href="/ui/?state=pending" { "See pending events" } }
        },
    };
    page("Replay", &caller, &admin, body).into_response()
}

/// Recovery in two steps: the first POST is a dry run that says what would be
/// asked; the confirmed one asks.
async fn recover(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let fields: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
        Ok(fields) => fields,
        Err(e) => {
            return problem(
                &caller,
                &admin,
                &ViewError::Invalid(format!("cannot read the form: {e}")),
            );
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let confirmed = field("confirm").is_some();
    let request = views::RecoverRequest {
        source: field("source").unwrap_or_default(),
        since: field("since").filter(|v| !v.is_empty()),
        until: None,
        dry_run: !confirmed,
    };
    let report = match views::recover(&admin, &request, "console").await {
        Ok(report) => report,
        Err(e) => return problem(&caller, &admin, &e),
    };
    let csrf = admin.access.csrf(&caller);
    let asks = report.gaps.iter().any(|gap| !gap.windows.is_empty())
        || report.stuck.iter().any(|s| s.outcome == "would ask");
    let body = html! {
        p role="status" id={ @if confirmed { "recovered" } @else { "dry-run" } } {
            @if confirmed { "Asked the provider of " } @else { "Dry run for " }
            strong { (report.source) } " (" (report.provider) ", recover = " (report.recover) ")."
        }
        @if let Some(why) = &report.no_api { p.error { (why) } }
        @if let Some(at) = &report.next_resend_at { p.note { "The provider's limits allow the next resend at " (at) "." } }
        h2 { "Gaps" }
        @if report.gaps.is_empty() { p.note { "None in the range." } } @else {
            table id="report-gaps" {
                thead { tr { th { "why" } th { "from" } th { "until" } th { "state" } th { "windows to ask for" } th { "detail" } } }
                tbody { @for gap in &report.gaps { tr {
                    td { (gap.reason) } td { (gap.from) } td { (gap.until) } td { (gap.state) }
                    td { (gap.windows.len()) } td { (gap.detail) }
                } } }
            }
        }
        h2 { "Stuck subjects" }
        @if report.stuck.is_empty() { p.note { "None in the range." } } @else {
            table id="report-stuck" {
                thead { tr { th { "subject" } th { "last status" } th { "outcome" } } }
                tbody { @for s in &report.stuck { tr { td { (s.subject) } td { (s.status) } td { (s.outcome) } } } }
            }
        }
        @if !confirmed && asks {
            form method="post" action="/ui/recover" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                input type="hidden" name="source" value=(report.source);
                input type="hidden" name="confirm" value="yes";
                @if let Some(since) = &request.since { input type="hidden" name="since" value=(since); }
                button type="submit" id="confirm-recover" autofocus { "Ask the provider now" }
                " " a href="/ui/sources" { "Cancel" }
            }
        }
    };
    page("Recovery", &caller, &admin, body).into_response()
}

async fn logout() -> Response {
    (
        [(header::SET_COOKIE, auth::expired_cookie())],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    failed: Option<String>,
}

/// Where to go after logging in: only a console page of this listener.
fn next_page(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//"))
        .unwrap_or("/ui/")
        .to_owned()
}

async fn login_form(Query(query): Query<LoginQuery>) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · hookrelay" }
                style { (PreEscaped(STYLE)) }
            }
            body { main {
                h1 { "hookrelay console" }
                @if query.failed.is_some() { p.error role="alert" { "That is not the admin token." } }
                form method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next_page(query.next.as_deref()));
                    label { "Admin token (HOOKRELAY_ADMIN_TOKEN) "
                        input type="password" name="token" id="token" autofocus autocomplete="current-password"; }
                    " " button type="submit" id="login" { "Log in" }
                }
            } }
        }
    };
    Html(markup.into_string()).into_response()
}

async fn login(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let next = next_page(field("next"));
    if !admin.access.token_matches(field("token").unwrap_or("")) {
        // Anyone who reaches the listener can try: one line a second at most.
        if let Some(left_out) = admin.failed_logins.allow() {
            tracing::warn!(target: "hookrelay::audit", left_out,
                "console login with a wrong token (one line a second at most)");
        }
        return Redirect::to(&format!("/ui/login?failed=1&next={}", auth::encode(&next)))
            .into_response();
    }
    let session = admin
        .access
        .new_session(crate::clock::now_micros() / 1_000_000);
    (
        [(header::SET_COOKIE, auth::session_cookie(&session))],
        Redirect::to(&next),
    )
        .into_response()
}
