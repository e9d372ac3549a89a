//! Custom resources beyond the basics: structural schemas (defaults, formats, list types,
//! nullable fields, any-JSON `enum`/`default`/`example`), client-side apply of changed custom
//! objects, and CRDs with several versions.

use skiff_tests::{TestCluster, assert_matches};

const WIDGETS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              color: {type: string, enum: [red, blue]}
              mode: {type: string, default: fast}
              sample: {type: string, example: hello}
              ts: {type: string, format: date-time}
              port: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}
              note: {type: string, nullable: true}
              replicas: {type: integer}
              items:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items: {type: object, required: [name], properties: {name: {type: string}}}
"#;

#[test]
fn structural_schemas_default_validate_and_keep_nullable_fields() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    // enum, default and example hold any JSON value: the CRD is accepted.
    assert_matches(&k.apply(WIDGETS, &[]), "created");

    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {color: red, port: http, ts: \"2026-12-01T10:00:00Z\"}\n";
    assert_matches(&k.apply(widget, &[]), "widget.example.com/w created");
    assert_eq!(
        k.ok(&["get", "widget", "w", "-o", "jsonpath={.spec.mode}"]),
        "fast",
        "the schema's default is filled in"
    );
    // Client-side apply of a changed custom object uses a merge patch (no strategic merge
    // patch for custom resources).
    let changed = widget.replace("color: red", "color: blue");
    assert_matches(&k.apply(&changed, &[]), "widget.example.com/w configured");
    assert_eq!(
        k.ok(&["get", "widget", "w", "-o", "jsonpath={.spec.color}"]),
        "blue"
    );

    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {color: green, ts: notadate, port: 1.5, replicas: two, items: [{name: a}, {name: a}]}\n";
    let run = k.run_stdin(&["apply", "-f", "-"], bad);
    assert_ne!(run.code, 0);
    for expected in [
        r#"spec\.color: Unsupported value: "green": supported values: "red", "blue""#,
        r#"spec\.ts: Invalid value: "notadate": spec\.ts in body must be of type date-time: "notadate""#,
        r#"spec\.port: Invalid value: "number": spec\.port in body must be of type integer,string: "number""#,
        r#"spec\.replicas: Invalid value: "string": spec\.replicas in body must be of type integer: "string""#,
        r"spec\.items\[1\]: Duplicate value",
    ] {
        assert_matches(&run.stderr, expected);
    }
    assert!(
        k.run(&["get", "widget", "bad"]).code != 0,
        "nothing was stored"
    );

    // A null is kept where the schema says nullable, pruned elsewhere.
    let body = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"n"},"spec":{"note":null,"color":null}}"#;
    k.run_stdin(&["create", "-f", "-"], body);
    assert_eq!(
        k.ok(&["get", "widget", "n", "-o", "jsonpath={.spec}"]),
        r#"{"mode":"fast","note":null}"#
    );
}

#[test]
fn versions_of_a_custom_resource_share_objects_in_the_storage_version() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: multis.example.org}
spec:
  group: example.org
  scope: Namespaced
  names: {plural: multis, singular: multi, kind: Multi}
  versions:
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    deprecationWarning: "example.org/v1beta1 Multi is old; use example.org/v1"
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    k.apply(crd, &[]);
    let old =
        "apiVersion: example.org/v1beta1\nkind: Multi\nmetadata: {name: m1}\nspec: {size: 3}\n";
    let run = k.run_stdin(&["apply", "-f", "-"], old);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_matches(
        &run.stderr,
        "Warning: example.org/v1beta1 Multi is old; use example.org/v1",
    );
    // Each version serves the same object in its own apiVersion.
    assert_eq!(
        k.ok(&[
            "get",
            "multis.v1.example.org",
            "m1",
            "-o",
            "jsonpath={.apiVersion} {.spec.size}"
        ]),
        "example.org/v1 3"
    );
    assert_eq!(
        k.run(&[
            "get",
            "multis.v1beta1.example.org",
            "m1",
            "-o",
            "jsonpath={.apiVersion}"
        ])
        .stdout,
        "example.org/v1beta1"
    );
    // GA is preferred over beta, whatever the order in the CRD.
    let group = k.ok(&["get", "--raw", "/apis/example.org"]);
    let group: serde_json::Value = serde_json::from_str(&group).unwrap();
    assert_eq!(group["preferredVersion"]["version"], "v1");
    assert_eq!(
        k.ok(&[
            "get",
            "crd",
            "multis.example.org",
            "-o",
            "jsonpath={.status.storedVersions}"
        ]),
        r#"["v1"]"#
    );
    // Moving storage to v1beta1 records it among the stored versions.
    let moved = crd
        .replace("storage: false", "storage: STORAGE")
        .replace("storage: true", "storage: false")
        .replace("storage: STORAGE", "storage: true");
    k.apply(&moved, &[]);
    assert_eq!(
        k.ok(&[
            "get",
            "crd",
            "multis.example.org",
            "-o",
            "jsonpath={.status.storedVersions}"
        ]),
        r#"["v1","v1beta1"]"#
    );
}

#[test]
fn validation_rules_in_cel_guard_writes_and_transitions() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scalers.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: scalers, singular: scaler, kind: Scaler}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - {rule: "self.minReplicas <= self.maxReplicas", message: "minReplicas must not exceed maxReplicas"}
            - {rule: "self.mode == oldSelf.mode", message: "mode is immutable", fieldPath: ".mode"}
            properties:
              minReplicas: {type: integer}
              maxReplicas: {type: integer}
              mode: {type: string, x-kubernetes-validations: [{rule: "self != 'bad'", reason: FieldValueForbidden}]}
"#;
    k.apply(crd, &[]);
    let scaler = |min: i64, max: i64, mode: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Scaler\nmetadata: {{name: s}}\nspec: {{minReplicas: {min}, maxReplicas: {max}, mode: {mode}}}\n"
        )
    };
    let run = k.run_stdin(&["apply", "-f", "-"], &scaler(5, 2, "bad"));
    assert_ne!(run.code, 0);
    assert_matches(
        &run.stderr,
        r#"spec: Invalid value: "object": minReplicas must not exceed maxReplicas"#,
    );
    assert_matches(
        &run.stderr,
        r"spec\.mode: Forbidden: failed rule: self != 'bad'",
    );
    assert_matches(&k.apply(&scaler(1, 3, "fast"), &[]), "created");
    // The transition rule runs on updates only.
    let run = k.run_stdin(&["apply", "-f", "-"], &scaler(1, 3, "slow"));
    assert_matches(
        &run.stderr,
        r#"spec\.mode: Invalid value: "object": mode is immutable"#,
    );
    assert_matches(&k.apply(&scaler(2, 3, "fast"), &[]), "configured");

    // A rule that does not compile is refused with the CRD.
    let broken = crd
        .replace("scalers.example.com", "brokens.example.com")
        .replace(
            "plural: scalers, singular: scaler, kind: Scaler",
            "plural: brokens, kind: Broken",
        )
        .replace("self != 'bad'", "self !=");
    let run = k.run_stdin(&["apply", "-f", "-"], &broken);
    assert_matches(
        &run.stderr,
        r"spec\.versions\[0\]\.schema\.openAPIV3Schema\.properties\[spec\]\.properties\[mode\]\.x-kubernetes-validations\[0\]\.rule: Invalid value: .*compilation failed",
    );
}
