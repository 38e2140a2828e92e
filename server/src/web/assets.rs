//! The page's files, compiled into the binary: nothing is read from disk or fetched at run time.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::HttpError;

/// Name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/charts.js"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/live.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
    (
        "vendor/uplot.esm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/uplot.esm.js"),
    ),
    (
        "vendor/uplot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/vendor/uplot.min.css"),
    ),
    (
        "vendor/LICENSE.uplot.txt",
        "text/plain; charset=utf-8",
        include_bytes!("assets/vendor/LICENSE.uplot.txt"),
    ),
];

const INDEX: &str = include_str!("assets/index.html");

/// `GET /`: the page (it asks for the token itself when the API answers 401).
pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

/// `GET /assets/FILE`.
pub(crate) async fn file(Path(name): Path<String>) -> Result<Response, HttpError> {
    let (_, kind, bytes) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| HttpError::not_found(format!("no asset named {name}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, *kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *bytes,
    )
        .into_response())
}
