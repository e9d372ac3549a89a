//! The redb store against the `Storage` contract.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use skiff_store::{Config, Error, EventType, ListOptions, Preconditions, RedbStore, Storage};

fn object(name: &str, uid: &str) -> Value {
    json!({"metadata": {"name": name, "uid": uid}, "data": {"n": name}})
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(Config::new(dir.path().join("state.redb"))).expect("store opens")
}

fn rv(data: &[u8]) -> String {
    let v: Value = serde_json::from_slice(data).unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn writes_get_consecutive_revisions_stamped_into_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = store.create("t/a".into(), object("a", "1")).await.unwrap();
    let b = store.create("t/b".into(), object("b", "2")).await.unwrap();
    assert_eq!((a.revision, b.revision), (1, 2));
    assert_eq!(rv(&b.data), "2");
    let got = store.get("t/b").await.unwrap().unwrap();
    assert_eq!(got, b);
    assert_eq!(store.revision(), 2);
}

#[tokio::test]
async fn create_of_a_taken_key_is_already_exists_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.create("t/a".into(), object("a", "1")).await.unwrap();
    let err = store
        .create("t/a".into(), object("a", "2"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(store.revision(), 1);
    let got = store.get("t/a").await.unwrap().unwrap().to_value().unwrap();
    assert_eq!(got["metadata"]["uid"], "1");
}

#[tokio::test]
async fn updates_and_deletes_check_revision_and_uid_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = store.create("t/a".into(), object("a", "u1")).await.unwrap();
    let stale = Preconditions {
        revision: Some(a.revision + 5),
        uid: None,
    };
    let err = store
        .update("t/a".into(), object("a", "u1"), stale)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RevisionMismatch {
                expected: 6,
                actual: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let wrong_uid = Preconditions {
        revision: None,
        uid: Some("other".into()),
    };
    let err = store.delete("t/a".into(), wrong_uid).await.unwrap_err();
    assert!(matches!(err, Error::UidMismatch { .. }), "{err:?}");
    let right = Preconditions {
        revision: Some(a.revision),
        uid: Some("u1".into()),
    };
    let updated = store
        .update("t/a".into(), object("a", "u1"), right)
        .await
        .unwrap();
    assert_eq!(updated.revision, 2);
    let deleted = store
        .delete("t/a".into(), Preconditions::default())
        .await
        .unwrap();
    assert_eq!(deleted.revision, 3);
    assert_eq!(
        rv(&deleted.data),
        "3",
        "a deleted object carries the deletion revision"
    );
    assert!(store.get("t/a").await.unwrap().is_none());
    let err = store
        .delete("t/a".into(), Preconditions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    let err = store
        .update("t/a".into(), object("a", "u1"), Preconditions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
}

#[tokio::test]
async fn lists_page_by_key_within_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for name in ["c", "a", "b", "d"] {
        store
            .create(format!("t/x/{name}"), object(name, name))
            .await
            .unwrap();
    }
    store
        .create("t/y/z".into(), object("z", "z"))
        .await
        .unwrap();
    store
        .create("t/xx".into(), object("xx", "xx"))
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .list(ListOptions {
                prefix: "t/x/".into(),
                limit: 3,
                start_after: start_after.clone(),
                revision: None,
            })
            .await
            .unwrap();
        assert_eq!(page.revision, 6);
        names.extend(page.items.iter().map(|i| i.key.clone()));
        if !page.more {
            break;
        }
        start_after = page.items.last().map(|i| i.key.clone());
    }
    assert_eq!(names, ["t/x/a", "t/x/b", "t/x/c", "t/x/d"]);
}

#[tokio::test]
async fn lists_at_an_older_revision_see_the_state_of_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.create("t/a".into(), object("a", "a1")).await.unwrap(); // 1
    store.create("t/b".into(), object("b", "b1")).await.unwrap(); // 2
    let at = store.revision();
    store
        .update("t/a".into(), object("a", "a2"), Preconditions::default())
        .await
        .unwrap(); // 3
    store
        .delete("t/b".into(), Preconditions::default())
        .await
        .unwrap(); // 4
    store.create("t/c".into(), object("c", "c1")).await.unwrap(); // 5
    let then = store
        .list(ListOptions {
            prefix: "t/".into(),
            revision: Some(at),
            ..Default::default()
        })
        .await
        .unwrap();
    let seen: Vec<(String, u64, Value)> = then
        .items
        .iter()
        .map(|i| {
            (
                i.key.clone(),
                i.revision,
                i.to_value().unwrap()["metadata"]["uid"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("t/a".into(), 1, json!("a1")),
            ("t/b".into(), 2, json!("b1"))
        ]
    );
    // Paging at the older revision continues at that revision.
    let first = store
        .list(ListOptions {
            prefix: "t/".into(),
            revision: Some(at),
            limit: 1,
            start_after: None,
        })
        .await
        .unwrap();
    assert!(first.more);
    let second = store
        .list(ListOptions {
            prefix: "t/".into(),
            revision: Some(at),
            limit: 1,
            start_after: Some("t/a".into()),
        })
        .await
        .unwrap();
    assert_eq!(second.items[0].key, "t/b");
    assert!(!second.more);
    let err = store
        .list(ListOptions {
            prefix: "t/".into(),
            revision: Some(99),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FutureRevision { .. }));
}

#[tokio::test]
async fn watch_replays_in_order_from_a_revision_and_follows_live_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.create("t/a".into(), object("a", "a")).await.unwrap(); // 1
    store
        .create("u/skip".into(), object("s", "s"))
        .await
        .unwrap(); // 2
    store
        .update("t/a".into(), object("a", "a"), Preconditions::default())
        .await
        .unwrap(); // 3
    let mut watch = store.watch("t/".into(), 1).unwrap();
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.revision, e.kind), (3, EventType::Modified));
    assert_eq!(e.prev.as_ref().unwrap().revision, 1);
    assert_eq!(watch.progress(), 3);
    store
        .delete("t/a".into(), Preconditions::default())
        .await
        .unwrap(); // 4
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.revision, e.kind), (4, EventType::Deleted));
    assert_eq!(rv(&e.object), "4");
    assert_eq!(e.object_value().unwrap()["metadata"]["name"], "a");
}

#[tokio::test]
async fn watch_resumes_from_history_after_reopen_and_beyond_the_memory_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(Config::new(&path)).unwrap();
        for i in 0..50 {
            store
                .create(format!("t/{i:03}"), object("x", "u"))
                .await
                .unwrap();
        }
    }
    let mut config = Config::new(&path);
    config.watch_cache_events = 4;
    let store = RedbStore::open(config).unwrap();
    assert_eq!(store.revision(), 50);
    let mut watch = store.watch("t/".into(), 10).unwrap();
    for i in 0..10 {
        store
            .create(format!("t/new{i}"), object("y", "u"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        seen.push(watch.next().await.unwrap().unwrap().revision);
    }
    assert_eq!(seen, (11..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn compaction_keeps_a_bounded_history_and_old_revisions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state.redb"));
    config.history_revisions = 10;
    config.watch_cache_events = 4;
    let store = RedbStore::open(config).unwrap();
    let mut lagging = store.watch("t/".into(), 0).unwrap();
    for i in 0..40 {
        store
            .create(format!("t/{i:03}"), object("x", "u"))
            .await
            .unwrap();
    }
    assert_eq!(store.compacted_revision(), 30);
    let err = store.watch("t/".into(), 5).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Compacted {
                requested: 5,
                compacted: 30
            }
        ),
        "{err:?}"
    );
    // A watch that fell behind the history gets the error once, then ends.
    let first = lagging.next().await.unwrap();
    assert!(matches!(first, Err(Error::Compacted { .. })), "{first:?}");
    assert!(lagging.next().await.is_none());
    // A watch inside the history still replays it.
    let mut ok = store.watch("t/".into(), 30).unwrap();
    assert_eq!(ok.next().await.unwrap().unwrap().revision, 31);
    let err = store
        .list(ListOptions {
            prefix: "t/".into(),
            revision: Some(20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_all_commit_with_dense_unique_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                let s = store
                    .create(format!("t/{w}/{i}"), object("x", "u"))
                    .await
                    .unwrap();
                revs.push(s.revision);
            }
            revs
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for r in t.await.unwrap() {
            assert!(all.insert(r), "revision {r} handed out twice");
        }
    }
    assert_eq!(all.len(), 1280);
    assert_eq!(all.iter().max(), Some(&1280));
}

#[tokio::test]
async fn data_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(Config::new(&path)).unwrap();
        store.create("t/a".into(), object("a", "1")).await.unwrap();
        store.create("t/b".into(), object("b", "2")).await.unwrap();
    }
    let store = RedbStore::open(Config::new(&path)).unwrap();
    assert_eq!(store.revision(), 2);
    let c = store.create("t/c".into(), object("c", "3")).await.unwrap();
    assert_eq!(c.revision, 3);
    assert!(store.get("t/a").await.unwrap().is_some());
}

#[tokio::test]
async fn closing_the_store_ends_watches_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut watch = store.watch("t/".into(), 0).unwrap();
    let waiter = tokio::spawn(async move { watch.next().await.is_none() });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.close();
    assert!(waiter.await.unwrap(), "watch ended");
    let err = store
        .create("t/a".into(), object("a", "1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed));
}

#[tokio::test]
async fn reopening_with_a_shorter_history_compacts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(Config::new(&path)).unwrap();
        for i in 0..30 {
            store
                .create(format!("t/{i:03}"), object("x", "u"))
                .await
                .unwrap();
        }
        assert_eq!(store.compacted_revision(), 0);
    }
    let mut config = Config::new(&path);
    config.history_revisions = 5;
    let store = RedbStore::open(config).unwrap();
    assert_eq!(store.compacted_revision(), 25);
    assert!(matches!(
        store.watch("t/".into(), 10),
        Err(Error::Compacted { .. })
    ));
    assert_eq!(
        store
            .watch("t/".into(), 26)
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap()
            .revision,
        27
    );
}
