//! The scheduling queue: active pods by priority (then arrival), pods backing off after a
//! failed attempt, and unschedulable pods parked until the cluster changes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::PodInfo;

/// The first retry waits this long; each failure doubles it up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often, even if nothing seems to change.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped and being scheduled (or bound).
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    attempts: u32,
    at: Where,
    /// Bumped on every re-activation; stale heap entries carry an older one.
    seq: u64,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    seq: u64,
}

impl Queue {
    fn activate(&mut self, uid: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.entries.get_mut(uid) {
            e.at = Where::Active;
            e.seq = seq;
            self.active
                .push((e.pod.priority, Reverse(seq), uid.to_owned()));
        }
    }

    /// Pods waiting or in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a pending pod, or updates it (an update of a parked pod makes it active: its
    /// spec may now fit).
    pub fn add_or_update(&mut self, pod: Arc<PodInfo>) {
        let uid = pod.uid.clone();
        match self.entries.get_mut(&uid) {
            Some(e) => {
                let reactivate = matches!(e.at, Where::Unschedulable(_));
                e.pod = pod;
                if reactivate {
                    self.activate(&uid);
                }
            }
            None => {
                self.entries.insert(
                    uid.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        at: Where::Active,
                        seq: 0,
                    },
                );
                self.activate(&uid);
            }
        }
    }

    /// Forgets a pod (bound or deleted).
    pub fn remove(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    /// The next pod to schedule, if one is ready now.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        while let Some(Reverse((until, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let Reverse((until, uid)) = self.backoff.pop().expect("peeked");
            if self
                .entries
                .get(&uid)
                .is_some_and(|e| e.at == Where::Backoff(until))
            {
                self.activate(&uid);
            }
        }
        while let Some((_, Reverse(seq), uid)) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&uid)
                && e.at == Where::Active
                && e.seq == seq
            {
                e.at = Where::InFlight;
                e.attempts += 1;
                return Some(e.pod.clone());
            }
        }
        None
    }

    fn backoff_for(attempts: u32) -> Duration {
        INITIAL_BACKOFF
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(MAX_BACKOFF)
    }

    /// The pod failed for a reason that may pass by itself (a plugin error, a failed
    /// binding): retry after a backoff.
    pub fn backoff(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            let until = now + Self::backoff_for(e.attempts);
            e.at = Where::Backoff(until);
            self.backoff.push(Reverse((until, uid.to_owned())));
        }
    }

    /// No node fits: park the pod until the cluster changes.
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.at = Where::Unschedulable(now);
        }
    }

    /// The cluster changed in a way that may make parked pods fit (a node was added or
    /// changed, a pod went away, a plugin changed): move them back, respecting backoff.
    pub fn move_unschedulable(&mut self, now: Instant) {
        let parked: Vec<(String, u32, Instant)> = self
            .entries
            .iter()
            .filter_map(|(uid, e)| match e.at {
                Where::Unschedulable(since) => Some((uid.clone(), e.attempts, since)),
                _ => None,
            })
            .collect();
        for (uid, attempts, since) in parked {
            let until = since + Self::backoff_for(attempts);
            if until > now {
                if let Some(e) = self.entries.get_mut(&uid) {
                    e.at = Where::Backoff(until);
                }
                self.backoff.push(Reverse((until, uid)));
            } else {
                self.activate(&uid);
            }
        }
    }

    /// Moves pods parked longer than [`UNSCHEDULABLE_FLUSH`] back to active.
    pub fn flush_stale(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.at, Where::Unschedulable(since) if now.duration_since(since) >= UNSCHEDULABLE_FLUSH)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid);
        }
    }

    /// When the next backed-off pod is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _))| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, priority: i32) -> Arc<PodInfo> {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "x"}], "priority": priority},
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    fn drain(q: &mut Queue, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.pop(now).map(|p| p.uid.clone())).collect()
    }

    #[test]
    fn active_pods_pop_by_priority_then_arrival() {
        let mut q = Queue::default();
        for (uid, priority) in [("a", 0), ("b", 10), ("c", 0), ("d", 10), ("e", -5)] {
            q.add_or_update(pod(uid, priority));
        }
        assert_eq!(drain(&mut q, Instant::now()), ["b", "d", "a", "c", "e"]);
        // Popped pods stay known (in flight) until bound or deleted.
        assert_eq!(q.len(), 5);
        for uid in ["a", "b", "c", "d", "e"] {
            q.remove(uid);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_maximum() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add_or_update(pod("a", 0));
        let mut now = t0;
        for expected in [1, 2, 4, 8, 10, 10] {
            assert_eq!(drain(&mut q, now), ["a"]);
            q.backoff("a", now);
            let due = q.next_due().unwrap();
            assert_eq!(due - now, Duration::from_secs(expected));
            // Not before it is due, however often the queue is asked.
            assert!(q.pop(due - Duration::from_millis(1)).is_none());
            now = due;
        }
        assert_eq!(drain(&mut q, now), ["a"]);
    }

    #[test]
    fn parked_pods_return_on_cluster_changes_updates_and_the_periodic_flush() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        for uid in ["a", "b", "c"] {
            q.add_or_update(pod(uid, 0));
        }
        assert_eq!(drain(&mut q, t0).len(), 3);
        for uid in ["a", "b", "c"] {
            q.unschedulable(uid, t0);
        }
        assert!(q.pop(t0).is_none());

        // An update of a parked pod (its spec may fit now) makes it active at once.
        q.add_or_update(pod("b", 0));
        assert_eq!(drain(&mut q, t0), ["b"]);

        // A cluster change moves the others back, but not before their backoff ends.
        q.move_unschedulable(t0 + Duration::from_millis(500));
        assert!(q.pop(t0 + Duration::from_millis(500)).is_none());
        let mut back = drain(&mut q, t0 + INITIAL_BACKOFF);
        back.sort();
        assert_eq!(back, ["a", "c"]);

        // Without any change, a parked pod is retried after UNSCHEDULABLE_FLUSH.
        q.unschedulable("a", t0 + INITIAL_BACKOFF);
        q.flush_stale(t0 + INITIAL_BACKOFF + UNSCHEDULABLE_FLUSH - Duration::from_secs(1));
        assert!(q.pop(t0 + UNSCHEDULABLE_FLUSH).is_none());
        q.flush_stale(t0 + INITIAL_BACKOFF + UNSCHEDULABLE_FLUSH);
        assert_eq!(
            drain(&mut q, t0 + INITIAL_BACKOFF + UNSCHEDULABLE_FLUSH),
            ["a"]
        );
    }

    #[test]
    fn removed_and_reactivated_pods_leave_no_stale_turns() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update(pod("a", 0));
        q.add_or_update(pod("b", 0));
        q.remove("a");
        assert_eq!(drain(&mut q, now), ["b"]);
        // A pod backing off and then parked-and-moved is popped once, not once per turn.
        q.unschedulable("b", now);
        q.add_or_update(pod("b", 0));
        q.move_unschedulable(now);
        assert_eq!(drain(&mut q, now + MAX_BACKOFF), ["b"]);
    }
}
