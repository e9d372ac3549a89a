//! skiff's storage layer: a revisioned key-value store of Kubernetes objects with watch.
//!
//! Every write gets the next **revision**, a single cluster-wide counter that is strictly
//! increasing and doubles as the objects' `metadata.resourceVersion`. The store writes that
//! revision into each object it stores, keeps a bounded history of recent writes (the *log*)
//! so that watches can resume from an older revision and lists can be served at one, and
//! answers [`Error::Compacted`] once a requested revision has left the history.
//!
//! Start with [`Storage`], the contract the API server codes against, and [`RedbStore`], its
//! embedded implementation:
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_store::Error> {
//! use skiff_store::{Config, Preconditions, RedbStore, Storage};
//!
//! let store = RedbStore::open(Config::new("/var/lib/skiff/state.redb"))?;
//! let created = store
//!     .create("core/configmaps/default/cfg".into(), serde_json::json!({"metadata": {}}))
//!     .await?;
//! let mut watch = store.watch("core/configmaps/".into(), created.revision)?;
//! store.delete("core/configmaps/default/cfg".into(), Preconditions::default()).await?;
//! let deleted = watch.next().await.expect("one event")?;
//! assert_eq!(deleted.revision, created.revision + 1);
//! # Ok(()) }
//! ```
//!
//! Keys are opaque strings to the store; the API server lays them out so that every
//! collection it lists is a key prefix (`<group>/<resource>/<namespace>/<name>`).

mod codec;
mod hub;
mod redb_store;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::hub::Watch;
pub use crate::redb_store::{Config, RedbStore};

/// The store's global write counter; also every object's `metadata.resourceVersion`.
pub type Revision = u64;

/// An object as stored: its key, the revision of its last write and its JSON encoding, whose
/// `metadata.resourceVersion` equals `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The object's storage key.
    pub key: String,
    /// The revision that last wrote the object.
    pub revision: Revision,
    /// The object's JSON encoding.
    pub data: Bytes,
}

impl Stored {
    /// Parses the stored JSON.
    pub fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.data).map_err(|source| Error::Corrupt {
            key: self.key.clone(),
            source,
        })
    }
}

/// Conditions a write checks against the stored object before it applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object must have been last written at this revision.
    pub revision: Option<Revision>,
    /// The object must have this `metadata.uid`.
    pub uid: Option<String>,
}

/// What a list reads.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys starting with this prefix.
    pub prefix: String,
    /// Read the state as of this revision (must still be in the history); `None` reads the
    /// latest state.
    pub revision: Option<Revision>,
    /// At most this many items (0 means no limit).
    pub limit: usize,
    /// Start after this key (the last key of the previous page).
    pub start_after: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// The items, in key order.
    pub items: Vec<Stored>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// What a write did to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The key was created.
    Added,
    /// The key's object was replaced.
    Modified,
    /// The key was deleted.
    Deleted,
}

/// One write, as watchers see it.
#[derive(Debug)]
pub struct Event {
    /// The revision of the write.
    pub revision: Revision,
    /// What the write did.
    pub kind: EventType,
    /// The key written.
    pub key: String,
    /// The object after the write; for a deletion, its last state with
    /// `metadata.resourceVersion` set to the deletion's revision.
    pub object: Bytes,
    /// The object before the write (absent for a creation).
    pub prev: Option<Stored>,
    /// `object` parsed on first use and shared by every watcher that needs it.
    parsed: OnceLock<Option<serde_json::Value>>,
    /// `prev` parsed on first use.
    parsed_prev: OnceLock<Option<serde_json::Value>>,
}

impl Event {
    pub(crate) fn new(
        revision: Revision,
        kind: EventType,
        key: String,
        object: Bytes,
        prev: Option<Stored>,
    ) -> Self {
        Event {
            revision,
            kind,
            key,
            object,
            prev,
            parsed: OnceLock::new(),
            parsed_prev: OnceLock::new(),
        }
    }

    /// The object after the write, parsed once for all watchers (`None` if it isn't JSON,
    /// which the store never writes).
    pub fn object_value(&self) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.object).ok())
            .as_ref()
    }

    /// The object before the write, parsed once for all watchers.
    pub fn prev_value(&self) -> Option<&serde_json::Value> {
        self.parsed_prev
            .get_or_init(|| {
                self.prev
                    .as_ref()
                    .and_then(|p| serde_json::from_slice(&p.data).ok())
            })
            .as_ref()
    }
}

/// A store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No object is stored under the key.
    #[error("key {key} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create found the key already taken.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key written.
        key: String,
    },
    /// The object's revision differs from the one the write was conditioned on.
    #[error("key {key} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        /// The key written.
        key: String,
        /// The revision the write expected.
        expected: Revision,
        /// The revision stored.
        actual: Revision,
    },
    /// The object's uid differs from the one the write was conditioned on.
    #[error("key {key} has uid {actual}, not {expected}")]
    UidMismatch {
        /// The key written.
        key: String,
        /// The uid the write expected.
        expected: String,
        /// The uid stored.
        actual: String,
    },
    /// The revision asked for has been compacted out of the history.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The newest compacted revision; history starts after it.
        compacted: Revision,
    },
    /// The revision asked for has not been written yet.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The object to write has no `metadata` object to carry its resourceVersion.
    #[error("object for key {key} is not a JSON object with metadata")]
    NotAnObject {
        /// The key written.
        key: String,
    },
    /// A stored value could not be decoded.
    #[error("stored value for key {key} is corrupt")]
    Corrupt {
        /// The key read.
        key: String,
        /// Why the JSON did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A stored history record could not be decoded.
    #[error("history record at revision {revision} is corrupt")]
    CorruptLog {
        /// The revision read.
        revision: Revision,
    },
    /// The database failed.
    #[error("database operation failed")]
    Database(#[from] redb::Error),
    /// The write was in a batch whose commit failed; nothing in the batch was stored.
    #[error("write batch failed to commit")]
    BatchFailed,
    /// The store has shut down.
    #[error("store is closed")]
    Closed,
}

impl Error {
    fn db(err: impl Into<redb::Error>) -> Self {
        Error::Database(err.into())
    }
}

/// A store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The storage contract the API server codes against.
///
/// Every successful write is durable when its future resolves and gets exactly one new
/// revision; writes are totally ordered by revision and watchers see them in that order.
pub trait Storage: Send + Sync + 'static {
    /// Reads the latest state of one key.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Stored>>>;

    /// Reads a page of keys under a prefix, at the latest revision or an older one.
    fn list(&self, options: ListOptions) -> BoxFuture<'_, Result<ListResult>>;

    /// Stores a new object; fails with [`Error::AlreadyExists`] if the key is taken.
    fn create(&self, key: String, object: serde_json::Value) -> BoxFuture<'_, Result<Stored>>;

    /// Replaces an existing object if the preconditions hold.
    fn update(
        &self,
        key: String,
        object: serde_json::Value,
        preconditions: Preconditions,
    ) -> BoxFuture<'_, Result<Stored>>;

    /// Deletes an object if the preconditions hold, returning its last state stamped with
    /// the deletion's revision.
    fn delete(&self, key: String, preconditions: Preconditions) -> BoxFuture<'_, Result<Stored>>;

    /// Watches the keys under `prefix` for writes after revision `after`.
    ///
    /// Fails with [`Error::Compacted`] if `after` is older than the history; a watch that
    /// falls behind the history later yields that error and ends.
    fn watch(&self, prefix: String, after: Revision) -> Result<Watch>;

    /// The latest revision written.
    fn revision(&self) -> Revision;

    /// The newest revision no longer in the history (0 if nothing was compacted yet).
    fn compacted_revision(&self) -> Revision;
}

/// Shared handle to a store.
pub type SharedStorage = Arc<dyn Storage>;
