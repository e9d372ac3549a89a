//! What can go wrong in the plugin host.

use std::fmt;

/// How a plugin call (or a load) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bytes are not a valid component, or it could not be compiled.
    Compile,
    /// The component's imports or exports don't match the world.
    Link,
    /// The call ran past its deadline (epoch interruption).
    Timeout,
    /// The instance tried to grow its memory past the cap.
    MemoryLimit,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The guest trapped (a panic, `unreachable`, a bad memory access, ...).
    Trap,
    /// The plugin answered, but the answer breaks the interface's rules (wrong length, score
    /// out of range, unknown reason code).
    InvalidResult,
    /// The plugin refused its configuration at `init`.
    Init,
    /// The instance trapped before and was not re-made.
    Poisoned,
}

impl ErrorKind {
    /// A short, stable name for metrics and conditions.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Compile => "compile",
            ErrorKind::Link => "link",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::OutOfFuel => "out_of_fuel",
            ErrorKind::Trap => "trap",
            ErrorKind::InvalidResult => "invalid_result",
            ErrorKind::Init => "init",
            ErrorKind::Poisoned => "poisoned",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Compile => "is not a valid component",
            ErrorKind::Link => "does not match the scheduler-plugin world",
            ErrorKind::Timeout => "ran past its deadline",
            ErrorKind::MemoryLimit => "hit its memory limit",
            ErrorKind::OutOfFuel => "ran out of fuel",
            ErrorKind::Trap => "trapped",
            ErrorKind::InvalidResult => "returned an invalid result",
            ErrorKind::Init => "refused its configuration",
            ErrorKind::Poisoned => "is unusable after an earlier failure",
        })
    }
}

/// A plugin failed. `detail` says what exactly: the guest's panic message, the missing
/// export, the out-of-range score. (wasmtime's error types never leave this crate.)
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin:?}: {export} {kind}: {detail}")]
pub struct PluginError {
    /// The plugin's name.
    pub plugin: String,
    /// The export being called (`filter`), or the load step (`compile`, `instantiate`).
    pub export: &'static str,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub detail: String,
}

/// The host could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// wasmtime refused the engine configuration.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    /// The compile cache directory could not be made.
    #[error("cannot create the plugin compile cache {path}")]
    CacheDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
