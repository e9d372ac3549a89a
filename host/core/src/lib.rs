//! skiff's API machinery, free of IO: what the API server knows about Kubernetes objects.
//!
//! The API server ([`skiff-apiserver`]) owns requests and storage; this crate owns the rules
//! that make an object a valid Kubernetes object and the shapes the API answers with:
//!
//! - [`resources`] and [`registry`]: which resources exist, their names, scopes, verbs and
//!   subresources, and where their objects are stored;
//! - [`labels`], [`fields`]: selectors;
//! - [`names`], [`validation`], [`defaults`]: what an object must look like and what the
//!   server fills in;
//! - [`proto`]: Kubernetes protobuf request bodies, decoded into JSON;
//! - [`cel`]: CRD validation rules (`x-kubernetes-validations`);
//! - [`cron`]: CronJob schedules;
//! - [`scheduling`]: node selector terms, affinity and taints: where a pod may run;
//! - [`status`]: errors as Kubernetes `Status` objects;
//! - [`time`]: timestamps and ages.
//!
//! Objects are handled as `serde_json::Value`, the same representation the store keeps,
//! so that fields this version of skiff does not know about survive a round trip.
//!
//! ```
//! use skiff_core::labels::Selector;
//! let sel = Selector::parse("app in (web,db),tier!=backend").unwrap();
//! let pod = serde_json::json!({"metadata": {"labels": {"app": "web"}}});
//! assert!(sel.matches_object(&pod));
//! ```
//!
//! [`skiff-apiserver`]: ../skiff_apiserver/index.html

pub mod cel;
pub mod convert;
pub mod crd;
pub mod cron;
pub mod csr;
pub mod defaults;
pub mod fields;
pub mod join;
pub mod jsonpath;
pub mod labels;
pub mod names;
mod pattern;
pub mod plugins;
pub mod proto;
pub mod quantity;
pub mod query;
pub mod registry;
pub mod resources;
pub mod scheduling;
pub mod schema;
pub mod smp;
pub mod ssa;
pub mod status;
pub mod table;
pub mod time;
pub mod validation;

pub mod generated {
    //! Tables generated from k8s-openapi and k8s-pb by the scripts in `host/core/tools/`.
    #![allow(missing_docs, reason = "generated tables")]
    pub mod patch_meta;
}

pub use k8s_openapi;
