//! The one place that runs `bindgen!` over `wit/`. The generated records (pods, nodes,
//! results) are plain Rust structs and are re-exported; the wasmtime-facing parts stay here.
#![allow(
    missing_docs,
    reason = "the generated glue has undocumented fields; wit/plugin.wit documents the records"
)]

wasmtime::component::bindgen!({
    world: "scheduler-plugin",
    path: "../../wit",
    additional_derives: [PartialEq, Eq],
});
