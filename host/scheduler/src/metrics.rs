//! The scheduler's Prometheus metrics, named as kube-scheduler names them so dashboards
//! built for it read ours: `scheduler_schedule_attempts_total{result, profile}` and
//! `scheduler_scheduling_attempt_duration_seconds{result, profile}`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    /// `scheduled`, `unschedulable` or `error`, as in kube-scheduler.
    result: &'static str,
    profile: String,
}

/// The scheduler's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    durations: Family<AttemptLabels, Histogram>,
    /// Every attempt's duration, when asked for: histograms are too coarse for the p99 of a
    /// benchmark.
    samples: Option<Arc<Mutex<Vec<Sample>>>>,
}

/// One attempt's duration, for benchmarks.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall-clock time, as the histogram has it: includes any time the scheduling thread was
    /// not running (another process on the same cores, say).
    pub wall: Duration,
    /// CPU time of the scheduling thread: the cycle's cost alone.
    pub cpu: Duration,
}

/// Times one attempt; reads the thread's CPU clock only when samples are kept.
pub(crate) struct Stopwatch {
    wall: Instant,
    cpu: Option<Duration>,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            // 10 µs .. ~5 s: a cycle over a few nodes to one over thousands with slow plugins.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-5, 2.5, 15))
            }),
            samples: None,
        }
    }
}

/// How a scheduling attempt ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Scheduled,
    Unschedulable,
    Error,
}

impl Metrics {
    /// Metrics that also keep every attempt's duration, for [`Metrics::take_samples`].
    pub fn with_samples() -> Self {
        Metrics {
            samples: Some(Arc::default()),
            ..Default::default()
        }
    }

    /// Registers the metrics (prefixed `scheduler_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("scheduler");
        r.register(
            "schedule_attempts",
            "Scheduling attempts by result and profile",
            self.attempts.clone(),
        );
        r.register(
            "scheduling_attempt_duration_seconds",
            "Duration of a scheduling cycle (filters, scores, reserve; not binding)",
            self.durations.clone(),
        );
    }

    /// Starts timing an attempt.
    pub(crate) fn stopwatch(&self) -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: self.samples.is_some().then(thread_cpu),
        }
    }

    pub(crate) fn attempt(&self, profile: &str, outcome: Outcome, watch: &Stopwatch) {
        let took = watch.wall.elapsed();
        let labels = AttemptLabels {
            result: match outcome {
                Outcome::Scheduled => "scheduled",
                Outcome::Unschedulable => "unschedulable",
                Outcome::Error => "error",
            },
            profile: profile.to_owned(),
        };
        self.attempts.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(samples) = &self.samples {
            let cpu = watch
                .cpu
                .map_or(Duration::ZERO, |c| thread_cpu().saturating_sub(c));
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Sample { wall: took, cpu });
        }
    }

    /// The attempt durations kept since the last call (empty unless made
    /// [`Metrics::with_samples`]).
    pub fn take_samples(&self) -> Vec<Sample> {
        self.samples.as_ref().map_or_else(Vec::new, |s| {
            std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner()))
        })
    }
}
