//! `GET /`: a page to try the server in a browser: a photo or the webcam in, every face boxed with
//! its expression and scores drawn over it. One HTML file embedded in the binary (no CDN, no build
//! step); it calls the public `/v1/analyze` like any client.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("page.html");

/// The page (also linked from the README); it needs the face detector, and says so if there is none.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
                 style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
}
