//! The built-in `Plugin` kind (`skiff.dev/v1alpha1`, cluster-scoped): how a Wasm plugin is
//! loaded into the running cluster with `kubectl apply`.
//!
//! It is defined as a CRD would be, so it gets the same structural-schema validation,
//! defaulting, CEL rules and printer columns as custom resources, but it is always served
//! and its definition can't be deleted.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// The API group of skiff's own kinds.
pub const GROUP: &str = "skiff.dev";
/// The version of the Plugin kind.
pub const VERSION: &str = "v1alpha1";

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["kind", "component"],
                "properties": {
                    "kind": {
                        "type": "string",
                        "description": "The plugin kind, naming the WIT world the component targets.",
                        "enum": ["scheduler", "admission", "network", "volume", "controller"]
                    },
                    "component": {
                        "type": "object",
                        "description": "Where the component comes from: exactly one of file, oci or inline.",
                        "properties": {
                            "file": {"type": "string", "description": "A path on the machine that runs the plugin's host.", "minLength": 1},
                            "oci": {"type": "string", "description": "An OCI artifact holding the component (registry/repository:tag or @sha256:digest), pulled anonymously when the generation changes.", "minLength": 1},
                            "inline": {"type": "string", "format": "byte", "description": "The component's bytes, base64 (for small plugins)."}
                        },
                        "x-kubernetes-validations": [{
                            "rule": "(has(self.file) ? 1 : 0) + (has(self.oci) ? 1 : 0) + (has(self.inline) ? 1 : 0) == 1",
                            "message": "exactly one of file, oci or inline must be set"
                        }]
                    },
                    "config": {
                        "type": "object",
                        "description": "Given to the plugin's init as JSON.",
                        "x-kubernetes-preserve-unknown-fields": true
                    },
                    "failurePolicy": {
                        "type": "string",
                        "description": "What happens to the work at hand when the plugin fails: Fail stops it, Ignore goes on without the plugin.",
                        "enum": ["Fail", "Ignore"],
                        "default": "Fail"
                    },
                    "limits": {
                        "type": "object",
                        "description": "The sandbox limits of each instance.",
                        "properties": {
                            "memoryBytes": {"type": "integer", "minimum": 1048576, "description": "Memory cap (default 64 MiB)."},
                            "timeoutMilliseconds": {"type": "integer", "minimum": 1, "maximum": 60000, "description": "Deadline of each call (default 100)."},
                            "fuel": {"type": "integer", "minimum": 1, "description": "Instruction budget of each call, if the host enables fuel."}
                        }
                    },
                    "scheduler": {
                        "type": "object",
                        "description": "For scheduler plugins: where they run.",
                        "properties": {
                            "profile": {"type": "string", "default": "default-scheduler", "description": "The schedulerName of the profile the plugin joins."},
                            "extensionPoints": {
                                "type": "array",
                                "description": "The extension points the plugin takes part in (default: all).",
                                "items": {"type": "string", "enum": ["PreFilter", "Filter", "PreScore", "Score", "NormalizeScore", "Reserve"]},
                                "x-kubernetes-list-type": "set"
                            },
                            "weight": {"type": "integer", "minimum": 0, "maximum": 100, "default": 1, "description": "Score weight."},
                            "replaces": {
                                "type": "array",
                                "description": "Built-in plugins switched off while this one is loaded (e.g. NodeResourcesFit).",
                                "items": {"type": "string"},
                                "x-kubernetes-list-type": "set"
                            }
                        }
                    }
                }
            },
            "status": {
                "type": "object",
                "properties": {
                    "observedGeneration": {"type": "integer"},
                    "digest": {"type": "string", "description": "sha256 of the loaded component."},
                    "loadMilliseconds": {"type": "number"},
                    "failures": {"type": "integer", "description": "Failed calls since the version was loaded."},
                    "lastError": {"type": "string"},
                    "lastErrorTime": {"type": "string", "format": "date-time"},
                    "conditions": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["type"],
                        "items": {
                            "type": "object",
                            "required": ["type", "status"],
                            "properties": {
                                "type": {"type": "string"},
                                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                                "reason": {"type": "string"},
                                "message": {"type": "string"},
                                "lastTransitionTime": {"type": "string", "format": "date-time"},
                                "observedGeneration": {"type": "integer"}
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The Plugin kind as a CRD manifest (never stored; only its definition is used).
pub fn definition() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "plugins.skiff.dev"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"plural": "plugins", "singular": "plugin", "kind": "Plugin", "listKind": "PluginList", "categories": ["skiff"]},
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema()},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Kind", "type": "string", "jsonPath": ".spec.kind"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Profile", "type": "string", "jsonPath": ".spec.scheduler.profile"},
                    {"name": "Digest", "type": "string", "priority": 1, "jsonPath": ".status.digest"},
                    {"name": "Last Error", "type": "string", "priority": 1, "jsonPath": ".status.lastError"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]
            }]
        }
    })
}

/// The Plugin resource.
pub fn resource() -> ResourceDef {
    crate::crd::resource_defs(&definition())
        .into_iter()
        .next()
        .expect("the Plugin definition has one version")
}
