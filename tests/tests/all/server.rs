//! The server itself: TLS with a verified certificate, HTTP/2, health and version for
//! anonymous clients, authentication by certificate and token, restarts that keep the
//! certificates and the data, and a clean stop on SIGTERM.

use std::process::Command;

use skiff_tests::{TestCluster, assert_matches};

/// curl against the cluster with the CA from the kubeconfig's PKI.
fn curl(cluster: &TestCluster, args: &[&str]) -> (String, String) {
    let pki = cluster.dir.path().join("pki");
    let url_base = format!("https://127.0.0.1:{}", cluster.addr.port());
    let args: Vec<String> = args.iter().map(|a| a.replace("$URL", &url_base)).collect();
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .args(&args)
        .output()
        .expect("curl runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_http2_health_and_authentication() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "s3cret,alice,1001,\"dev,ops\"\n").unwrap();
    let c =
        TestCluster::start_with(&["--token-auth-file", tokens.path().to_str().unwrap()]).unwrap();
    let pki = c.dir.path().join("pki");
    // Anonymous: health and version only.
    let (body, _) = curl(&c, &["$URL/readyz"]);
    assert_eq!(body, "ok");
    let (body, _) = curl(&c, &["$URL/version"]);
    assert_matches(&body, r#""gitVersion":"v1\.32\.4""#);
    let (body, _) = curl(&c, &["-w", "%{http_code}", "$URL/api/v1/namespaces"]);
    assert_matches(&body, r#""reason":"Unauthorized".*401$"#);
    // HTTP/2 with the admin certificate.
    let cert = pki.join("admin.crt");
    let key = pki.join("admin.key");
    let (body, _) = curl(
        &c,
        &[
            "--http2",
            "-w",
            " %{http_version}",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "$URL/api/v1/namespaces/default",
        ],
    );
    assert_matches(&body, r#""name":"default".* 2$"#);
    // A bearer token from the token file, and a bad one.
    let (body, _) = curl(
        &c,
        &[
            "-H",
            "Authorization: Bearer s3cret",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
            "$URL/apis/authentication.k8s.io/v1/selfsubjectreviews",
        ],
    );
    assert_matches(&body, r#""username":"alice""#);
    assert_matches(&body, r#""groups":\["dev","ops","system:authenticated"\]"#);
    let (body, _) = curl(
        &c,
        &[
            "-H",
            "Authorization: Bearer wrong",
            "$URL/api/v1/namespaces",
        ],
    );
    assert_matches(&body, r#""code":401"#);
    // Metrics.
    let (body, _) = curl(&c, &["$URL/metrics"]);
    assert_matches(&body, "apiserver_request_total");
}

#[test]
fn restarts_reuse_certificates_and_data() {
    let mut c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kept}\ndata: {a: b}\n",
        &[],
    );
    let ca = std::fs::read(c.dir.path().join("pki/ca.crt")).unwrap();
    let serving = std::fs::read(c.dir.path().join("pki/apiserver.crt")).unwrap();
    c.restart().unwrap();
    assert_eq!(std::fs::read(c.dir.path().join("pki/ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read(c.dir.path().join("pki/apiserver.crt")).unwrap(),
        serving
    );
    // The same kubeconfig still verifies the server and finds the data.
    assert_eq!(
        k.ok(&["get", "cm", "kept", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    let rv_before: u64 = k
        .ok(&[
            "get",
            "cm",
            "kept",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();
    k.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\n",
        &[],
    );
    let rv_after: u64 = k
        .ok(&[
            "get",
            "cm",
            "later",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();
    assert!(
        rv_after > rv_before,
        "revisions keep increasing across restarts"
    );
    // SIGTERM stops it cleanly (stop() fails on a non-zero exit).
    c.stop().unwrap();
    assert!(c.logs().contains("API server stopped"), "{}", c.logs());
}
