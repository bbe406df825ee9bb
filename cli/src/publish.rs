//! Publishing a policy over ECDS with Envoy's confirmation, shared by `breakwater publish` and the
//! admin server's `POST /api/publish`.
//!
//! Envoy keeps the last good configuration only in memory: a rejected file left on disk is what
//! a restarted Envoy loads. So the resource Envoy last applied is kept beside the ECDS file
//! ([`ecds::applied_path`]); a version Envoy rejects, or does not apply in time, is replaced by
//! that resource written back as the next version (docs/envoy.md, "When a publish is rejected").
//!
//! A publish runs under the file's lock ([`Target::lock`]) from before the write to after the
//! write-back, so publishers in other processes take turns; the admin server runs it in a task of
//! its own, so a caller that goes away cannot cut it between the write and the write-back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use breakwater_api::EcdsState;
use breakwater_policy::Document;

use crate::ecds::{self, FilterSettings};
use crate::serve::envoy::{self, Admin};

/// Where a publish goes and how it is confirmed.
#[derive(Debug, Clone)]
pub struct Target {
    /// The ECDS file Envoy watches.
    pub ecds: PathBuf,
    pub settings: FilterSettings,
    /// Envoy's admin endpoint; None: the write cannot be confirmed (nor undone).
    pub admin: Option<Admin>,
    /// Envoy's log, where a rejection's reason is found.
    pub log: Option<PathBuf>,
    /// How long to wait for Envoy to apply (or reject) the new version.
    pub timeout: Duration,
}

/// What Envoy ran before a publish (taken before writing).
#[derive(Debug, Clone)]
pub struct Before {
    ecds: Option<EcdsState>,
    log_offset: u64,
    started: Instant,
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The ECDS `version_info` written.
    pub ecds_version: u64,
    /// True: Envoy applied it; false: Envoy rejected it or did not apply it in time; None: not
    /// confirmed (no admin endpoint).
    pub applied: Option<bool>,
    pub message: String,
    /// Envoy's reason for a rejection (from its log).
    pub reason: Option<String>,
    /// The version under which the last applied resource was written back, after a rejection.
    pub restored: Option<u64>,
    /// From writing the file to Envoy's answer (when Envoy was asked).
    pub elapsed_ms: Option<f64>,
}

impl Target {
    /// The file's publishing lock ([`ecds::lock`]), held until the file is dropped.
    pub async fn lock(&self) -> Result<std::fs::File, String> {
        let file = self.ecds.clone();
        blocking(move || ecds::lock(&file))
            .await
            .map_err(|e| format!("cannot lock {}: {e}", self.ecds.display()))
    }

    /// What Envoy runs now, and the file's content as the last applied resource when Envoy runs
    /// the file's current version. Call before [`Target::write`].
    pub async fn before(&self) -> Result<Before, String> {
        let log_offset = self.log.as_ref().and_then(|l| std::fs::metadata(l).ok()).map_or(0, |m| m.len());
        let ecds_state = match &self.admin {
            Some(a) => a.ecds(&self.settings.name).await.ok(),
            None => None,
        };
        if let Some(applied) = ecds_state.as_ref().and_then(|s| s.applied.clone()) {
            let file = self.ecds.clone();
            blocking(move || ecds::remember_applied(&file, &applied)).await?;
        }
        Ok(Before { ecds: ecds_state, log_offset, started: Instant::now() })
    }

    /// Writes `doc` (compiled, with the deployment's key seed unless it has its own) as the next
    /// version of the file. Blocking (it fsyncs).
    pub fn write(&self, doc: &Document) -> Result<u64, String> {
        ecds::publish_document(&self.ecds, &self.settings, doc)
            .map_err(|e| format!("cannot write {}: {e}", self.ecds.display()))
    }

    /// Waits for Envoy to apply or reject `version`; on a rejection or a timeout writes the last
    /// applied resource back as the next version.
    pub async fn confirm(&self, before: &Before, version: u64) -> Outcome {
        let mut outcome = Outcome {
            ecds_version: version,
            applied: None,
            message: "written; not confirmed (give Envoy's admin address to confirm)".into(),
            reason: None,
            restored: None,
            elapsed_ms: None,
        };
        let Some(admin) = &self.admin else { return outcome };
        let wanted = version.to_string();
        let deadline = before.started + self.timeout;
        loop {
            let now = admin.ecds(&self.settings.name).await;
            match (&now, &before.ecds) {
                (Ok(s), _) if s.applied.as_deref() == Some(wanted.as_str()) => {
                    outcome.applied = Some(true);
                    outcome.message = format!("Envoy applied version {version}");
                    let file = self.ecds.clone();
                    if let Err(e) = blocking(move || ecds::remember_applied(&file, &wanted)).await {
                        outcome
                            .message
                            .push_str(&format!(" (but it could not be kept as the last applied: {e})"));
                    }
                    break;
                }
                (Ok(s), Some(b)) if s.rejected > b.rejected => {
                    let reasons = self
                        .log
                        .as_ref()
                        .map(|log| envoy::rejection_reasons(&read_from(log, before.log_offset)))
                        .unwrap_or_default();
                    let reason =
                        if reasons.is_empty() { "see Envoy's log".to_string() } else { reasons.join("; ") };
                    outcome.applied = Some(false);
                    outcome.message = format!(
                        "Envoy rejected version {version} and keeps version {}: {reason}",
                        s.applied.as_deref().unwrap_or("none")
                    );
                    outcome.reason = Some(reason);
                    break;
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                outcome.applied = Some(false);
                outcome.message = match now {
                    Ok(s) => format!(
                        "Envoy did not apply version {version} within {:?} (it runs {})",
                        self.timeout,
                        s.applied.as_deref().unwrap_or("no version")
                    ),
                    Err(e) => format!("Envoy could not be asked whether it applied version {version}: {e}"),
                };
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcome.elapsed_ms = Some(before.started.elapsed().as_secs_f64() * 1000.0);
        if outcome.applied == Some(false) {
            let note = match self.write_back(before, version).await {
                Ok((restored, note)) => {
                    outcome.restored = restored;
                    note
                }
                Err(e) => format!("; writing back the version Envoy runs failed: {e}"),
            };
            outcome.message.push_str(&note);
        }
        outcome
    }
}

impl Target {
    /// After a version that was not applied: the resource Envoy runs, written back as the next
    /// version when it is on record; the version written and what to tell the user.
    async fn write_back(&self, before: &Before, version: u64) -> Result<(Option<u64>, String), String> {
        let keeps = format!("so nothing was written back: {} keeps version {version}", self.ecds.display());
        let Some(running) = before.ecds.as_ref().and_then(|s| s.applied.clone()) else {
            return Ok((None, format!("; Envoy could not be asked which version it ran before, {keeps}")));
        };
        let file = self.ecds.clone();
        let shown = running.clone();
        Ok(match blocking(move || ecds::restore_applied(&file, &running)).await? {
            Some(v) => {
                (Some(v), format!("; the version Envoy runs ({shown}) was written back as version {v}"))
            }
            None => (None, format!("; the version Envoy runs ({shown}) is not on record, {keeps}")),
        })
    }
}

/// File work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// A file's text from byte `offset` on (what Envoy logged since then), at most 1 MiB.
pub fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(1 << 20).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}
