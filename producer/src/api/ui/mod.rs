//! The dashboard at `/ui`: plain HTML, CSS and one JavaScript module, compiled into
//! the binary (`assets/`), calling the JSON API with a session cookie. No framework,
//! nothing fetched from elsewhere; a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script).
//!
//! | route | answer |
//! |---|---|
//! | `GET /ui/login` | the login form (a token) |
//! | `POST /ui/login` | opens a session (`session.rs`): cookie, then 303 to `/ui/` |
//! | `GET /ui/` | the dashboard; 303 to `/ui/login` without a session |
//! | `GET /ui/session` | `{name, role, csrf}`: who is logged in, the CSRF token for actions |
//! | `POST /ui/logout` | ends the session, clears the cookie (needs `X-CSRF-Token`) |
//! | `GET /ui/assets/{file}` | `app.js`, `style.css` |
//!
//! The dashboard needs authentication (`api.token` or `api.tokens`): without it the
//! API refuses every request a browser sends (`guard::browser`), and `/ui` says so.

pub mod session;

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::guard::{self, bearer_matches};
use super::{ApiError, Shared};
use fleet_shared::settings::ApiRole;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Scripts, styles, pictures and API calls from this origin only; no inline script,
/// no framing, forms post here only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, with their own guards (the API's are per request inside
/// the handlers: session, CSRF, throttle), the access log and a small body limit.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/ui", get(to_index))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/session", get(whoami))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/assets/{file}", get(asset))
        .layer(DefaultBodyLimit::max(4096))
        .layer(from_fn(security_headers))
        .layer(from_fn(guard::observe))
        .with_state(state)
}

/// CSP and friends on every dashboard answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn see_other(to: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, HeaderValue::from_static(to))],
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The login page, with a message (static text only, never anything the client sent).
fn login_html(status: StatusCode, message: &str) -> Response {
    let notice = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"notice\" role=\"alert\">{message}</p>")
    };
    html(status, LOGIN_HTML.replace("<!--notice-->", &notice))
}

const NO_AUTH: &str = "The dashboard needs api.token (or api.tokens) to be set: without a token, \
    the API refuses every request a browser sends. Set FLEET_API__TOKEN and restart fleet serve.";

async fn to_index() -> Response {
    see_other("/ui/")
}

/// The session behind the request's cookie, and its role.
async fn current(
    state: &Shared,
    headers: &HeaderMap,
) -> Result<Option<(session::Session, ApiRole)>, ApiError> {
    let Some(id) = session::cookie_id(headers) else {
        return Ok(None);
    };
    let api = &state.ctx.settings.api;
    Ok(session::load(state, &id)
        .await?
        .and_then(|s| s.credential(api).map(|c| c.role).map(|role| (s, role))))
}

async fn index(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if !state.ctx.settings.api.auth_enabled() {
        return login_html(StatusCode::FORBIDDEN, NO_AUTH);
    }
    match current(&state, &headers).await {
        Ok(Some(_)) => html(StatusCode::OK, INDEX_HTML.to_string()),
        Ok(None) => see_other("/ui/login"),
        Err(e) => e.into_response(),
    }
}

async fn login_page(State(state): State<Shared>) -> Response {
    if !state.ctx.settings.api.auth_enabled() {
        return login_html(StatusCode::FORBIDDEN, NO_AUTH);
    }
    login_html(StatusCode::OK, "")
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// A form posted from another site is refused: when the browser says where the
/// request comes from (`Origin`), it must be this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && bare == Some(host)
}

/// `POST /ui/login`: a token of `api.token`/`api.tokens` opens a session. Wrong
/// tokens count against the address like wrong bearer tokens do.
async fn login(
    State(state): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let api = &state.ctx.settings.api;
    if !api.auth_enabled() {
        return login_html(StatusCode::FORBIDDEN, NO_AUTH);
    }
    if !same_origin(&headers) {
        return login_html(
            StatusCode::FORBIDDEN,
            "This login came from another site and was refused.",
        );
    }
    let now = Instant::now();
    if let Some(wait) = state.throttle.blocked(client.ip(), now) {
        let mut response = login_html(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong tokens from this address (api.auth_failures_per_minute); wait a minute and try again.",
        );
        let (k, v) = guard::retry_after_header(wait);
        response.headers_mut().insert(k, v);
        return response;
    }
    let Ok(Form(form)) = form else {
        return login_html(StatusCode::BAD_REQUEST, "Enter a token.");
    };
    let header = HeaderValue::from_str(&format!("Bearer {}", form.token.trim())).ok();
    let matched = api.credentials.iter().fold(None, |found, c| {
        let hit = bearer_matches(header.as_ref(), &c.secret);
        found.or(hit.then_some(c))
    });
    let Some(credential) = matched else {
        state.throttle.failed(client.ip(), now);
        return login_html(
            StatusCode::UNAUTHORIZED,
            "That token is not one of api.token or api.tokens.",
        );
    };
    match session::open(&state, credential).await {
        Ok(id) => {
            tracing::info!(token = %credential.name, "dashboard login");
            let mut response = see_other("/ui/");
            response
                .headers_mut()
                .insert(SET_COOKIE, session::set_cookie(api, &id));
            response
        }
        Err(e) => login_html(
            e.status,
            "Redis is unavailable, so no session could be opened; try again later.",
        ),
    }
}

/// `GET /ui/session`: who is logged in, and the CSRF token the page sends with actions.
async fn whoami(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match current(&state, &headers).await {
        Ok(Some((s, role))) => Json(json!({
            "name": s.name,
            "role": match role { ApiRole::Read => "read", ApiRole::Admin => "admin" },
            "csrf": s.csrf,
        }))
        .into_response(),
        Ok(None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no dashboard session: log in at /ui/login",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/logout`: ends the session (with its CSRF token) and clears the cookie.
async fn logout(State(state): State<Shared>, method: Method, headers: HeaderMap) -> Response {
    debug_assert_eq!(method, Method::POST);
    let Some(id) = session::cookie_id(&headers) else {
        return clear(StatusCode::NO_CONTENT);
    };
    match session::load(&state, &id).await {
        Ok(Some(s)) if !s.csrf_matches(&headers) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "logging out needs the session's {} header",
                session::CSRF_HEADER
            ),
        )
        .into_response(),
        Ok(Some(_)) => match session::close(&state, &id).await {
            Ok(()) => clear(StatusCode::NO_CONTENT),
            Err(e) => e.into_response(),
        },
        Ok(None) => clear(StatusCode::NO_CONTENT),
        Err(e) => e.into_response(),
    }
}

fn clear(status: StatusCode) -> Response {
    (status, [(SET_COOKIE, session::clear_cookie())]).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => {
            return ApiError::not_found(format!("no such dashboard file: {file:?}"))
                .into_response();
        }
    };
    ([(CONTENT_TYPE, kind)], body).into_response()
}
