//! skiff's end-to-end tests, in one test binary: a real `skiff server` process per test,
//! the real kubectl, the official Python client and kube-rs.

mod clients;
mod crash;
mod crds;
mod kinds;
mod kubectl;
mod scheduler;
mod seeds;
mod server;
mod watcher;
