//! Durability: a server killed with SIGKILL in the middle of a write storm loses nothing it
//! acknowledged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use skiff_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9() {
    let mut cluster = TestCluster::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&cluster).await, "default");
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..32 {
        let api = api.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: at most 10,000 writes each, and it stops at the first failure.
            for i in 0..10_000 {
                let name = format!("storm-{w}-{i}");
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name}, "data": {"writer": w.to_string(), "i": i.to_string()}
                }))
                .unwrap();
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().insert(name);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| cluster.kill9()).unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "the storm wrote only {} objects",
        acknowledged.len()
    );

    tokio::task::block_in_place(|| cluster.start_again()).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&cluster).await, "default");
    let stored: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with("storm-"))
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // The store keeps working after the crash.
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "after"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}
