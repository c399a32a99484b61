//! The admin API (contract §5): JSON over the views in [`super::views`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::Admin;
use super::views::{self, ListParams, RecoverRequest, ReplayRequest, Replayed, ViewError};

/// `/api/v1/…`
pub(crate) fn router() -> Router<Arc<Admin>> {
    Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/{id}", get(event))
        .route("/api/v1/replay", post(replay))
        .route("/api/v1/subjects/{source}/{subject}", get(subject))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/recover", post(recover))
}

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Outbox(_) | Self::Busy | Self::Uncounted => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Query strings that do not parse (a repeated parameter, say) get the same
/// `{"error"}` body as every other refusal.
fn bad_query(e: impl std::fmt::Display) -> ViewError {
    ViewError::Invalid(format!("cannot read the query string: {e}"))
}

async fn events(
    State(admin): State<Arc<Admin>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ViewError> {
    let Query(params) = params.map_err(bad_query)?;
    let page = views::events(&admin, &params).await?;
    Ok(Json(page).into_response())
}

async fn event(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> Result<Response, ViewError> {
    let id = id
        .parse::<i64>()
        .map_err(|_| ViewError::Invalid(format!("`{id}` is not an event id (a number)")))?;
    Ok(Json(views::detail(&admin, id).await?).into_response())
}

async fn replay(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    request: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, ViewError> {
    let Json(request) = request.map_err(|e| {
        ViewError::Invalid(format!(
            "the body must be a JSON object with `ids` or filters, and `dry_run`: {}",
            e.body_text()
        ))
    })?;
    let body = match views::replay(&admin, &request, "api", from).await? {
        Replayed::Matched(n) => serde_json::json!({ "matched": n }),
        Replayed::Replayed(n) => serde_json::json!({ "replayed": n }),
    };
    Ok(Json(body).into_response())
}

async fn recover(
    State(admin): State<Arc<Admin>>,
    request: Result<Json<RecoverRequest>, JsonRejection>,
) -> Result<Response, ViewError> {
    let Json(request) = request.map_err(|e| {
        ViewError::Invalid(format!(
            "the body must be a JSON object with `source`, and optionally `since`, `until` and `dry_run`: {}",
            e.body_text()
        ))
    })?;
    Ok(Json(views::recover(&admin, &request, "api").await?).into_response())
}

async fn subject(
    State(admin): State<Arc<Admin>>,
    Path((source, subject)): Path<(String, String)>,
) -> Result<Response, ViewError> {
    let steps = views::timeline(&admin, &source, &subject).await?;
    Ok(Json(serde_json::json!({
        "source": source,
        "subject": subject,
        "events": steps,
    }))
    .into_response())
}

async fn sources(State(admin): State<Arc<Admin>>) -> Response {
    Json(serde_json::json!({ "sources": views::sources(&admin) })).into_response()
}
