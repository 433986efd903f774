//! HTTP transport: routes, state, middleware. Handlers only translate wire format ⇄ core types.

pub mod analyze;
pub mod auth;
pub mod classify;
pub mod connection;
pub mod drain;
pub mod error;
pub mod health;
pub mod kserve;
pub mod models;
pub mod openapi;
pub mod page;
pub mod receive;
pub mod repository;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use crate::state::{AccessPolicy, AppState, Limits};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.body_limit;
    let keyed = |router: Router<AppState>| {
        router.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
    };
    let inference = Router::new()
        .route("/v1/classify", post(classify::classify_handler))
        .route("/v1/analyze", post(analyze::analyze_handler))
        .route("/v2/models/{model}/infer", post(kserve::model_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(kserve::version_infer),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            receive::whole_body,
        ));
    let api = keyed(
        inference
            .route("/v1/models", get(models::list_models))
            .route("/v2", get(kserve::server_metadata))
            .route("/v2/models/{model}", get(kserve::model_metadata))
            .route(
                "/v2/models/{model}/versions/{version}",
                get(kserve::version_metadata),
            )
            .route("/v2/models/{model}/ready", get(kserve::model_ready))
            .route(
                "/v2/models/{model}/versions/{version}/ready",
                get(kserve::version_ready),
            )
            .route("/v2/models/{model}/config", get(kserve::model_config))
            .route("/v2/repository/index", post(repository::index))
            .route("/v2/repository/models/{model}/load", post(repository::load))
            .route(
                "/v2/repository/models/{model}/unload",
                post(repository::unload),
            ),
    );
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready));
    let health = if state.access.auth_health {
        keyed(health)
    } else {
        health
    };
    let metrics = Router::new().route("/metrics", get(health::metrics));
    let metrics = if state.access.auth_metrics {
        keyed(metrics)
    } else {
        metrics
    };
    let mut router = Router::new()
        .merge(api)
        .merge(health)
        .merge(metrics)
        .route("/", get(page::index))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            drain::drain_unread_body,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ));
    if let Some(cors) = cors_layer(&state.access.cors_allow_origins) {
        router = router.layer(cors);
    }
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// CORS for the configured origins (`*`: any); `None` keeps CORS off.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any)
            .expose_headers([REQUEST_ID, SERVER_TIMING, axum::http::header::RETRY_AFTER]),
    )
}

/// Counts and times every request by route (the matched pattern, not the raw path) and status,
/// and failures by reason.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let mut response = next.run(request).await;
    // The time the server spent, for clients that time themselves (the page at `/` shows it).
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("total;dur={millis:.1}")) {
        response.headers_mut().insert(SERVER_TIMING, value);
    }
    let status = response.status().as_u16().to_string();
    let labels = [route.as_str(), method.as_str(), status.as_str()];
    state
        .inference
        .metrics()
        .http_requests
        .with_label_values(&labels)
        .inc();
    state
        .inference
        .metrics()
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Some(reason) = response.extensions().get::<error::FailureReason>() {
        state.inference.metrics().fail(reason.0);
    }
    response
}

async fn not_found(uri: axum::http::Uri) -> crate::error::Error {
    crate::error::Error::RouteNotFound(uri.path().to_string())
}

async fn method_not_allowed() -> crate::error::Error {
    crate::error::Error::MethodNotAllowed
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    axum::response::IntoResponse::into_response(crate::error::Error::Internal)
}
