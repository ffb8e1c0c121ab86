use super::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use std::os::unix::fs::PermissionsExt;

fn pod(uid: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            uid: Some(uid.into()),
            name: Some(name.into()),
            namespace: Some("default".into()),
            resource_version: Some("42".into()),
            ..Default::default()
        },
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running() -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn pods_and_their_node_status_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.put_status("u1", &running()).await;
    store.put_pod(PodSource::File, &pod("u2", "b")).await;
    store.flush().await;
    drop(store);

    let store = LocalStore::open(dir.path()).unwrap();
    let pods = store.pods().await.unwrap();
    assert_eq!(pods.len(), 2);
    let a = &pods[0];
    assert_eq!((a.uid.as_str(), &a.source), ("u1", &PodSource::Api));
    assert_eq!(a.pod.metadata.resource_version.as_deref(), Some("42"));
    assert!(
        a.pod.status.is_none(),
        "the object is stored without the API's status"
    );
    assert_eq!(
        a.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert_eq!(pods[1].source, PodSource::File);
    assert!(pods[1].status.is_none());
}

#[tokio::test]
async fn objects_go_with_the_last_pod_that_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let key = ObjectKey::config_map("default", "settings");
    let map = ConfigMap {
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.put_pod(PodSource::Api, &pod("u2", "b")).await;
    store.put_object("u1", &key, &map).await;
    store.put_object("u2", &key, &map).await;
    store.remove_pod("u1").await;
    store.flush().await;
    let kept: Option<ConfigMap> = store.object(&key).await;
    assert_eq!(kept, Some(map), "pod b still reads it");
    store.remove_pod("u2").await;
    store.flush().await;
    assert_eq!(store.object::<ConfigMap>(&key).await, None);
    assert!(store.pods().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_object_the_api_says_is_gone_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let key = ObjectKey::secret("default", "creds");
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.put_object("u1", &key, &ConfigMap::default()).await;
    store.forget_object("u1", &key).await;
    store.flush().await;
    assert_eq!(store.object::<ConfigMap>(&key).await, None);
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_and_replaced_by_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let store = LocalStore::open(dir.path()).expect("never fails on a corrupt file");
    assert!(store.pods().await.unwrap().is_empty());
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store.db.corrupt-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the bad file is kept for a person to look at"
    );
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.flush().await;
    assert_eq!(store.pods().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_store_file_is_private_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.flush().await;
    for file in [STORE_FILE, "store.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is mode {mode:o}");
    }
}

#[tokio::test]
async fn another_process_reads_the_pods_while_the_agent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    assert!(read_pods(dir.path()).unwrap().is_empty());
    store.put_pod(PodSource::Api, &pod("u1", "a")).await;
    store.put_status("u1", &running()).await;
    store.flush().await;
    let seen = read_pods(dir.path()).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
}

#[tokio::test]
async fn a_burst_of_writes_is_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    for i in 0..2000 {
        store
            .put_pod(PodSource::Api, &pod(&format!("u{i:04}"), "p"))
            .await;
    }
    store.flush().await;
    assert_eq!(store.pods().await.unwrap().len(), 2000);
}

#[test]
fn a_missing_store_reads_as_no_pods() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_pods(dir.path()).unwrap().is_empty());
    assert!(
        !dir.path().join(STORE_FILE).exists(),
        "reading never creates it"
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_now_is_an_error_and_stays_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    // Something other than damage stands in the store's way (here a directory where the
    // file should be; a full disk or an I/O error in the field).
    let path = dir.path().join(STORE_FILE);
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();

    assert!(LocalStore::open(dir.path()).is_err());

    assert!(path.join("keep").exists(), "nothing was moved aside");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [STORE_FILE]);
}

#[test]
fn only_damage_and_another_schema_mean_the_file_is_not_a_store() {
    let path = PathBuf::from("/x/store.db");
    let failure = |code| {
        sqlite(
            &path,
            "open",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        )
    };
    for code in [rusqlite::ffi::SQLITE_CORRUPT, rusqlite::ffi::SQLITE_NOTADB] {
        assert!(failure(code).means_not_a_store(), "{code}");
    }
    assert!(
        StoreError::Schema {
            path: path.clone(),
            found: 7
        }
        .means_not_a_store()
    );
    for code in [
        rusqlite::ffi::SQLITE_FULL,
        rusqlite::ffi::SQLITE_IOERR,
        rusqlite::ffi::SQLITE_CANTOPEN,
        rusqlite::ffi::SQLITE_READONLY,
        rusqlite::ffi::SQLITE_BUSY,
    ] {
        assert!(!failure(code).means_not_a_store(), "{code}");
    }
    let io = StoreError::Io {
        path,
        operation: "create",
        source: std::io::Error::other("no space left on device"),
    };
    assert!(!io.means_not_a_store());
}

#[tokio::test]
async fn a_store_of_another_schema_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let other = Connection::open(dir.path().join(STORE_FILE)).unwrap();
    other
        .execute_batch("CREATE TABLE pods (uid TEXT); PRAGMA user_version = 99;")
        .unwrap();
    drop(other);

    let store = LocalStore::open(dir.path()).expect("another schema is replaced");

    assert!(store.pods().await.unwrap().is_empty());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("store.db.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
}
