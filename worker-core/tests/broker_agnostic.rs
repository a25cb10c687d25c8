//! worker-core is the broker-agnostic runtime (README, "Layout"): its code never names the
//! transport.
//! This test reads every source file and fails on a word that belongs to one broker or its
//! client, so the rule survives the next change.

use std::path::{Path, PathBuf};

/// Words that name a broker, its protocol, its client or its bookkeeping (matched ignoring case).
const FORBIDDEN: [&str; 5] = ["amqp", "rabbitmq", "lapin", "x-death", "quorum"];

/// Files allowed to name the broker, relative to `src/`, and why (none: keep it that way).
const ALLOWED: [(&str, &str); 0] = [];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn worker_core_never_names_the_broker() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let relative = relative.to_string_lossy().replace('\\', "/");
        if ALLOWED.iter().any(|(allowed, _)| *allowed == relative) {
            continue;
        }
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (number, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for word in FORBIDDEN.iter().filter(|w| lower.contains(*w)) {
                offences.push(format!(
                    "src/{relative}:{}: `{word}`: {}",
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "worker-core names the broker ({} lines); broker specifics belong in the transport crate \
         (worker_core::transport is the contract between the two):\n{}",
        offences.len(),
        offences.join("\n")
    );
}

#[test]
fn the_allow_list_names_existing_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (file, why) in ALLOWED {
        assert!(
            src.join(file).is_file(),
            "src/{file} is allow-listed ({why}) but does not exist: drop it from ALLOWED"
        );
    }
}
