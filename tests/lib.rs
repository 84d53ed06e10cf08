//! End-to-end tests against a real containerd. The tests are the `[[test]]`
//! targets beside this file; the harness they share is `crates/harness`.
