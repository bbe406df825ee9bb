//! Issue 20, defect 8: writes that fail half way (a full disk) lose nothing. The disk is "full"
//! through a file-size limit (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored so a write past it fails with
//! `EFBIG` instead of killing the process): this test binary holds this one test, so the limit
//! touches nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// One unsafe block: the process-wide file-size limit, through libc.
#![allow(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use breakwater_cli::ecds;
use breakwater_cli::serve::store::{SaveError, Store};

const LIMIT: u64 = 64 * 1024;

fn limit_file_size() {
    // SAFETY: setting a signal disposition to "ignore" and a resource limit of this process; no
    // handler runs and no memory is shared.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit { rlim_cur: LIMIT, rlim_max: libc::RLIM_INFINITY };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A valid document of about `bytes` bytes (a long reply body).
fn document(bytes: usize) -> String {
    let body = "x".repeat(bytes.min(60_000));
    let mut doc = String::from("version: 1\npolicies:\n");
    let mut i = 0;
    while doc.len() < bytes {
        doc.push_str(&format!("  - name: p{i}\n    match: {{ path_prefix: /p{i} }}\n    fallback:\n      on: [5xx]\n      response: {{ status: 200, body: \"{body}\" }}\n"));
        i += 1;
    }
    doc
}

#[test]
fn a_full_disk_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("bw-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("active.yaml");
    let state = dir.join("state");
    let store = Store::open(&policy, &state).unwrap();
    let small = "version: 1\npolicies:\n  - name: small\n";
    store.save(small).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ecds_file = dir.join("ecds.json");
    let settings = ecds::FilterSettings::breakwater(dir.join("filter.wasm"));
    ecds::publish(&ecds_file, &settings, small).unwrap();
    std::fs::set_permissions(&ecds_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ecds_before = std::fs::read(&ecds_file).unwrap();
    let (files_before, history_before) = (listing(&dir), listing(&state.join("history")));

    limit_file_size();
    // A save that does not fit: refused, the active document and the history unchanged and in
    // step, no temporary file left.
    let big = document(LIMIT as usize + 1000);
    assert!(breakwater_policy::load(&big).is_ok());
    match store.save(&big) {
        Err(SaveError::Io(message)) => assert!(message.contains("cannot write"), "{message}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(store.active().unwrap(), small);
    assert_eq!(store.get(store.current()).as_deref(), Some(small));
    assert_eq!(listing(&state.join("history")), history_before);
    // A publish that does not fit: the previous ECDS file is intact.
    assert!(ecds::publish(&ecds_file, &settings, &big).is_err());
    assert_eq!(std::fs::read(&ecds_file).unwrap(), ecds_before);
    assert_eq!(listing(&dir), files_before, "temporary files left behind");

    // What fits is written, and keeps the file's permissions.
    let medium = "version: 1\npolicies:\n  - name: medium\n";
    store.save(medium).unwrap();
    assert_eq!(store.active().unwrap(), medium);
    assert_eq!(std::fs::metadata(&policy).unwrap().permissions().mode() & 0o777, 0o640);
    ecds::publish(&ecds_file, &settings, medium).unwrap();
    assert_eq!(std::fs::metadata(&ecds_file).unwrap().permissions().mode() & 0o777, 0o640);
    std::fs::remove_dir_all(&dir).unwrap();
}
