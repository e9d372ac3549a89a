//! The protobuf decoder against bodies the real kubectl 1.32 sent (captured by
//! `tools/capture_proto_fixtures.py`): each decodes to exactly the object kubectl prints for
//! the same command with `--dry-run=client -o json`, which is Go's JSON of what it encoded.

use std::path::Path;

use serde_json::{Value, json};
use skiff_core::proto::{ProtoError, decode_envelope};

fn fixture(case: &str, ext: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proto")
        .join(format!("{case}.{ext}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Go renders a zero `metav1.Time` as `null`; the decoder leaves it out, as a JSON client would.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

fn decoded(case: &str) -> Value {
    decode_envelope(&fixture(case, "pb")).unwrap_or_else(|e| panic!("{case}: {e}"))
}

#[test]
fn every_create_generator_body_decodes_to_the_object_kubectl_encoded() {
    let cases = [
        "namespace",
        "deployment",
        "deployment_two_images",
        "configmap",
        "secret",
        "secret_docker_registry",
        "service_clusterip",
        "service_nodeport",
        "job",
        "cronjob",
        "serviceaccount",
        "role",
        "rolebinding",
        "clusterrole",
        "clusterrolebinding",
        "quota",
        "priorityclass",
        "pdb",
        "pdb_percent",
    ];
    for case in cases {
        let oracle: Value = serde_json::from_slice(&fixture(case, "json")).unwrap();
        assert_eq!(decoded(case), without_nulls(oracle), "{case}");
    }
}

#[test]
fn zero_values_survive_where_go_has_a_pointer_or_a_required_field() {
    // `--replicas=0` (a *int32), `--min-available=0` (an IntOrString) and `--value=0` (a
    // required int32) must not read as "unset".
    assert_eq!(decoded("deployment")["spec"]["replicas"], json!(0));
    assert_eq!(decoded("pdb")["spec"]["minAvailable"], json!(0));
    assert_eq!(decoded("priorityclass")["value"], json!(0));
    // Secret data is bytes on the wire and base64 in JSON.
    assert_eq!(decoded("secret")["data"]["password"], json!("aHVudGVyMg=="));
}

#[test]
fn access_reviews_decode_as_kubectl_auth_sends_them() {
    assert_eq!(
        decoded("can_i"),
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {
                "namespace": "proto-fixtures", "verb": "create", "group": "apps",
                "resource": "deployments",
            }},
            "status": {"allowed": false},
        })
    );
    assert_eq!(
        decoded("can_i_subresource")["spec"]["resourceAttributes"],
        json!({"namespace": "proto-fixtures", "verb": "get", "resource": "pods", "subresource": "log"})
    );
    assert_eq!(
        decoded("can_i_list"),
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "metadata": {},
            "spec": {"namespace": "proto-fixtures"},
            "status": {"incomplete": false},
        })
    );
    assert_eq!(
        decoded("whoami"),
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "SelfSubjectReview",
            "metadata": {},
            "status": {"userInfo": {}},
        })
    );
}

#[test]
fn delete_options_decode_under_any_group_version() {
    // client-go's typed Delete sends DeleteOptions as protobuf with the resource's own
    // apiVersion: here `gracePeriodSeconds: 0` (a pointer, so the zero is kept) and
    // Foreground propagation.
    let options = [&[0x08, 0x00, 0x22, 0x0a][..], b"Foreground"].concat();
    let type_meta = [
        &[0x0a, 0x07][..],
        b"apps/v1",
        &[0x12, 0x0d],
        b"DeleteOptions",
    ]
    .concat();
    let body = [
        &b"k8s\0"[..],
        &[0x0a, type_meta.len() as u8],
        &type_meta,
        &[0x12, options.len() as u8],
        &options,
    ]
    .concat();
    assert_eq!(
        decode_envelope(&body).unwrap(),
        json!({
            "apiVersion": "apps/v1", "kind": "DeleteOptions",
            "gracePeriodSeconds": 0, "propagationPolicy": "Foreground",
        })
    );
}

#[test]
fn damaged_bodies_are_refused_with_a_reason() {
    let body = fixture("deployment", "pb");
    assert!(matches!(
        decode_envelope(&body[4..]),
        Err(ProtoError::MissingMagic)
    ));
    // Cut anywhere, the body is refused as truncated, never a panic or a partial object.
    // (Protobuf can't see a cut between the envelope's fields: before `raw` that leaves the
    // bare kind, after it the whole object.)
    let whole = decode_envelope(&body).unwrap();
    for cut in 5..body.len() {
        match decode_envelope(&body[..cut]) {
            Err(ProtoError::Truncated { .. }) => {}
            Err(e) => panic!("cut at {cut}: {e}"),
            Ok(v) if v == whole || v.as_object().unwrap().len() == 2 => {}
            Ok(v) => panic!("cut at {cut} decoded to {v}"),
        }
    }
    let mut unknown = b"k8s\0".to_vec();
    unknown.extend([0x0a, 0x0d, 0x0a, 0x07]);
    unknown.extend(b"demo/v1");
    unknown.extend([0x12, 0x02]);
    unknown.extend(b"Xy");
    let err = decode_envelope(&unknown).unwrap_err();
    assert!(matches!(err, ProtoError::UnknownKind { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "Xy (demo/v1) cannot be sent as protobuf; send it as JSON"
    );
}

#[test]
fn deeply_nested_messages_are_refused() {
    // A CRD schema nesting `not` a thousand times: each level is JSONSchemaProps field 28
    // (`not`), wrapped from the inside out.
    let mut schema: Vec<u8> = Vec::new();
    for _ in 0..1000 {
        let mut outer = vec![0xe2, 0x01]; // tag 28, wire type 2
        push_varint(&mut outer, schema.len());
        outer.extend(&schema);
        schema = outer;
    }
    let validation = [vec![0x0a], varint(schema.len()), schema].concat();
    let version = [vec![0x22], varint(validation.len()), validation].concat();
    let spec = [vec![0x3a], varint(version.len()), version].concat();
    let crd = [vec![0x12], varint(spec.len()), spec].concat();
    let type_meta = [
        &[0x0a, 0x17][..],
        b"apiextensions.k8s.io/v1",
        &[0x12, 0x18],
        b"CustomResourceDefinition",
    ]
    .concat();
    let unknown = [
        vec![0x0a],
        varint(type_meta.len()),
        type_meta,
        vec![0x12],
        varint(crd.len()),
        crd,
    ]
    .concat();
    let body = [b"k8s\0".to_vec(), unknown].concat();
    assert!(matches!(decode_envelope(&body), Err(ProtoError::TooDeep)));
}

fn varint(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    push_varint(&mut out, n);
    out
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}
