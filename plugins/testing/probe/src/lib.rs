//! A plugin for skiff's own tests: it filters or prefers nodes by a label, and on request
//! misbehaves in the ways the sandbox must survive.
//!
//! Config: `{"requireLabel": "pool=a", "preferLabel": "disk=ssd", "fault": "loop",
//! "faultIn": "filter"}`, every key optional. `fault` is `loop` (spin forever), `alloc`
//! (allocate without bound), `trap` (panic) or `reject-init` (refuse the config); `faultIn`
//! is `filter` (default), `score` or `init`.

use serde::Deserialize;
use skiff_plugin_sdk::{LogLevel, NodeInfo, Pod, Reason, SchedulerPlugin, log};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Config {
    require_label: Option<String>,
    prefer_label: Option<String>,
    fault: Option<String>,
    fault_in: Option<String>,
}

struct Probe {
    require: Option<(String, String)>,
    prefer: Option<(String, String)>,
    fault: Option<String>,
    fault_in: String,
}

fn pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("config: {s:?} is not key=value"))
}

fn misbehave(fault: &str) {
    match fault {
        "loop" => loop {
            std::hint::black_box(());
        },
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        "trap" => panic!("probe plugin asked to trap"),
        _ => {}
    }
}

impl Probe {
    fn maybe_fault(&self, at: &str) {
        if self.fault_in == at
            && let Some(fault) = &self.fault
        {
            misbehave(fault);
        }
    }
}

fn has(node: &NodeInfo, (key, value): &(String, String)) -> bool {
    node.node.label(key) == Some(value.as_str())
}

impl SchedulerPlugin for Probe {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if config.fault.as_deref() == Some("reject-init") {
            return Err("probe plugin asked to refuse its config".into());
        }
        let probe = Probe {
            require: config.require_label.as_deref().map(pair).transpose()?,
            prefer: config.prefer_label.as_deref().map(pair).transpose()?,
            fault: config.fault,
            fault_in: config.fault_in.unwrap_or_else(|| "filter".into()),
        };
        probe.maybe_fault("init");
        log(LogLevel::Info, "probe plugin initialised");
        Ok(probe)
    }

    fn reasons(&self) -> Vec<Reason> {
        let label = self
            .require
            .as_ref()
            .map_or_else(String::new, |(k, v)| format!("{k}={v}"));
        vec![Reason {
            message: format!("node(s) didn't have label {label}"),
            unresolvable: true,
        }]
    }

    fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), u16> {
        self.maybe_fault("filter");
        match &self.require {
            Some(want) if !has(node, want) => Err(1),
            _ => Ok(()),
        }
    }

    fn score(&self, _pod: &Pod, node: &NodeInfo) -> i64 {
        self.maybe_fault("score");
        match &self.prefer {
            Some(want) if has(node, want) => 100,
            _ => 0,
        }
    }
}

skiff_plugin_sdk::export_scheduler!(Probe);
