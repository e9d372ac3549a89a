//! kube-rs (the Rust client) against skiff: its `watcher`, the reflector behind every Rust
//! controller, lists, watches, survives a server restart, and relists after its
//! resourceVersion has been compacted away (410 Expired).

use std::time::Duration;

use crate::client;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use skiff_tests::TestCluster;
use tokio::sync::mpsc;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}))
        .unwrap()
}

/// What the test sees of the watcher: relists and applied names.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Relist(Vec<String>),
    Apply(String),
    Delete(String),
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the watcher reports within 30 s")
        .expect("the watcher runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_survives_restart_and_compaction() {
    let quiet = ["--bookmark-interval-seconds", "600"];
    let mut cluster = TestCluster::start_with(&quiet).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&cluster).await, "default");
    api.create(&PostParams::default(), &cm("a")).await.unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let watched = api.clone();
    let task = tokio::spawn(async move {
        let stream =
            watcher::watcher(watched, watcher::Config::default().labels("!skip")).default_backoff();
        futures::pin_mut!(stream);
        let mut relist = Vec::new();
        while let Some(event) = stream.next().await {
            let seen = match event {
                Ok(Event::Init) => {
                    relist.clear();
                    continue;
                }
                Ok(Event::InitApply(o)) => {
                    relist.push(o.metadata.name.unwrap_or_default());
                    continue;
                }
                Ok(Event::InitDone) => Seen::Relist(std::mem::take(&mut relist)),
                Ok(Event::Apply(o)) => Seen::Apply(o.metadata.name.unwrap_or_default()),
                Ok(Event::Delete(o)) => Seen::Delete(o.metadata.name.unwrap_or_default()),
                // Connection errors while the server restarts: the backoff retries.
                Err(_) => continue,
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });

    assert_eq!(next(&mut rx).await, Seen::Relist(vec!["a".into()]));
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    assert_eq!(next(&mut rx).await, Seen::Apply("b".into()));

    // A restart: the watcher reconnects and carries on from where it was.
    tokio::task::block_in_place(|| cluster.restart()).unwrap();
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    loop {
        match next(&mut rx).await {
            Seen::Apply(name) if name == "c" => break,
            Seen::Relist(names) if names.contains(&"c".to_owned()) => break,
            _ => {}
        }
    }

    // Writes the watcher does not see (a label it excludes) move the revision on...
    let mut skipped = cm("skipped");
    for i in 0..20 {
        skipped.metadata.name = Some(format!("skipped-{i}"));
        skipped.metadata.labels = Some([("skip".to_owned(), "yes".to_owned())].into());
        api.create(&PostParams::default(), &skipped).await.unwrap();
    }
    // ...and a restart with a 5-revision history compacts the watcher's revision away: its
    // resumed watch gets 410 Expired, and it relists.
    tokio::task::block_in_place(|| {
        cluster.stop()?;
        cluster.start_again_with(&[
            "--bookmark-interval-seconds",
            "600",
            "--history-revisions",
            "5",
        ])
    })
    .unwrap();
    let relisted = loop {
        if let Seen::Relist(names) = next(&mut rx).await {
            break names;
        }
    };
    assert_eq!(relisted, ["a", "b", "c"]);
    api.delete("a", &Default::default()).await.unwrap();
    assert_eq!(next(&mut rx).await, Seen::Delete("a".into()));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_with_selectors_see_objects_enter_and_leave() {
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
    let cluster = TestCluster::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&cluster).await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(
            &WatchParams::default()
                .labels("app=web")
                .fields("metadata.name=x"),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let mut x = cm("x");
    x.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    api.create(&PostParams::default(), &x).await.unwrap();
    api.create(&PostParams::default(), &cm("not-x"))
        .await
        .unwrap();
    let relabel = |v: &str| Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": v}}}));
    api.patch("x", &PatchParams::default(), &relabel("db"))
        .await
        .unwrap();
    api.patch("x", &PatchParams::default(), &relabel("db2"))
        .await
        .unwrap();
    api.patch("x", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap();
    api.delete("x", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the watch is open")
            .unwrap();
        kinds.push(match event {
            WatchEvent::Added(o) => {
                format!("ADDED {}", o.metadata.labels.unwrap_or_default()["app"])
            }
            WatchEvent::Modified(_) => "MODIFIED".into(),
            WatchEvent::Deleted(o) => {
                format!("DELETED {}", o.metadata.labels.unwrap_or_default()["app"])
            }
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("{e:?}"),
        });
    }
    // An object leaving the selector is DELETED in its last matching state (app=web), as
    // Kubernetes' watch sends it.
    assert_eq!(
        kinds,
        ["ADDED web", "DELETED web", "ADDED web", "DELETED web"]
    );

    // deletecollection removes exactly what the selector picks.
    for name in ["keep", "drop-1", "drop-2"] {
        let mut c = cm(name);
        if name.starts_with("drop") {
            c.metadata.labels = Some([("drop".to_owned(), "yes".to_owned())].into());
        }
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("drop=yes"),
    )
    .await
    .unwrap();
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        left.contains(&"keep".to_owned()) && !left.iter().any(|n| n.starts_with("drop")),
        "{left:?}"
    );
}
