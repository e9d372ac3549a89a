//! skiff's controllers: API clients with level-triggered reconcilers that bring the
//! cluster to what its objects ask for, as kube-controller-manager's do.
//!
//! - [`csr`]: approves node agents' CertificateSigningRequests that prove who they are,
//!   and signs approved requests with the cluster CA (kube's csrapproving and
//!   csrsigning controllers).
//! - [`bootstrap`]: what nodes need to join: a bootstrap token and the public
//!   `cluster-info` ConfigMap (kubeadm's bootstrap-token phase).
//!
//! ```no_run
//! # async fn demo(client: kube::Client, ca_cert_pem: String, ca_key_pem: String) {
//! let signer = skiff_controllers::csr::Signer::new(ca_cert_pem, ca_key_pem);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! skiff_controllers::csr::run(client, signer, shutdown).await;
//! # }
//! ```

pub mod bootstrap;
pub mod csr;
