//! What each plugin instance's store holds: an empty WASI context (no files, no network, no
//! environment), the memory limiter, and a small buffer for the guest's stderr, so a guest
//! panic message can be reported with the trap.

use std::sync::Arc;

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::skiff::plugin::{host, types::LogLevel};

/// How much of a guest's stderr is kept.
const STDERR_BYTES: usize = 8 << 10;
/// Log lines longer than this are cut.
const LOG_LINE_BYTES: usize = 4 << 10;

/// Caps an instance's memory and remembers that it did, so the trap that follows (the
/// guest's allocator aborts) is reported as what it is.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; no sane plugin needs a million.
        Ok(desired <= 1 << 20)
    }
}

/// The data of one instance's store.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) plugin: Arc<str>,
    stderr: MemoryOutputPipe,
}

impl State {
    pub(crate) fn new(plugin: Arc<str>, memory_bytes: usize) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes,
                hit: false,
            },
            plugin,
            stderr,
        }
    }

    /// What the guest last said on stderr: a Rust panic's location and message, or else its
    /// last line.
    pub(crate) fn last_stderr_line(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
            .collect();
        match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(i) => Some(lines[i..lines.len().min(i + 2)].join(" ")),
            None => lines.last().map(|l| (*l).to_owned()),
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: LogLevel, message: String) {
        let mut message = message;
        if message.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => trace!(plugin.name = plugin, "{message}"),
            LogLevel::Debug => debug!(plugin.name = plugin, "{message}"),
            LogLevel::Info => info!(plugin.name = plugin, "{message}"),
            LogLevel::Warn => warn!(plugin.name = plugin, "{message}"),
            LogLevel::Error => error!(plugin.name = plugin, "{message}"),
        }
    }
}

impl crate::bindings::skiff::plugin::types::Host for State {}
