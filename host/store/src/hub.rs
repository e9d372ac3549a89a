//! The watch hub: recent events in memory, older ones from the store's history.
//!
//! The writer publishes each committed batch into a ring of the most recent events and then
//! bumps a `tokio::sync::watch` channel carrying the latest revision. A [`Watch`] is a cursor:
//! it wakes on that channel, copies the events after its cursor that match its prefix, and
//! falls back to reading the persisted history when its cursor is older than the ring. Because
//! every revision is exactly one event, the ring holds consecutive revisions and a cursor
//! finds its place by arithmetic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::{Error, Event, Result, Revision};

/// Reads persisted history older than the ring.
pub(crate) trait History: Send + Sync + 'static {
    /// Events with `after < revision <= upto`, oldest first, at most `limit` of them.
    fn read_after(&self, after: Revision, upto: Revision, limit: usize) -> Result<Vec<Arc<Event>>>;
}

/// How many history records a lagging watch reads per round trip to the database.
const HISTORY_CHUNK: usize = 1024;

pub(crate) struct Hub {
    /// The most recent events, consecutive revisions, oldest first. A std lock: it is held
    /// only to push or copy a few `Arc`s and never across an `.await`.
    ring: RwLock<VecDeque<Arc<Event>>>,
    capacity: usize,
    latest: watch::Sender<Revision>,
    compacted: AtomicU64,
    closed: AtomicBool,
}

impl Hub {
    pub(crate) fn new(capacity: usize, revision: Revision, compacted: Revision) -> Self {
        Hub {
            ring: RwLock::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            latest: watch::Sender::new(revision),
            compacted: AtomicU64::new(compacted),
            closed: AtomicBool::new(false),
        }
    }

    /// Makes committed events visible to watches, in revision order.
    pub(crate) fn publish(&self, events: Vec<Arc<Event>>) {
        let Some(last) = events.last().map(|e| e.revision) else {
            return;
        };
        {
            let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                if ring.len() == self.capacity {
                    ring.pop_front();
                }
                ring.push_back(event);
            }
        }
        self.latest.send_replace(last);
    }

    pub(crate) fn set_compacted(&self, revision: Revision) {
        self.compacted.store(revision, Ordering::Release);
    }

    pub(crate) fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn latest(&self) -> Revision {
        *self.latest.borrow()
    }

    /// Ends every watch: their `next` returns `None` once drained. (Watches share the hub,
    /// so its sender outlives the store; a flag plus a wake-up is what ends them.)
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.latest.send_modify(|_| {});
    }
}

/// A stream of the writes under one key prefix after a starting revision.
///
/// Events come in revision order with no gaps among the matching keys. If the watch falls
/// so far behind that its next revision has been compacted away, [`Watch::next`] yields
/// [`Error::Compacted`] once and the watch ends.
pub struct Watch {
    prefix: String,
    cursor: Revision,
    buffer: VecDeque<Arc<Event>>,
    hub: Arc<Hub>,
    history: Arc<dyn History>,
    rx: watch::Receiver<Revision>,
    done: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.prefix)
            .field("cursor", &self.cursor)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Watch {
    pub(crate) fn start(
        hub: Arc<Hub>,
        history: Arc<dyn History>,
        prefix: String,
        after: Revision,
    ) -> Result<Self> {
        let compacted = hub.compacted();
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        let rx = hub.latest.subscribe();
        Ok(Watch {
            prefix,
            cursor: after,
            buffer: VecDeque::new(),
            hub,
            history,
            rx,
            done: false,
        })
    }

    /// The next matching event; `None` once the store has closed or after an error.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.done || self.hub.closed.load(Ordering::Acquire) {
                return None;
            }
            let latest = *self.rx.borrow_and_update();
            if latest > self.cursor {
                if let Err(err) = self.fill().await {
                    self.done = true;
                    return Some(Err(err));
                }
                continue;
            }
            if self.rx.changed().await.is_err() {
                self.done = true;
            }
        }
    }

    /// The newest revision up to which every matching event has been returned by
    /// [`Watch::next`]: a safe resume point, and what a bookmark reports.
    pub fn progress(&self) -> Revision {
        match self.buffer.front() {
            Some(next) => next.revision - 1,
            None => self.cursor,
        }
    }

    /// Moves events after the cursor into the buffer, from the ring or else the history.
    async fn fill(&mut self) -> Result<()> {
        let ring_start = {
            let ring = self.hub.ring.read().unwrap_or_else(|p| p.into_inner());
            match ring.front().map(|e| e.revision) {
                Some(front) if front <= self.cursor + 1 => {
                    let start = usize::try_from(self.cursor + 1 - front).unwrap_or(usize::MAX);
                    for event in ring.range(start.min(ring.len())..) {
                        if event.key.starts_with(&self.prefix) {
                            self.buffer.push_back(event.clone());
                        }
                        self.cursor = event.revision;
                    }
                    return Ok(());
                }
                front => front,
            }
        };
        // The ring starts after our cursor (or is empty after a restart): read the history.
        let compacted = self.hub.compacted();
        if self.cursor < compacted {
            return Err(Error::Compacted {
                requested: self.cursor,
                compacted,
            });
        }
        let upto = ring_start.map_or(*self.rx.borrow(), |front| front - 1);
        let history = self.history.clone();
        let after = self.cursor;
        let events =
            tokio::task::spawn_blocking(move || history.read_after(after, upto, HISTORY_CHUNK))
                .await
                .map_err(|_| Error::Closed)??;
        if events.is_empty() {
            // Compaction ran between our check and the read.
            let compacted = self.hub.compacted();
            return Err(Error::Compacted {
                requested: self.cursor,
                compacted: compacted.max(self.cursor + 1),
            });
        }
        for event in events {
            if event.key.starts_with(&self.prefix) {
                self.buffer.push_back(event.clone());
            }
            self.cursor = event.revision;
        }
        Ok(())
    }
}
