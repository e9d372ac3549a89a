//! What the API serves: one [`ResourceDef`] per resource, built-in or from a CRD.
//!
//! A definition carries everything the request path needs that is not in the object itself:
//! names (plural, singular, kind, short names), scope, verbs, subresources, and where its
//! schema comes from. Built-in definitions are derived from the k8s-openapi types, so names
//! and scopes can't drift from the real API.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
    autoscaling::v1 as autoscaling_v1, autoscaling::v2 as autoscaling, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, policy::v1 as policy, rbac::v1 as rbac,
    scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use serde_json::Value;

/// The verbs of an ordinary stored resource.
pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_COLLECTION_DELETE: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE_ONLY: &[&str] = &["create"];

/// Where a resource's `.scale` subresource finds replicas and the selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON pointer of the desired replicas, e.g. `/spec/replicas`.
    pub spec_replicas: String,
    /// JSON pointer of the observed replicas, e.g. `/status/replicas`.
    pub status_replicas: String,
    /// JSON pointer of the label selector: a `LabelSelector` object for built-ins, a
    /// selector string for CRDs (`labelSelectorPath`).
    pub label_selector: Option<String>,
}

/// A subresource the API serves for a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes only the status; the main resource ignores status changes.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of replicas.
    Scale(ScalePaths),
    /// `pods/binding`: assigns a node.
    Binding,
    /// `pods/eviction`: a policy-checked delete.
    Eviction,
    /// `namespaces/finalize`: writes `spec.finalizers`.
    Finalize,
    /// `pods/log`: a container's log, from the node agent.
    Log,
    /// `pods/exec`: a command run in a container, streamed from the node agent.
    Exec,
    /// `pods/portforward`: connections to a pod's ports, streamed from the node agent.
    PortForward,
    /// `pods/attach`: a running container's own stdio, streamed from the node agent.
    Attach,
    /// `certificatesigningrequests/approval`: writes only the Approved and Denied
    /// conditions.
    Approval,
}

impl Subresource {
    /// The path segment.
    pub fn name(&self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale(_) => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::PortForward => "portforward",
            Subresource::Attach => "attach",
            Subresource::Approval => "approval",
        }
    }
}

/// A built-in type's schema: its OpenAPI definition name and how to generate it.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinSchema {
    /// The definition name (`io.k8s.api.core.v1.Pod`).
    pub name: &'static str,
    /// Adds the type (and everything it references) to a generator.
    pub generate: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl BuiltinSchema {
    /// The schema of a k8s-openapi type.
    pub fn of<T: schemars::JsonSchema>() -> Self {
        BuiltinSchema {
            name: static_name::<T>(),
            generate: |g| g.subschema_for::<T>(),
        }
    }
}

/// Where a resource's schema comes from.
#[derive(Clone, Debug)]
pub enum SchemaSource {
    /// A k8s-openapi type.
    Builtin(BuiltinSchema),
    /// A CRD version's `openAPIV3Schema`.
    Custom(Arc<Value>),
}

/// An `additionalPrinterColumns` entry of a CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// The column header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Optional format hint.
    pub format: String,
    /// The column description.
    pub description: String,
    /// 0 for default output, >0 for `-o wide`.
    pub priority: i64,
    /// A simple JSONPath (`.spec.replicas`).
    pub json_path: String,
}

/// One resource served by the API.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind of the objects.
    pub kind: String,
    /// Kind of the collection (`PodList`).
    pub list_kind: String,
    /// Plural resource name, the URL segment.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Verbs on the resource.
    pub verbs: Vec<String>,
    /// Subresources served.
    pub subresources: Vec<Subresource>,
    /// Where the schema comes from.
    pub schema: SchemaSource,
    /// Whether objects are stored (false for review-style resources computed per request).
    pub stored: bool,
    /// Extra columns of a CRD's table output.
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether unknown fields are kept instead of pruned (CRDs with
    /// `x-kubernetes-preserve-unknown-fields` at the root).
    pub preserve_unknown_fields: bool,
    /// The `apiVersion` objects are stored as, when the resource has other versions that
    /// share its objects (a CRD with several versions; conversion `None` rewrites only
    /// `apiVersion`).
    pub storage_version: Option<String>,
    /// The warning sent with every request to a deprecated version.
    pub deprecation_warning: Option<String>,
}

impl ResourceDef {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the resource has a `/status` subresource.
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&Subresource::Status)
    }

    /// The `/scale` paths, if served.
    pub fn scale(&self) -> Option<&ScalePaths> {
        self.subresources.iter().find_map(|s| match s {
            Subresource::Scale(p) => Some(p),
            _ => None,
        })
    }

    /// Whether the subresource named `name` is served.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name() == name)
    }

    /// Whether the verb is allowed on the resource itself.
    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// `plural.group` or `plural`, as used in messages.
    pub fn qualified(&self) -> String {
        crate::status::qualified(&self.plural, &self.group)
    }
}

/// Whether a k8s-openapi scope type is namespaced.
trait Scope {
    const NAMESPACED: bool;
}
impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// Builds the definition of a built-in type.
fn builtin<T>(short: &[&str], categories: &[&str], subresources: Vec<Subresource>) -> ResourceDef
where
    T: k8s_openapi::Resource + k8s_openapi::ListableResource + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceDef {
        group: T::GROUP.into(),
        version: T::VERSION.into(),
        kind: T::KIND.into(),
        list_kind: T::LIST_KIND.into(),
        plural: T::URL_PATH_SEGMENT.into(),
        singular: T::KIND.to_ascii_lowercase(),
        namespaced: T::Scope::NAMESPACED,
        short_names: short.iter().map(|s| (*s).into()).collect(),
        categories: categories.iter().map(|s| (*s).into()).collect(),
        verbs: STANDARD_VERBS.iter().map(|s| (*s).into()).collect(),
        subresources,
        schema: SchemaSource::Builtin(BuiltinSchema::of::<T>()),
        stored: true,
        printer_columns: Vec::new(),
        preserve_unknown_fields: false,
        storage_version: None,
        deprecation_warning: None,
    }
}

/// A review-style resource: created, answered, never stored.
fn virtual_resource<T>() -> ResourceDef
where
    T: k8s_openapi::Resource + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceDef {
        group: T::GROUP.into(),
        version: T::VERSION.into(),
        kind: T::KIND.into(),
        list_kind: format!("{}List", T::KIND),
        plural: T::URL_PATH_SEGMENT.into(),
        singular: String::new(),
        namespaced: T::Scope::NAMESPACED,
        short_names: Vec::new(),
        categories: Vec::new(),
        verbs: CREATE_ONLY.iter().map(|s| (*s).into()).collect(),
        subresources: Vec::new(),
        schema: SchemaSource::Builtin(BuiltinSchema::of::<T>()),
        stored: false,
        printer_columns: Vec::new(),
        preserve_unknown_fields: false,
        storage_version: None,
        deprecation_warning: None,
    }
}

/// The schemars name of a k8s-openapi type (its OpenAPI definition name), leaked once per
/// type: the set of built-in types is fixed, so this is a bounded, one-time allocation.
fn static_name<T: schemars::JsonSchema>() -> &'static str {
    match T::schema_name() {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(s) => Box::leak(s.into_boxed_str()),
    }
}

fn scale(spec: &str, status: &str, selector: &str) -> Subresource {
    Subresource::Scale(ScalePaths {
        spec_replicas: spec.into(),
        status_replicas: status.into(),
        label_selector: Some(selector.into()),
    })
}

/// Every built-in resource, in discovery order.
pub fn builtin_resources() -> Vec<ResourceDef> {
    use Subresource::{
        Approval, Attach, Binding, Eviction, Exec, Finalize, Log, PortForward, Status,
    };
    let replicas = || scale("/spec/replicas", "/status/replicas", "/spec/selector");
    let mut namespaces = builtin::<core::Namespace>(&["ns"], &[], vec![Status, Finalize]);
    namespaces.verbs = NO_COLLECTION_DELETE.iter().map(|s| (*s).into()).collect();
    vec![
        builtin::<core::ConfigMap>(&["cm"], &[], vec![]),
        builtin::<core::Endpoints>(&["ep"], &[], vec![]),
        builtin::<core::Event>(&["ev"], &[], vec![]),
        builtin::<core::LimitRange>(&["limits"], &[], vec![]),
        namespaces,
        builtin::<core::Node>(&["no"], &[], vec![Status]),
        builtin::<core::PersistentVolumeClaim>(&["pvc"], &[], vec![Status]),
        builtin::<core::PersistentVolume>(&["pv"], &[], vec![Status]),
        builtin::<core::Pod>(
            &["po"],
            &["all"],
            vec![Status, Binding, Eviction, Log, Exec, Attach, PortForward],
        ),
        builtin::<core::ResourceQuota>(&["quota"], &[], vec![Status]),
        builtin::<core::Secret>(&[], &[], vec![]),
        builtin::<core::ServiceAccount>(&["sa"], &[], vec![]),
        builtin::<core::Service>(&["svc"], &["all"], vec![Status]),
        builtin::<apps::ControllerRevision>(&[], &[], vec![]),
        builtin::<apps::DaemonSet>(&["ds"], &["all"], vec![Status]),
        builtin::<apps::Deployment>(&["deploy"], &["all"], vec![Status, replicas()]),
        builtin::<apps::ReplicaSet>(&["rs"], &["all"], vec![Status, replicas()]),
        builtin::<apps::StatefulSet>(&["sts"], &["all"], vec![Status, replicas()]),
        virtual_resource::<authn::SelfSubjectReview>(),
        virtual_resource::<authn::TokenReview>(),
        virtual_resource::<authz::LocalSubjectAccessReview>(),
        virtual_resource::<authz::SelfSubjectAccessReview>(),
        virtual_resource::<authz::SelfSubjectRulesReview>(),
        virtual_resource::<authz::SubjectAccessReview>(),
        builtin::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], &["all"], vec![Status]),
        // What `kubectl autoscale` creates; stored as autoscaling/v2 (see `convert`).
        builtin::<autoscaling_v1::HorizontalPodAutoscaler>(&["hpa"], &["all"], vec![Status]),
        builtin::<batch::CronJob>(&["cj"], &["all"], vec![Status]),
        builtin::<batch::Job>(&[], &["all"], vec![Status]),
        builtin::<certificates::CertificateSigningRequest>(&["csr"], &[], vec![Status, Approval]),
        builtin::<coordination::Lease>(&[], &[], vec![]),
        builtin::<discovery::EndpointSlice>(&[], &[], vec![]),
        builtin::<events::Event>(&["ev"], &[], vec![]),
        builtin::<policy::PodDisruptionBudget>(&["pdb"], &[], vec![Status]),
        builtin::<rbac::ClusterRoleBinding>(&[], &[], vec![]),
        builtin::<rbac::ClusterRole>(&[], &[], vec![]),
        builtin::<rbac::RoleBinding>(&[], &[], vec![]),
        builtin::<rbac::Role>(&[], &[], vec![]),
        builtin::<scheduling::PriorityClass>(&["pc"], &[], vec![]),
        builtin::<storage::StorageClass>(&["sc"], &[], vec![]),
        builtin::<apiextensions::CustomResourceDefinition>(&["crd", "crds"], &[], vec![Status]),
        crate::plugins::resource(),
        usage_resource("NodeMetrics", "nodes", false),
        usage_resource("PodMetrics", "pods", true),
    ]
}

/// A resource of metrics.k8s.io: usage the API server reads from the node agents, never
/// stored (metrics-server's API).
fn usage_resource(kind: &str, plural: &str, namespaced: bool) -> ResourceDef {
    ResourceDef {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        verbs: vec!["get".into(), "list".into()],
        subresources: Vec::new(),
        schema: SchemaSource::Custom(Arc::new(
            serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        )),
        stored: false,
        printer_columns: Vec::new(),
        preserve_unknown_fields: true,
        storage_version: None,
        deprecation_warning: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_carry_the_real_names_and_scopes() {
        let all = builtin_resources();
        let pods = all.iter().find(|r| r.plural == "pods").unwrap();
        assert_eq!(
            (pods.kind.as_str(), pods.list_kind.as_str()),
            ("Pod", "PodList")
        );
        assert!(pods.namespaced);
        assert!(pods.has_status());
        let nodes = all.iter().find(|r| r.plural == "nodes").unwrap();
        assert!(!nodes.namespaced);
        let deploy = all.iter().find(|r| r.plural == "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.scale().unwrap().spec_replicas, "/spec/replicas");
        let SchemaSource::Builtin(schema) = deploy.schema else {
            panic!()
        };
        assert_eq!(schema.name, "io.k8s.api.apps.v1.Deployment");
        let crd = all
            .iter()
            .find(|r| r.plural == "customresourcedefinitions")
            .unwrap();
        assert_eq!(crd.group, "apiextensions.k8s.io");
    }
}
