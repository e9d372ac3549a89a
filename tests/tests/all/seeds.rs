//! The manifests of the seed documents (`shared/seeds`, inventoried in
//! `shared/reference/seeds001-004-inventory.md` §R): the complete ones apply unchanged,
//! the broken ones are refused with a clear error. The fixtures are verbatim extracts, tab
//! comments and all.

use std::path::Path;

use skiff_tests::{TestCluster, assert_matches};

fn fixture(id: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/seeds/{id}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// (fixture, seed file, first line, last line) of each manifest, inside its code fence.
const SOURCES: &[(&str, &str, usize, usize)] = &[
    ("M1", "004_fe02bae8bd380cba.txt", 57, 75),
    ("M2", "004_fe02bae8bd380cba.txt", 204, 219),
    ("M3", "004_fe02bae8bd380cba.txt", 254, 274),
    ("M4", "004_fe02bae8bd380cba.txt", 302, 322),
    ("M5", "004_fe02bae8bd380cba.txt", 384, 389),
    ("M6", "004_fe02bae8bd380cba.txt", 485, 503),
    ("M7", "004_fe02bae8bd380cba.txt", 689, 694),
    ("M8", "004_fe02bae8bd380cba.txt", 977, 987),
    ("M9", "004_fe02bae8bd380cba.txt", 1009, 1017),
    ("M10", "004_fe02bae8bd380cba.txt", 1021, 1029),
    ("M11", "004_fe02bae8bd380cba.txt", 1100, 1115),
    ("M12", "002_8ff4734b3cfd7258.txt", 272, 290),
    ("M13", "002_8ff4734b3cfd7258.txt", 521, 543),
    ("M14", "002_8ff4734b3cfd7258.txt", 697, 702),
    ("M15", "004_fe02bae8bd380cba.txt", 657, 660),
];

#[test]
fn fixtures_are_verbatim_copies_of_the_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds");
    if !seeds.exists() {
        // A clone outside the workplace has no seeds next to it; the fixtures stand alone.
        return;
    }
    for (id, file, first, last) in SOURCES {
        let text = std::fs::read_to_string(seeds.join(file)).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let extract: String = lines[first - 1..*last].concat();
        assert_eq!(
            fixture(id),
            extract,
            "{id} differs from {file}:{first}-{last}"
        );
    }
}

#[test]
fn complete_seed_manifests_apply_unchanged() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    // The tutorial's sequence: a deployment, its NodePort service, scaled to 4, rolled to
    // nginx 1.8, then the other objects the notes define.
    assert_matches(
        &k.apply(&fixture("M1"), &[]),
        "deployment.apps/nginx-deployment created",
    );
    assert_matches(
        &k.apply(&fixture("M2"), &[]),
        "service/nginx-service created",
    );
    assert_matches(
        &k.ok(&["get", "svc", "nginx-service"]),
        r"^nginx-service +NodePort +[0-9.]+ +<none> +80:32600/TCP",
    );
    assert_matches(
        &k.apply(&fixture("M3"), &[]),
        "deployment.apps/nginx-deployment configured",
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    assert_matches(
        &k.apply(&fixture("M4"), &[]),
        "deployment.apps/nginx-deployment configured",
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "nginx:1.8"
    );
    assert_matches(
        &k.apply(&fixture("M6"), &[]),
        "deployment.apps/nginx-deployment configured",
    );
    assert_matches(
        &k.apply(&fixture("M5"), &[]),
        r#"node/10\.240\.79\.157 created"#,
    );
    assert_matches(
        &k.ok(&["get", "nodes", "-l", "name=my-first-k8s-node"]),
        r"^10\.240\.79\.157 ",
    );
    assert_matches(
        &k.apply(&fixture("M7"), &[]),
        "namespace/development created",
    );
    assert_matches(&k.apply(&fixture("M8"), &[]), "service/my-service created");
    assert_matches(
        &k.apply(&fixture("M9"), &[]),
        "service/my-service configured",
    );
    assert_matches(
        &k.apply(&fixture("M10"), &[]),
        "endpoints/my-service created",
    );
    assert_matches(
        &k.ok(&["get", "endpoints", "my-service"]),
        r"^my-service +192\.0\.2\.42:9376 ",
    );
    assert_matches(
        &k.apply(&fixture("M11"), &[]),
        "service/my-service configured",
    );
    assert_matches(&k.ok(&["get", "svc", "my-service"]), r"80/TCP,443/TCP");
    assert_matches(&k.apply(&fixture("M12"), &[]), "configmap/hello created");
    assert_matches(&k.ok(&["get", "cm", "hello"]), r"^hello +3 +");
}

#[test]
fn broken_seed_manifests_are_refused_clearly() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    // M13: autoscaling/v2alpha1 was removed from Kubernetes long ago.
    let m13 = k.run_stdin(&["apply", "-f", "-"], &fixture("M13"));
    assert_eq!(m13.code, 1);
    assert_matches(
        &m13.stderr,
        r#"no matches for kind "HorizontalPodAutoscaler" in version "autoscaling/v2alpha1""#,
    );
    // M14: a pod with annotations and no spec.
    let m14 = k.run_stdin(&["apply", "-f", "-"], &fixture("M14"));
    assert_eq!(m14.code, 1);
    assert_matches(
        &m14.stderr,
        r#"Pod "annotations-demo" is invalid: spec\.containers: Required value"#,
    );
    // M15: a placeholder for the namespace name.
    let m15 = k.run_stdin(&["apply", "-f", "-"], &fixture("M15"));
    assert_eq!(m15.code, 1);
    assert_matches(
        &m15.stderr,
        r#"metadata\.name: Invalid value: "<名称空间的名字>": a lowercase RFC 1123 label"#,
    );
}
