//! The embedded backend: one redb file, one writer thread, reads on the blocking pool.
//!
//! redb allows one write transaction at a time and `begin_write` blocks, so all writes go
//! through a dedicated thread fed by a channel. That thread is also what makes revisions a
//! total order, and it commits *groups*: it takes every request queued while the previous
//! commit was syncing, applies them one by one (each with its own revision and its own
//! precondition checks, so one failing request does not fail the others) and makes them
//! durable with a single fsync. Requests are acknowledged only after that commit.
//!
//! Tables:
//! - `objects`: key → revision (8 bytes) + JSON, the latest state;
//! - `log`: revision → history record (event type, key, object, previous value), the last
//!   [`Config::history_revisions`] writes, for watches and lists at older revisions;
//! - `meta`: `revision` (latest) and `compacted` (newest revision dropped from the log).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use crate::codec::{self, Record};
use crate::hub::{History, Hub, Watch};
use crate::{
    Error, Event, EventType, ListOptions, ListResult, Preconditions, Result, Revision, Storage,
    Stored,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Settings of a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// How many of the latest revisions the history keeps for watches and lists at older
    /// revisions. Default 10,000.
    pub history_revisions: u64,
    /// How many recent events are kept in memory for watches; older ones are read from the
    /// history. Default 4,096.
    pub watch_cache_events: usize,
    /// The most write requests committed together. Default 1,024.
    pub max_batch: usize,
}

impl Config {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            history_revisions: 10_000,
            watch_cache_events: 4096,
            max_batch: 1024,
        }
    }
}

/// The most log records one commit removes, so compaction never stalls a write batch.
const COMPACT_STEP: u64 = 2048;

/// A [`Storage`] in a single redb file.
pub struct RedbStore {
    shared: Arc<Shared>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    db: Database,
    hub: Arc<Hub>,
}

enum Op {
    Create {
        object: Value,
    },
    Update {
        object: Value,
        preconditions: Preconditions,
    },
    Delete {
        preconditions: Preconditions,
    },
}

struct Request {
    key: String,
    op: Op,
    reply: oneshot::Sender<Result<Stored>>,
}

impl RedbStore {
    /// Opens (or creates) the database and starts its writer thread.
    pub fn open(config: Config) -> Result<Self> {
        let db = Database::create(&config.path).map_err(Error::db)?;
        let (revision, compacted) = {
            let txn = db.begin_write().map_err(Error::db)?;
            let (revision, compacted) = {
                txn.open_table(OBJECTS).map_err(Error::db)?;
                txn.open_table(LOG).map_err(Error::db)?;
                let meta = txn.open_table(META).map_err(Error::db)?;
                (
                    read_meta(&meta, "revision")?,
                    read_meta(&meta, "compacted")?,
                )
            };
            txn.commit().map_err(Error::db)?;
            (revision, compacted)
        };
        // Apply the history bound now, not only at the next write: a server restarted with
        // a shorter history must not serve revisions it promised to drop.
        let mut compacted = compacted;
        let keep_from = revision.saturating_sub(config.history_revisions);
        while compacted < keep_from {
            let upto = keep_from.min(compacted + COMPACT_STEP);
            let txn = db.begin_write().map_err(Error::db)?;
            {
                let mut log = txn.open_table(LOG).map_err(Error::db)?;
                for rev in compacted + 1..=upto {
                    log.remove(rev).map_err(Error::db)?;
                }
                let mut meta = txn.open_table(META).map_err(Error::db)?;
                meta.insert("compacted", upto).map_err(Error::db)?;
            }
            txn.commit().map_err(Error::db)?;
            compacted = upto;
        }
        info!(
            store.path = %config.path.display(),
            store.revision = revision,
            store.compacted = compacted,
            "store opened"
        );
        let hub = Arc::new(Hub::new(config.watch_cache_events, revision, compacted));
        let shared = Arc::new(Shared { db, hub });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("skiff-store-writer".into())
                .spawn(move || Writer::new(shared, config, revision, compacted).run(rx))
                .expect("spawning the writer thread")
        };
        Ok(RedbStore {
            shared,
            requests: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops accepting writes, lets the writer finish what is queued, and ends all watches.
    pub fn close(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // A panicked writer has already failed its requests; nothing more to do here.
            let _ = writer.join();
        }
        self.shared.hub.close();
    }

    async fn submit(&self, key: String, op: Op) -> Result<Stored> {
        let (reply, rx) = oneshot::channel();
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let sender = requests.as_ref().ok_or(Error::Closed)?;
            sender
                .send(Request { key, op, reply })
                .map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|_| Error::Closed)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Storage for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Stored>>> {
        let key = key.to_owned();
        Box::pin(self.read(move |shared| {
            let txn = shared.db.begin_read().map_err(Error::db)?;
            let objects = txn.open_table(OBJECTS).map_err(Error::db)?;
            let value = objects.get(key.as_str()).map_err(Error::db)?;
            match value {
                Some(raw) => Ok(Some(decode_object(&key, raw.value())?)),
                None => Ok(None),
            }
        }))
    }

    fn list(&self, options: ListOptions) -> BoxFuture<'_, Result<ListResult>> {
        Box::pin(self.read(move |shared| list(&shared.db, &options)))
    }

    fn create(&self, key: String, object: Value) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(self.submit(key, Op::Create { object }))
    }

    fn update(
        &self,
        key: String,
        object: Value,
        preconditions: Preconditions,
    ) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(self.submit(
            key,
            Op::Update {
                object,
                preconditions,
            },
        ))
    }

    fn delete(&self, key: String, preconditions: Preconditions) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(self.submit(key, Op::Delete { preconditions }))
    }

    fn watch(&self, prefix: String, after: Revision) -> Result<Watch> {
        let history: Arc<dyn History> = self.shared.clone();
        Watch::start(self.shared.hub.clone(), history, prefix, after)
    }

    fn revision(&self) -> Revision {
        self.shared.hub.latest()
    }

    fn compacted_revision(&self) -> Revision {
        self.shared.hub.compacted()
    }
}

impl History for Shared {
    fn read_after(&self, after: Revision, upto: Revision, limit: usize) -> Result<Vec<Arc<Event>>> {
        let txn = self.db.begin_read().map_err(Error::db)?;
        let log = txn.open_table(LOG).map_err(Error::db)?;
        let mut events = Vec::new();
        for entry in log.range(after + 1..=upto).map_err(Error::db)?.take(limit) {
            let (revision, raw) = entry.map_err(Error::db)?;
            let revision = revision.value();
            let record = codec::decode_record(raw.value()).ok_or(Error::CorruptLog { revision })?;
            events.push(Arc::new(event_from_record(revision, &record)));
        }
        Ok(events)
    }
}

fn event_from_record(revision: Revision, record: &Record<'_>) -> Event {
    Event::new(
        revision,
        record.kind,
        record.key.to_owned(),
        Bytes::copy_from_slice(record.object),
        record.prev.map(|(rev, json)| Stored {
            key: record.key.to_owned(),
            revision: rev,
            data: Bytes::copy_from_slice(json),
        }),
    )
}

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    Ok(meta
        .get(name)
        .map_err(Error::db)?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn decode_object(key: &str, raw: &[u8]) -> Result<Stored> {
    codec::stored(key, raw).ok_or_else(|| Error::Corrupt {
        key: key.to_owned(),
        source: serde::de::Error::custom("value shorter than its revision header"),
    })
}

/// Reads one page of a list, at the latest revision or (by undoing the history after it) at
/// an older one, all within one read transaction so the page is consistent.
fn list(db: &Database, options: &ListOptions) -> Result<ListResult> {
    let txn = db.begin_read().map_err(Error::db)?;
    let meta = txn.open_table(META).map_err(Error::db)?;
    let current = read_meta(&meta, "revision")?;
    let compacted = read_meta(&meta, "compacted")?;
    let at = options.revision.unwrap_or(current);
    if at > current {
        return Err(Error::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(Error::Compacted {
            requested: at,
            compacted,
        });
    }
    let prefix = options.prefix.as_str();
    let start = match &options.start_after {
        Some(after) => Bound::Excluded(after.as_str()),
        None => Bound::Included(prefix),
    };
    // Keys written after `at`, mapped to their state at `at` (None: absent then).
    let mut overlay: BTreeMap<String, Option<Stored>> = BTreeMap::new();
    if at < current {
        let log = txn.open_table(LOG).map_err(Error::db)?;
        for entry in log.range(at + 1..=current).map_err(Error::db)? {
            let (revision, raw) = entry.map_err(Error::db)?;
            let revision = revision.value();
            let record = codec::decode_record(raw.value()).ok_or(Error::CorruptLog { revision })?;
            let after_start = match &options.start_after {
                Some(after) => record.key > after.as_str(),
                None => true,
            };
            if record.key.starts_with(prefix) && after_start {
                overlay.entry(record.key.to_owned()).or_insert_with(|| {
                    record.prev.map(|(rev, json)| Stored {
                        key: record.key.to_owned(),
                        revision: rev,
                        data: Bytes::copy_from_slice(json),
                    })
                });
            }
        }
    }
    let objects = txn.open_table(OBJECTS).map_err(Error::db)?;
    let mut current_items = objects
        .range::<&str>((start, Bound::Unbounded))
        .map_err(Error::db)?
        .map_while(|entry| match entry {
            Ok((k, v)) if k.value().starts_with(prefix) => {
                Some(decode_object(k.value(), v.value()))
            }
            Ok(_) => None,
            Err(err) => Some(Err(Error::db(err))),
        })
        .peekable();
    let mut overlay = overlay.into_iter().peekable();
    let want = if options.limit == 0 {
        usize::MAX
    } else {
        options.limit + 1
    };
    let mut items = Vec::new();
    while items.len() < want {
        let next_current = match current_items.peek() {
            Some(Ok(item)) => Some(item.key.as_str()),
            Some(Err(_)) => return Err(current_items.next().expect("peeked").unwrap_err()),
            None => None,
        };
        let take_overlay = match (next_current, overlay.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(c), Some((o, _))) => {
                if c == o.as_str() {
                    current_items.next(); // superseded by its state at `at`
                    true
                } else {
                    o.as_str() < c
                }
            }
        };
        if take_overlay {
            if let Some((_, Some(item))) = overlay.next() {
                items.push(item);
            }
        } else if let Some(item) = current_items.next() {
            items.push(item?);
        }
    }
    let more = options.limit != 0 && items.len() > options.limit;
    items.truncate(if more { options.limit } else { items.len() });
    Ok(ListResult {
        items,
        revision: at,
        more,
    })
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    config: Config,
    revision: Revision,
    compacted: Revision,
}

/// What applying one request inside the batch's transaction produced.
type Applied = (Stored, Arc<Event>);

impl Writer {
    fn new(shared: Arc<Shared>, config: Config, revision: Revision, compacted: Revision) -> Self {
        Writer {
            shared,
            config,
            revision,
            compacted,
        }
    }

    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        debug!("store writer stopped");
    }

    /// Applies a batch in one transaction, commits it once, then publishes and replies.
    fn commit(&mut self, batch: Vec<Request>) {
        let size = batch.len();
        let start_revision = self.revision;
        let mut outcomes = Vec::with_capacity(size);
        match self.write_batch(batch, &mut outcomes) {
            Ok(compacted) => {
                self.compacted = compacted;
                self.shared.hub.set_compacted(compacted);
                let events = outcomes
                    .iter()
                    .filter_map(|(_, o)| o.as_ref().ok().map(|(_, e): &Applied| e.clone()))
                    .collect();
                self.shared.hub.publish(events);
                debug!(
                    store.batch = size,
                    store.revision = self.revision,
                    "batch committed"
                );
                for (reply, outcome) in outcomes {
                    // The requester may have gone away; the write stands regardless.
                    let _ = reply.send(outcome.map(|(stored, _)| stored));
                }
            }
            Err(err) => {
                error!(
                    error = &err as &dyn std::error::Error,
                    store.batch = size,
                    "write batch failed; nothing in it was stored"
                );
                self.revision = start_revision;
                for (reply, _) in outcomes {
                    let _ = reply.send(Err(Error::BatchFailed));
                }
            }
        }
    }

    /// Applies every request of the batch in one write transaction and commits it,
    /// returning the new compacted revision. Each request's outcome goes to `outcomes`;
    /// on a database error every request, applied or not, is in `outcomes` and the whole
    /// batch has failed.
    fn write_batch(
        &mut self,
        batch: Vec<Request>,
        outcomes: &mut Vec<(oneshot::Sender<Result<Stored>>, Result<Applied>)>,
    ) -> Result<Revision> {
        let mut pending = batch.into_iter();
        let fail_rest = |pending: std::vec::IntoIter<Request>, outcomes: &mut Vec<_>| {
            outcomes.extend(pending.map(|r| (r.reply, Err(Error::BatchFailed))));
        };
        let txn = match self.shared.db.begin_write() {
            Ok(txn) => txn,
            Err(err) => {
                fail_rest(pending, outcomes);
                return Err(Error::db(err));
            }
        };
        let mut compacted = self.compacted;
        let (mut objects, mut log, mut meta) = match open_tables(&txn) {
            Ok(tables) => tables,
            Err(err) => {
                fail_rest(pending, outcomes);
                return Err(err);
            }
        };
        let start_revision = self.revision;
        while let Some(request) = pending.next() {
            let outcome = self.apply(&mut objects, &mut log, &request.key, request.op);
            // A database error poisons the transaction: the whole batch fails.
            if let Err(err @ Error::Database(_)) = outcome {
                outcomes.push((request.reply, Err(Error::BatchFailed)));
                fail_rest(pending, outcomes);
                return Err(err);
            }
            outcomes.push((request.reply, outcome));
        }
        let finish = (|| {
            if self.revision > start_revision {
                meta.insert("revision", self.revision).map_err(Error::db)?;
            }
            let keep_from = self.revision.saturating_sub(self.config.history_revisions);
            if keep_from > compacted {
                let upto = keep_from.min(compacted + COMPACT_STEP);
                for revision in compacted + 1..=upto {
                    log.remove(revision).map_err(Error::db)?;
                }
                compacted = upto;
                meta.insert("compacted", compacted).map_err(Error::db)?;
            }
            Ok::<_, Error>(())
        })();
        drop((objects, log, meta));
        finish?;
        txn.commit().map_err(Error::db)?;
        Ok(compacted)
    }

    fn apply(
        &mut self,
        objects: &mut redb::Table<&str, &[u8]>,
        log: &mut redb::Table<u64, &[u8]>,
        key: &str,
        op: Op,
    ) -> Result<Applied> {
        let existing = objects
            .get(key)
            .map_err(Error::db)?
            .map(|raw| decode_object(key, raw.value()))
            .transpose()?;
        let (kind, object_json) = match op {
            Op::Create { mut object } => {
                if existing.is_some() {
                    return Err(Error::AlreadyExists {
                        key: key.to_owned(),
                    });
                }
                (EventType::Added, self.stamp(key, &mut object)?)
            }
            Op::Update {
                mut object,
                preconditions,
            } => {
                check(key, existing.as_ref(), &preconditions)?;
                (EventType::Modified, self.stamp(key, &mut object)?)
            }
            Op::Delete { preconditions } => {
                let current = check(key, existing.as_ref(), &preconditions)?;
                let mut object = current.to_value()?;
                (EventType::Deleted, self.stamp(key, &mut object)?)
            }
        };
        let revision = self.revision;
        if kind == EventType::Deleted {
            objects.remove(key).map_err(Error::db)?;
        } else {
            objects
                .insert(key, codec::encode_value(revision, &object_json).as_slice())
                .map_err(Error::db)?;
        }
        let record = codec::encode_record(&Record {
            kind,
            key,
            object: &object_json,
            prev: existing.as_ref().map(|p| (p.revision, &p.data[..])),
        });
        log.insert(revision, record.as_slice()).map_err(Error::db)?;
        let object = Bytes::from(object_json);
        let stored = Stored {
            key: key.to_owned(),
            revision,
            data: object.clone(),
        };
        let event = Arc::new(Event::new(revision, kind, key.to_owned(), object, existing));
        Ok((stored, event))
    }

    /// Takes the next revision and writes it into the object as its resourceVersion.
    fn stamp(&mut self, key: &str, object: &mut Value) -> Result<Vec<u8>> {
        let metadata = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::NotAnObject {
                key: key.to_owned(),
            })?;
        let revision = self.revision + 1;
        metadata.insert("resourceVersion".into(), revision.to_string().into());
        let json = serde_json::to_vec(object).map_err(|source| Error::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        self.revision = revision;
        Ok(json)
    }
}

type Tables<'t> = (
    redb::Table<'t, &'static str, &'static [u8]>,
    redb::Table<'t, u64, &'static [u8]>,
    redb::Table<'t, &'static str, u64>,
);

fn open_tables(txn: &redb::WriteTransaction) -> Result<Tables<'_>> {
    Ok((
        txn.open_table(OBJECTS).map_err(Error::db)?,
        txn.open_table(LOG).map_err(Error::db)?,
        txn.open_table(META).map_err(Error::db)?,
    ))
}

/// Checks a write's preconditions against the stored object, which must exist.
fn check<'a>(
    key: &str,
    existing: Option<&'a Stored>,
    preconditions: &Preconditions,
) -> Result<&'a Stored> {
    let current = existing.ok_or_else(|| Error::NotFound {
        key: key.to_owned(),
    })?;
    if let Some(expected) = preconditions.revision
        && expected != current.revision
    {
        return Err(Error::RevisionMismatch {
            key: key.to_owned(),
            expected,
            actual: current.revision,
        });
    }
    if let Some(expected) = &preconditions.uid {
        #[derive(serde::Deserialize)]
        struct Meta {
            #[serde(default)]
            uid: String,
        }
        #[derive(serde::Deserialize)]
        struct Object {
            metadata: Meta,
        }
        let actual = serde_json::from_slice::<Object>(&current.data)
            .map_err(|source| Error::Corrupt {
                key: key.to_owned(),
                source,
            })?
            .metadata
            .uid;
        if &actual != expected {
            return Err(Error::UidMismatch {
                key: key.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(current)
}
