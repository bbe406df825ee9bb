//! The JSON API under /api. Every error is JSON: `{"error": "...", "diagnostics": [...]}` where
//! the validator has something to say, with the fitting status (400 malformed request, 401 no or
//! wrong token, 404 unknown version, 409 not configured, 412 `If-Match` no longer the active
//! version, 413 body too large, 422 invalid document, 429 a simulation is running, 502 Envoy
//! unreachable).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use breakwater_api::{
    Diff, EnvoyStatus, ErrorBody, History, PolicyAnswer, PublishAnswer, Published, RollbackBody, Saved,
    ScenarioFile, SimulateBody, Simulation, Status, TextBody, Validation, VersionText,
};
use breakwater_policy::Diagnostic;
use serde::Deserialize;

use super::envoy::{self, Admin};
use super::store::{self, SaveError};

type Shared = Arc<super::State>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/policy", get(get_policy).put(put_policy))
        .route("/validate", post(validate))
        .route("/history", get(history))
        .route("/history/{version}", get(history_version))
        .route("/diff", get(diff))
        .route("/rollback", post(rollback))
        .route("/scenarios", get(scenarios))
        .route("/simulate", post(simulate))
        .route("/publish", post(publish))
        .route("/status", get(status))
        .route("/live", get(live))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    diagnostics: Vec<Diagnostic>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), diagnostics: Vec::new() }
    }

    fn invalid(diagnostics: Vec<Diagnostic>) -> ApiError {
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("the document is invalid: {errors} error{}", if errors == 1 { "" } else { "s" }),
            diagnostics,
        }
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<SaveError> for ApiError {
    fn from(e: SaveError) -> ApiError {
        match e {
            SaveError::Invalid(d) => ApiError::invalid(d),
            SaveError::Io(e) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message, diagnostics: self.diagnostics };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `Json<T>` whose rejections (bad JSON, wrong types, too large, wrong content type) are JSON too.
pub struct Body<T>(T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => {
                let status = match rejection.status() {
                    // Wrong field types are as malformed as bad syntax for an API client.
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    s => s,
                };
                Err(ApiError::new(status, rejection.body_text()))
            }
        }
    }
}

async fn auth(State(state): State<Shared>, headers: HeaderMap, request: Request, next: Next) -> Response {
    // `Authorization: <scheme> <token>`; the scheme is case-insensitive (RFC 9110, 11.1).
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.trim_start().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token)
    });
    match given {
        Some(token) if constant_time_eq(token.trim().as_bytes(), state.config.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing token: send `Authorization: Bearer <token>`")
                .into_response()
        }
    }
}

/// Compares without stopping at the first difference (the time taken tells nothing of the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn validation(text: &str) -> Validation {
    match breakwater_policy::load(text) {
        Ok(loaded) => Validation { valid: true, diagnostics: loaded.warnings },
        Err(diagnostics) => Validation { valid: false, diagnostics },
    }
}

/// Runs `work` on the store on a blocking thread, holding the store's lock: validation, diffs and
/// file I/O are CPU- or disk-bound, and the runtime's two threads must stay free for other calls
/// (`/healthz`, the live view).
async fn with_store<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&store::Store) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone().lock_owned().await;
    blocking(move || work(&store)).await
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(e.to_string()))
}

/// The entity tag of a version of the active document (`"v12"`): `GET /api/policy` sends it, and
/// a save or a publish that sends it back in `If-Match` is refused with 412 when another version
/// became active meanwhile: two editors cannot overwrite each other unknowingly, and Publish ships
/// the version its user reviewed.
fn etag(version: u64) -> header::HeaderValue {
    header::HeaderValue::from_str(&format!("\"v{version}\""))
        .unwrap_or(header::HeaderValue::from_static("\"\""))
}

/// Checks `If-Match` (absent or `*`: no condition) against the active version.
fn check_if_match(headers: &HeaderMap, current: u64) -> Result<(), ApiError> {
    let Some(given) = headers.get(header::IF_MATCH) else { return Ok(()) };
    let given = given.to_str().unwrap_or_default();
    let wanted = etag(current);
    let matches = given.split(',').map(str::trim).any(|t| t == "*" || t.as_bytes() == wanted.as_bytes());
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "the policy changed since you loaded it: version {current} is active now (you had {given}); reload it or compare before saving"
            ),
        ))
    }
}

async fn get_policy(State(state): State<Shared>) -> Result<Response, ApiError> {
    with_store(&state, |store| {
        let text = store.active().map_err(ApiError::internal)?;
        let Validation { valid, diagnostics } = validation(&text);
        let version = store.current();
        let answer = PolicyAnswer {
            text,
            version,
            valid,
            diagnostics,
            published: store.published(),
            file: store.policy_path().display().to_string(),
        };
        Ok(([(header::ETAG, etag(version))], Json(answer)).into_response())
    })
    .await?
}

async fn put_policy(
    State(state): State<Shared>,
    headers: HeaderMap,
    Body(body): Body<TextBody>,
) -> Result<Response, ApiError> {
    with_store(&state, move |store| {
        check_if_match(&headers, store.current())?;
        let saved = store.save(&body.text)?;
        Ok(([(header::ETAG, etag(saved.version))], Json(saved)).into_response())
    })
    .await?
}

async fn validate(Body(body): Body<TextBody>) -> Result<Json<Validation>, ApiError> {
    Ok(Json(blocking(move || validation(&body.text)).await?))
}

async fn history(State(state): State<Shared>) -> Result<Json<History>, ApiError> {
    with_store(&state, |store| {
        let published = store.published().map(|p| p.version);
        Json(History { current: store.current(), published, versions: store.list() })
    })
    .await
}

/// A version named in a request: a number, or `active` / `published` / `running` (what Envoy
/// runs: version 0 when that document is in no saved version).
fn resolve(store: &store::Store, running: &Option<Envoys>, name: &str) -> Result<(u64, String), ApiError> {
    let id = match name {
        "running" => return running_text(store, running),
        "active" | "current" => store.current(),
        "published" => store
            .published()
            .map(|p| p.version)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "nothing was published yet"))?,
        n => n.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{n}` is not a version (a number, `active`, `published` or `running`)"),
            )
        })?,
    };
    store
        .get(id)
        .map(|text| (id, text))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no version {id}")))
}

/// What `running` resolves against: the ECDS file and the version Envoy applied (None without
/// Envoy's admin, or when it could not be asked).
struct Envoys {
    ecds: std::path::PathBuf,
    applied: Option<u64>,
}

/// Asks Envoy what it applied when a request names `running`.
async fn envoys(state: &super::State, names: &[&str]) -> Option<Envoys> {
    if !names.contains(&"running") {
        return None;
    }
    let ecds = state.config.ecds.clone()?;
    // Without Envoy's answer nothing is known, as the status says.
    let applied = match admin(state) {
        Some(a) => a.ecds(&state.config.filter_name).await.ok().and_then(|e| e.applied?.parse().ok()),
        None => None,
    };
    Some(Envoys { ecds, applied })
}

fn running_text(store: &store::Store, envoys: &Option<Envoys>) -> Result<(u64, String), ApiError> {
    let Some(Envoys { ecds, applied }) = envoys else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "publishing is off: start the server with --ecds FILE",
        ));
    };
    let document = applied
        .and_then(|v| super::running::document_of(ecds, v))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "what Envoy runs is not known"))?;
    match super::running::find_saved(store, &document).and_then(|id| Some((id, store.get(id)?))) {
        Some(found) => Ok(found),
        None => Ok((0, super::running::as_yaml(&document))),
    }
}

async fn history_version(
    State(state): State<Shared>,
    Path(version): Path<String>,
) -> Result<Json<VersionText>, ApiError> {
    let envoys = envoys(&state, &[version.as_str()]).await;
    with_store(&state, move |store| {
        let (version, text) = resolve(store, &envoys, &version)?;
        Ok(Json(VersionText { version, text }))
    })
    .await?
}

/// The query of `GET /api/diff` (the admin builds it as a URL).
#[derive(Deserialize)]
struct DiffQuery {
    from: String,
    to: Option<String>,
}

async fn diff(
    State(state): State<Shared>,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Diff>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let to_name = q.to.clone().unwrap_or_else(|| "active".into());
    let envoys = envoys(&state, &[q.from.as_str(), to_name.as_str()]).await;
    with_store(&state, move |store| {
        let (from, from_text) = resolve(store, &envoys, &q.from)?;
        let (to, to_text) = resolve(store, &envoys, &to_name)?;
        let name = |id: u64| if id == 0 { "what Envoy runs".to_string() } else { format!("version {id}") };
        let diff = store::diff(&name(from), &from_text, &name(to), &to_text);
        let changes = match (breakwater_policy::load(&from_text), breakwater_policy::load(&to_text)) {
            (Ok(a), Ok(b)) => breakwater_policy::describe::changes(&a.document, &b.document),
            _ => Vec::new(),
        };
        Ok(Json(Diff { from, to, diff, changes }))
    })
    .await?
}

async fn rollback(
    State(state): State<Shared>,
    Body(body): Body<RollbackBody>,
) -> Result<Json<Saved>, ApiError> {
    match with_store(&state, move |store| store.rollback(body.version)).await?? {
        Some(saved) => Ok(Json(saved)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no version {}", body.version))),
    }
}

async fn scenarios(State(state): State<Shared>) -> Json<Vec<ScenarioFile>> {
    let dir = &state.config.scenarios_dir;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".scenario.yaml"))
        .collect();
    files.sort();
    let list = files
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let name = breakwater_scenario::load(&text).map(|s| s.name).unwrap_or_default();
            let file = p.file_name()?.to_string_lossy().into_owned();
            Some(ScenarioFile { file, name, text })
        })
        .collect();
    Json(list)
}

async fn simulate(
    State(state): State<Shared>,
    Body(body): Body<SimulateBody>,
) -> Result<Json<Simulation>, ApiError> {
    let (document, scenario) = blocking(move || {
        let document = breakwater_policy::load(&body.policy).map_err(ApiError::invalid)?.document;
        let scenario =
            breakwater_scenario::load_with_policy(&body.scenario, &document).map_err(|d| ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: "the scenario is invalid".into(),
                diagnostics: d,
            })?;
        Ok::<_, ApiError>((document, scenario))
    })
    .await??;
    let limits = state.config.simulation;
    let too_much = if scenario.workers > limits.max_workers {
        Some(format!(
            "at most {} workers through the API (this scenario has {})",
            limits.max_workers, scenario.workers
        ))
    } else if scenario.duration.as_nanos() > limits.max_duration.as_nanos() as u64 {
        Some(format!(
            "at most {} simulated seconds through the API (this scenario has {})",
            limits.max_duration.as_secs(),
            scenario.duration.as_nanos() / 1_000_000_000
        ))
    } else {
        None
    };
    if let Some(why) = too_much {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the scenario is too large: {why}; run it with `breakwater test`"),
        ));
    }
    let permit = state.simulations.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "a simulation is running: try again when it has finished",
        )
    })?;
    // Only a loaded filter is kept: after a failure (the filter not built yet, say) the next
    // simulation tries again.
    let host = state
        .host
        .get_or_try_init(|| async {
            let wasm = state.config.filter_wasm.clone();
            tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
                breakwater_host_test::Host::with_memory_limit(&bytes, limits.vm_memory)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        })
        .await
        .cloned()
        .map_err(|e| ApiError::internal(format!("cannot load the compiled filter: {e}")))?;
    let budget = breakwater_host_test::sim::Budget {
        cancel: Arc::default(),
        wall: Some(limits.wall),
        max_requests: limits.max_requests,
    };
    // Dropped with this handler (the request timed out, the client went away): the run stops.
    let _cancel = CancelOnDrop(budget.cancel.clone());
    let (report, wall_ms) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::testing::simulate_within(&host, &scenario, &document, &budget)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("the simulation failed: {e}")))?;
    Ok(Json(Simulation { wall_ms, report }))
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn admin(state: &super::State) -> Option<Admin> {
    state.config.envoy_admin.clone().map(|address| Admin { address })
}

/// Writes the active version to the ECDS file and waits for Envoy's answer; a version Envoy
/// rejects (or does not apply in time) is replaced by the one it runs, and only an applied version
/// (or any write, when Envoy cannot be asked) is recorded as published. The publish runs in a task
/// of its own: a caller that goes away (or the API's timeout) cannot cut it between the write and
/// the write-back.
async fn publish(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<PublishAnswer>, ApiError> {
    let Some(target) = state.config.publish_target() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "publishing is off: start the server with --ecds FILE",
        ));
    };
    tokio::spawn(publish_to(state, target, headers)).await.map_err(|e| ApiError::internal(e.to_string()))?
}

async fn publish_to(
    state: Shared,
    target: crate::publish::Target,
    headers: HeaderMap,
) -> Result<Json<PublishAnswer>, ApiError> {
    let _one_at_a_time = state.publishing.lock().await;
    let _file_lock = target.lock().await.map_err(ApiError::internal)?;
    let before = target.before().await.map_err(ApiError::internal)?;
    // Validating, compiling and writing (fsyncs) off the runtime, under the store's lock.
    let writer = target.clone();
    let (version, ecds_version, policies) = with_store(&state, move |store| {
        let version = store.current();
        check_if_match(&headers, version)?;
        let text = store.active().map_err(ApiError::internal)?;
        let document = breakwater_policy::load(&text).map_err(ApiError::invalid)?.document;
        let ecds_version = writer.write(&document).map_err(ApiError::internal)?;
        Ok::<_, ApiError>((version, ecds_version, document.policies.len()))
    })
    .await??;
    let outcome = target.confirm(&before, ecds_version).await;
    if outcome.applied == Some(true) || target.admin.is_none() {
        with_store(&state, move |store| {
            store.set_published(&Published { version, ecds_version, at_ms: store::now_ms() })
        })
        .await?
        .map_err(ApiError::internal)?;
    }
    Ok(Json(PublishAnswer {
        version,
        ecds_version,
        policies,
        applied: outcome.applied,
        message: outcome.message,
        reason: outcome.reason,
        restored: outcome.restored,
        elapsed_ms: outcome.elapsed_ms,
    }))
}

async fn status(State(state): State<Shared>) -> Result<Json<Status>, ApiError> {
    let Some(admin) = admin(&state) else {
        let envoy = EnvoyStatus { configured: false, address: None, reachable: None, error: None };
        let (saved, published, running) = versions(&state, None).await?;
        return Ok(Json(Status {
            envoy,
            ecds: None,
            saved,
            published,
            running,
            policies: Default::default(),
        }));
    };
    let stats = admin.get("/stats/prometheus").await;
    let (reachable, error, policies) = match stats {
        Ok((200, body)) => (true, None, envoy::policy_stats(&body)),
        Ok((code, _)) => (true, Some(format!("/stats/prometheus answered {code}")), Default::default()),
        Err(e) => (false, Some(e), Default::default()),
    };
    let ecds = if reachable { admin.ecds(&state.config.filter_name).await.ok() } else { None };
    let (saved, published, running) = versions(&state, ecds.clone()).await?;
    let envoy =
        EnvoyStatus { configured: true, address: Some(admin.address), reachable: Some(reachable), error };
    Ok(Json(Status { envoy, ecds, saved, published, running, policies }))
}

/// The active saved version, the last publish recorded, and what Envoy runs (from its ECDS state,
/// when it could be asked).
async fn versions(
    state: &Shared,
    ecds: Option<breakwater_api::EcdsState>,
) -> Result<(u64, Option<Published>, Option<breakwater_api::Running>), ApiError> {
    let file = state.config.ecds.clone();
    let log = state.config.envoy_log.clone();
    let cache = state.running.clone();
    with_store(state, move |store| {
        let running = file.map(|file| {
            let (applied, rejected) = ecds.map_or((None, 0), |e| (e.applied, e.rejected));
            cache.running(store, &file, applied.as_deref(), rejected, || last_rejection(log.as_deref()))
        });
        (store.current(), store.published(), running)
    })
    .await
}

/// Envoy's last reason for rejecting configuration: the last one in the end of its log.
fn last_rejection(log: Option<&std::path::Path>) -> Option<String> {
    let log = log?;
    let size = std::fs::metadata(log).ok()?.len();
    let tail = crate::publish::read_from(log, size.saturating_sub(256 << 10));
    tail.lines().rev().find_map(|line| envoy::rejection_reasons(line).pop())
}

/// The live page's dashboard (see [`super::live`]).
async fn live(State(state): State<Shared>) -> Json<breakwater_api::Live> {
    // A fixed concurrency limit is the published policy's number (what Envoy enforces; the active
    // version may be a draft), or the active one's before anything was published; an adaptive
    // limit has its gauge.
    let enforced = {
        let store = state.store.lock().await;
        store.published().and_then(|p| store.get(p.version)).or_else(|| store.active().ok())
    };
    let limits = enforced
        .and_then(|text| breakwater_policy::load(&text).ok())
        .map(|l| {
            l.document
                .policies
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.concurrency_limit.as_ref()?.max_in_flight)))
                .collect()
        })
        .unwrap_or_default();
    let c = &state.config;
    Json(
        super::live::live(
            state.samples.as_ref(),
            c.prometheus.as_deref(),
            c.alertmanager.as_deref(),
            c.envoy_log.as_deref(),
            &limits,
        )
        .await,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
