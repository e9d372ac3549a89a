//! skiff's end-to-end tests, in one test binary: a real `skiff server` process per test,
//! the real kubectl, the official Python client and kube-rs.

mod agent;
mod clients;
mod controllers;
mod crash;
mod crds;
mod join;
mod kinds;
mod kubectl;
mod scheduler;
mod seeds;
mod server;
mod watcher;

/// A kube-rs client for the cluster, from its admin kubeconfig.
pub(crate) async fn client(cluster: &skiff_tests::TestCluster) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}
