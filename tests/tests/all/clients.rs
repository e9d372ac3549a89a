//! Official client libraries against skiff: the Python client (`pip install kubernetes`).

use std::process::Command;

use skiff_tests::TestCluster;

#[test]
fn python_client_does_crud_and_watches() {
    let c = TestCluster::start().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_crud_watch.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(c.kubeconfig())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
