//! The PostgreSQL store's schema, migrations and resources, on the real PostgreSQL
//! (127.0.0.1:5432, user postgres, database `test`), one fresh schema per test, dropped at the
//! end. Resource calls are made on the embedded engine (in memory) too, with the same clock,
//! and the answers — values and errors, messages included — must be identical.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge_core::{
    Clock, Error, ManualClock, PageRequest, ProjectId, Snapshot, SnapshotName, Store, Subscription,
    SubscriptionName, Topic, TopicName,
};
use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
use converge_store::postgres::schema::{self, MIGRATIONS, Migration};
use converge_store::postgres::{PostgresError, PostgresOptions, PostgresStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own for one test, dropped when the test ends (also when it fails).
struct TestSchema(String);

impl TestSchema {
    fn new() -> Self {
        Self(format!("t_{}", uuid::Uuid::new_v4().simple()))
    }

    fn options(&self, clock: &ManualClock) -> PostgresOptions {
        PostgresOptions {
            schema: self.0.clone(),
            max_connections: 4,
            clock: Arc::new(clock.clone()),
            ..PostgresOptions::default()
        }
    }

    /// A single connection working in the schema.
    async fn connection(&self) -> sqlx::PgConnection {
        URL.parse::<PgConnectOptions>()
            .unwrap()
            .options([("search_path", self.0.as_str())])
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread
        // with a runtime of its own. This blocks the test's runtime, so nothing of
        // the store may still hold a lock in the schema (the store rolls back explicitly).
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(URL).await?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {dropped:?}", self.0);
        }
    }
}

/// A PostgreSQL store and an in-memory embedded store on one manual clock.
struct Both {
    pg: PostgresStore,
    em: EmbeddedStore,
    clock: ManualClock,
    _schema: TestSchema,
}

async fn both() -> Both {
    // Whole seconds: PostgreSQL keeps microseconds, the embedded engine nanoseconds.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let schema = TestSchema::new();
    let pg = PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap();
    let em = EmbeddedStore::open(EmbeddedOptions::default(), Arc::new(clock.clone())).unwrap();
    Both {
        pg,
        em,
        clock,
        _schema: schema,
    }
}

/// Runs the same call on both stores and asserts that the answers are equal; returns it.
macro_rules! same {
    ($both:expr, |$s:ident| $call:expr) => {{
        let pg = {
            let $s = &$both.pg;
            $call.await
        };
        let em = {
            let $s = &$both.em;
            $call.await
        };
        assert_eq!(
            pg,
            em,
            "postgres and embedded differ on `{}`",
            stringify!($call)
        );
        pg
    }};
}

fn project() -> ProjectId {
    ProjectId::new("p").unwrap()
}

fn topic_name(id: &str) -> TopicName {
    // Resource ids need at least three characters.
    TopicName::new(project(), format!("id-{id}")).unwrap()
}

fn sub_name(id: &str) -> SubscriptionName {
    // Resource ids need at least three characters.
    SubscriptionName::new(project(), format!("id-{id}")).unwrap()
}

fn snapshot_name(id: &str) -> SnapshotName {
    // Resource ids need at least three characters.
    SnapshotName::new(project(), format!("id-{id}")).unwrap()
}

fn topic(id: &str) -> Topic {
    Topic {
        name: topic_name(id),
        labels: HashMap::new(),
        message_retention: None,
        dedup_window: Duration::from_secs(3600),
        resource: Bytes::new(),
    }
}

fn subscription(id: &str, topic: &str) -> Subscription {
    Subscription {
        name: sub_name(id),
        topic: Some(topic_name(topic)),
        ack_deadline: Duration::from_secs(10),
        retain_acked_messages: false,
        message_retention: Duration::from_secs(7 * 24 * 3600),
        enable_message_ordering: false,
        exactly_once: false,
        filter: String::new(),
        dead_letter_policy: None,
        retry: None,
        expiration_ttl: None,
        detached: false,
        labels: HashMap::new(),
        created: SystemTime::UNIX_EPOCH,
        resource: Bytes::new(),
    }
}

fn snapshot(id: &str) -> Snapshot {
    Snapshot {
        name: snapshot_name(id),
        topic: topic_name("placeholder"),
        expire_time: SystemTime::UNIX_EPOCH,
        labels: HashMap::new(),
        resource: Bytes::new(),
    }
}

fn page(size: usize, token: &str) -> PageRequest {
    PageRequest {
        page_size: size,
        page_token: token.to_string(),
    }
}

async fn recorded_versions(schema: &TestSchema) -> Vec<(i32, String)> {
    let mut conn = schema.connection().await;
    sqlx::query("SELECT version, checksum FROM converge_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("version"), r.get("checksum")))
        .collect()
}

#[tokio::test]
async fn concurrent_connects_migrate_once_and_reconnecting_changes_nothing() {
    let schema = TestSchema::new();
    let clock = ManualClock::starting_now();
    // All five start before any is awaited: they race for the migration lock.
    let connects: Vec<_> = (0..5)
        .map(|_| {
            let options = schema.options(&clock);
            tokio::spawn(async move { PostgresStore::connect(URL, options).await })
        })
        .collect();
    let mut stores = Vec::new();
    for connect in connects {
        stores.push(connect.await.unwrap().unwrap());
    }
    for store in &stores {
        assert_eq!(store.schema_version(), schema::current_version());
        assert_eq!(store.schema(), schema.0);
    }
    let expected: Vec<(i32, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.checksum()))
        .collect();
    assert_eq!(recorded_versions(&schema).await, expected);

    // The five stores share one schema: what one writes, another reads.
    stores[0].create_topic(topic("shared")).await.unwrap();
    assert_eq!(
        stores[4].get_topic(&topic_name("shared")).await.unwrap(),
        topic("shared")
    );

    // Connecting again (a restart) applies nothing and keeps the data.
    let again = PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap();
    assert_eq!(recorded_versions(&schema).await, expected);
    assert!(again.get_topic(&topic_name("shared")).await.is_ok());
    for store in stores {
        store.close().await;
    }
}

#[tokio::test]
async fn the_schema_comes_from_the_url_when_it_names_one() {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(
        &format!("{URL}?schema={}", schema.0),
        PostgresOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(store.schema(), schema.0);
    assert_eq!(recorded_versions(&schema).await.len(), MIGRATIONS.len());

    let refused = PostgresStore::connect(
        URL,
        PostgresOptions {
            schema: "Not-A-Schema".into(),
            ..PostgresOptions::default()
        },
    )
    .await;
    assert!(matches!(refused, Err(PostgresError::InvalidSchemaName(_))));
}

#[tokio::test]
async fn a_schema_newer_than_the_code_is_refused() {
    let schema = TestSchema::new();
    let clock = ManualClock::starting_now();
    // A newer converge migrated this schema to version 2.
    let mut newer = MIGRATIONS.to_vec();
    newer.push(Migration {
        version: MIGRATIONS.len() as i32 + 1,
        name: "from the future",
        sql: "CREATE TABLE future (x int)",
    });
    let mut conn = schema.connection().await;
    let version = schema::migrate_with(&mut conn, &schema.0, &newer)
        .await
        .unwrap();
    assert_eq!(version, newer.len() as i32);

    let refused = PostgresStore::connect(URL, schema.options(&clock)).await;
    match refused {
        Err(PostgresError::SchemaTooNew { found, known, .. }) => {
            assert_eq!(found, newer.len() as i32);
            assert_eq!(known, schema::current_version());
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // As a store error, it is a failed precondition naming both versions.
    let err: Error = PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap_err()
        .into();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("newer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let schema = TestSchema::new();
    let clock = ManualClock::starting_now();
    PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap()
        .close()
        .await;
    let mut conn = schema.connection().await;
    sqlx::query("UPDATE converge_migrations SET checksum = 'crc32:00000000' WHERE version = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = PostgresStore::connect(URL, schema.options(&clock)).await;
    assert!(
        matches!(
            refused,
            Err(PostgresError::ChecksumMismatch { version: 1, .. })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let schema = TestSchema::new();
    let mut broken = MIGRATIONS.to_vec();
    broken.push(Migration {
        version: MIGRATIONS.len() as i32 + 1,
        name: "half done",
        sql: "CREATE TABLE half (x int); SELECT no_such_function();",
    });
    let mut conn = schema.connection().await;
    let failed = schema::migrate_with(&mut conn, &schema.0, &broken).await;
    assert!(
        matches!(
            failed,
            Err(PostgresError::MigrationFailed { version, .. }) if version == broken.len() as i32
        ),
        "{failed:?}"
    );
    // The earlier migrations stay applied; the broken one left neither its row nor its table.
    assert_eq!(recorded_versions(&schema).await.len(), MIGRATIONS.len());
    let half: Option<String> = sqlx::query_scalar("SELECT to_regclass('half')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(half, None);
}

#[tokio::test]
async fn topics_behave_as_in_the_embedded_engine() {
    let b = both().await;
    let mut labelled = topic("a");
    labelled.labels.insert("team".into(), "x".into());
    labelled.message_retention = Some(Duration::from_secs(600));
    labelled.resource = Bytes::from_static(b"api bytes");
    same!(b, |s| s.create_topic(labelled.clone())).unwrap();
    let exists = same!(b, |s| s.create_topic(topic("a")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("a"))).unwrap(),
        labelled
    );
    let missing = same!(b, |s| s.get_topic(&topic_name("nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let mut changed = labelled.clone();
    changed.dedup_window = Duration::from_secs(60);
    changed.labels.clear();
    same!(b, |s| s.update_topic(changed.clone())).unwrap();
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("a"))).unwrap(),
        changed
    );
    let missing = same!(b, |s| s.update_topic(topic("nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Paging over five topics of project p, and one of another project that must not show.
    for id in ["b", "c", "d", "e"] {
        same!(b, |s| s.create_topic(topic(id))).unwrap();
    }
    let other = Topic {
        name: TopicName::new(ProjectId::new("q").unwrap(), "id-z").unwrap(),
        ..topic("z")
    };
    same!(b, |s| s.create_topic(other.clone())).unwrap();
    let first = same!(b, |s| s.list_topics(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.next_page_token, topic_name("b").to_string());
    let second = same!(b, |s| s
        .list_topics(&project(), page(2, &first.next_page_token)))
    .unwrap();
    let third = same!(b, |s| s
        .list_topics(&project(), page(2, &second.next_page_token)))
    .unwrap();
    assert_eq!(third.items.len(), 1);
    assert_eq!(third.next_page_token, "");
    let all = same!(b, |s| s.list_topics(&project(), page(0, ""))).unwrap();
    let names: Vec<TopicName> = all.items.into_iter().map(|t| t.name).collect();
    let expected: Vec<TopicName> = ["a", "b", "c", "d", "e"].map(topic_name).into();
    assert_eq!(names, expected);

    // Deleting frees the name: a new topic of the same name is a different topic.
    same!(b, |s| s.delete_topic(&topic_name("a"))).unwrap();
    let gone = same!(b, |s| s.delete_topic(&topic_name("a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_topic(&topic_name("a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    same!(b, |s| s.create_topic(topic("a"))).unwrap();
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("a"))).unwrap(),
        topic("a")
    );
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM topics WHERE name = $1")
        .bind(topic_name("a").to_string())
        .fetch_one(b.pg.pool())
        .await
        .unwrap();
    assert_eq!(live, 2, "the deleted topic's row stays for its log");
}

#[tokio::test]
async fn subscriptions_behave_as_in_the_embedded_engine() {
    let b = both().await;
    same!(b, |s| s.create_topic(topic("t"))).unwrap();
    let created = same!(b, |s| s.create_subscription(subscription("s1", "t"))).unwrap();
    assert_eq!(
        created.created,
        b.clock.now(),
        "the store sets the creation time"
    );
    let exists = same!(b, |s| s.create_subscription(subscription("s1", "t")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    let no_topic = same!(b, |s| s.create_subscription(subscription("s2", "nope")));
    assert!(matches!(no_topic, Err(Error::NotFound(_))), "{no_topic:?}");
    let topicless = Subscription {
        topic: None,
        ..subscription("s2", "t")
    };
    let topicless = same!(b, |s| s.create_subscription(topicless.clone()));
    assert!(
        matches!(topicless, Err(Error::InvalidArgument(_))),
        "{topicless:?}"
    );
    let bad_filter = Subscription {
        filter: "attributes.x = ".into(),
        ..subscription("s2", "t")
    };
    let bad_filter = same!(b, |s| s.create_subscription(bad_filter.clone()));
    assert!(
        matches!(bad_filter, Err(Error::InvalidArgument(_))),
        "{bad_filter:?}"
    );

    b.clock.advance(Duration::from_secs(5));
    let filtered = Subscription {
        filter: "attributes.kind = \"a\"".into(),
        enable_message_ordering: true,
        ..subscription("s2", "t")
    };
    same!(b, |s| s.create_subscription(filtered.clone())).unwrap();
    assert_eq!(
        same!(b, |s| s.get_subscription(&sub_name("s2")))
            .unwrap()
            .filter,
        filtered.filter
    );

    // Updates keep what the store owns, and refuse a new filter.
    let mut update = subscription("s1", "other");
    update.ack_deadline = Duration::from_secs(42);
    update.detached = true;
    update.created = SystemTime::UNIX_EPOCH;
    let updated = same!(b, |s| s.update_subscription(update.clone())).unwrap();
    assert_eq!(updated.ack_deadline, Duration::from_secs(42));
    assert_eq!(updated.topic, Some(topic_name("t")));
    assert!(!updated.detached);
    assert_eq!(updated.created, created.created);
    assert_eq!(
        same!(b, |s| s.get_subscription(&sub_name("s1"))).unwrap(),
        updated
    );
    let new_filter = Subscription {
        filter: "attributes.x = \"1\"".into(),
        ..subscription("s1", "t")
    };
    let refused = same!(b, |s| s.update_subscription(new_filter.clone()));
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    let missing = same!(b, |s| s.update_subscription(subscription("nope", "t")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Lists.
    same!(b, |s| s.create_subscription(subscription("s3", "t"))).unwrap();
    let first = same!(b, |s| s.list_subscriptions(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = same!(b, |s| s
        .list_subscriptions(&project(), page(2, &first.next_page_token)))
    .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_page_token, "");
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("t"), page(0, "")))
    .unwrap();
    assert_eq!(
        of_topic.items,
        [sub_name("s1"), sub_name("s2"), sub_name("s3")]
    );
    let missing = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("nope"), page(0, "")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Detaching: idempotent, kept in the settings, gone from the topic's list.
    same!(b, |s| s.detach_subscription(&sub_name("s3"))).unwrap();
    same!(b, |s| s.detach_subscription(&sub_name("s3"))).unwrap();
    let detached = same!(b, |s| s.get_subscription(&sub_name("s3"))).unwrap();
    assert!(detached.detached);
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("t"), page(0, "")))
    .unwrap();
    assert_eq!(of_topic.items, [sub_name("s1"), sub_name("s2")]);
    let missing = same!(b, |s| s.detach_subscription(&sub_name("nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Deleting the topic leaves the subscriptions, attached to no topic, also when a new
    // topic of the same name appears.
    same!(b, |s| s.delete_topic(&topic_name("t"))).unwrap();
    same!(b, |s| s.create_topic(topic("t"))).unwrap();
    let orphan = same!(b, |s| s.get_subscription(&sub_name("s1"))).unwrap();
    assert_eq!(orphan.topic, None);
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("t"), page(0, "")))
    .unwrap();
    assert!(of_topic.items.is_empty());

    same!(b, |s| s.delete_subscription(&sub_name("s1"))).unwrap();
    let gone = same!(b, |s| s.delete_subscription(&sub_name("s1")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_subscription(&sub_name("s1")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    // The name can be used again.
    same!(b, |s| s.create_subscription(subscription("s1", "t"))).unwrap();
    let cursors: i64 = sqlx::query_scalar("SELECT count(*) FROM sub_cursors")
        .fetch_one(b.pg.pool())
        .await
        .unwrap();
    assert_eq!(cursors, 3, "one cursor per subscription, deleted with it");
}

#[tokio::test]
async fn snapshot_records_behave_as_in_the_embedded_engine() {
    let b = both().await;
    same!(b, |s| s.create_topic(topic("t"))).unwrap();
    same!(b, |s| s.create_topic(topic("u"))).unwrap();
    same!(b, |s| s.create_subscription(subscription("s", "t"))).unwrap();
    same!(b, |s| s.create_subscription(subscription("su", "u"))).unwrap();

    let created = same!(b, |s| s.create_snapshot(snapshot("a"), &sub_name("s"))).unwrap();
    assert_eq!(created.topic, topic_name("t"));
    assert_eq!(
        created.expire_time,
        b.clock.now() + converge_core::snapshot::MAX_SNAPSHOT_LIFETIME,
        "nothing unacknowledged: seven days from now"
    );
    let exists = same!(b, |s| s.create_snapshot(snapshot("a"), &sub_name("s")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    let no_sub = same!(b, |s| s.create_snapshot(snapshot("b"), &sub_name("nope")));
    assert!(matches!(no_sub, Err(Error::NotFound(_))), "{no_sub:?}");
    same!(b, |s| s.create_snapshot(snapshot("c"), &sub_name("su"))).unwrap();
    same!(b, |s| s.create_snapshot(snapshot("b"), &sub_name("s"))).unwrap();
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("a"))).unwrap(),
        created
    );

    // Update keeps the topic.
    let mut update = snapshot("a");
    update.labels.insert("k".into(), "v".into());
    update.expire_time = b.clock.now() + Duration::from_secs(7200);
    let updated = same!(b, |s| s.update_snapshot(update.clone())).unwrap();
    assert_eq!(updated.topic, topic_name("t"));
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("a"))).unwrap(),
        updated
    );
    let missing = same!(b, |s| s.update_snapshot(snapshot("nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let first = same!(b, |s| s.list_snapshots(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = same!(b, |s| s
        .list_snapshots(&project(), page(2, &first.next_page_token)))
    .unwrap();
    assert_eq!(rest.items.len(), 1);
    let of_t = same!(b, |s| s.list_topic_snapshots(&topic_name("t"), page(0, ""))).unwrap();
    assert_eq!(of_t.items, [snapshot_name("a"), snapshot_name("b")]);
    let missing = same!(b, |s| s
        .list_topic_snapshots(&topic_name("nope"), page(0, "")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // A subscription without a topic cannot be snapshotted.
    same!(b, |s| s.detach_subscription(&sub_name("su"))).unwrap();
    let detached = same!(b, |s| s.create_snapshot(snapshot("d"), &sub_name("su")));
    assert!(
        matches!(detached, Err(Error::FailedPrecondition(_))),
        "{detached:?}"
    );
    same!(b, |s| s.delete_topic(&topic_name("t"))).unwrap();
    let orphan = same!(b, |s| s.create_snapshot(snapshot("d"), &sub_name("s")));
    assert!(
        matches!(orphan, Err(Error::FailedPrecondition(_))),
        "{orphan:?}"
    );
    // Snapshots outlive their topic.
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("a"))).unwrap(),
        updated
    );

    same!(b, |s| s.delete_snapshot(&snapshot_name("a"))).unwrap();
    let gone = same!(b, |s| s.delete_snapshot(&snapshot_name("a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_snapshot(&snapshot_name("a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
}

#[tokio::test]
async fn documents_behave_as_in_the_embedded_engine() {
    let b = both().await;
    assert_eq!(same!(b, |s| s.get_document("iam", "x")).unwrap(), None);
    for key in [
        "projects/p/topics/a",
        "projects/p/topics/b",
        "projects/p/topics/c",
        "projects/q/x",
        "",
    ] {
        same!(b, |s| s.put_document(
            "iam",
            key,
            Bytes::from(format!("v-{key}"))
        ))
        .unwrap();
    }
    same!(b, |s| s.put_document(
        "schema",
        "projects/p/topics/a",
        Bytes::from_static(b"other kind")
    ))
    .unwrap();
    same!(b, |s| s.put_document(
        "iam",
        "projects/p/topics/a",
        Bytes::from_static(b"replaced")
    ))
    .unwrap();
    assert_eq!(
        same!(b, |s| s.get_document("iam", "projects/p/topics/a")).unwrap(),
        Some(Bytes::from_static(b"replaced"))
    );
    assert_eq!(
        same!(b, |s| s.get_document("iam", "")).unwrap(),
        Some(Bytes::from_static(b"v-"))
    );

    let first = same!(b, |s| s.list_documents("iam", "projects/p/", page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.next_page_token, "projects/p/topics/b");
    let rest = same!(b, |s| s.list_documents(
        "iam",
        "projects/p/",
        page(2, &first.next_page_token)
    ))
    .unwrap();
    assert_eq!(
        rest.items,
        [(
            "projects/p/topics/c".to_string(),
            Bytes::from_static(b"v-projects/p/topics/c")
        )]
    );
    assert_eq!(rest.next_page_token, "");
    let everything = same!(b, |s| s.list_documents("iam", "", page(0, ""))).unwrap();
    assert_eq!(everything.items.len(), 5, "the empty key is listed too");
    let none = same!(b, |s| s.list_documents("nothing", "", page(0, ""))).unwrap();
    assert!(none.items.is_empty());

    assert!(same!(b, |s| s.delete_document("iam", "projects/p/topics/a")).unwrap());
    assert!(!same!(b, |s| s.delete_document("iam", "projects/p/topics/a")).unwrap());
    assert_eq!(
        same!(b, |s| s.get_document("iam", "projects/p/topics/a")).unwrap(),
        None
    );
    assert_eq!(
        same!(b, |s| s.get_document("schema", "projects/p/topics/a")).unwrap(),
        Some(Bytes::from_static(b"other kind"))
    );
}

#[tokio::test]
async fn concurrent_creates_of_one_name_let_exactly_one_win() {
    let b = both().await;
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let store = b.pg.clone();
            tokio::spawn(async move { store.create_topic(topic("race")).await })
        })
        .collect();
    let mut won = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1);

    let creates: Vec<_> = (0..8)
        .map(|_| {
            let store = b.pg.clone();
            tokio::spawn(async move {
                store
                    .create_subscription(subscription("race", "race"))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let refused = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/test",
        PostgresOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, PostgresError::Database(_)), "{refused:?}");
    let err: Error = refused.into();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

/// Microseconds since the epoch, as the store writes times.
fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test]
async fn a_snapshot_captures_the_cursor_and_the_unfinished_rows() {
    // The data plane does not exist yet: the rows it will write are inserted by hand.
    let b = both().await;
    let pool = b.pg.pool();
    b.pg.create_topic(topic("t")).await.unwrap();
    b.pg.create_subscription(subscription("s", "t"))
        .await
        .unwrap();
    let topic_id: i64 = sqlx::query_scalar("SELECT id FROM topics WHERE NOT deleted")
        .fetch_one(pool)
        .await
        .unwrap();
    let sub_id: i64 = sqlx::query_scalar("SELECT id FROM subscriptions")
        .fetch_one(pool)
        .await
        .unwrap();
    let now = b.clock.now();
    let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
    for (id, published) in [(1, hours_ago(30)), (2, hours_ago(20)), (3, hours_ago(10))] {
        sqlx::query(
            "INSERT INTO messages (topic_id, id, publish_time, data)
             VALUES ($1, $2, timestamptz 'epoch' + $3 * interval '1 microsecond', '')",
        )
        .bind(topic_id)
        .bind(id as i64)
        .bind(micros(published))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE topic_heads SET last_id = 3")
        .execute(pool)
        .await
        .unwrap();

    // Cursor at 1 and no rows: message 2 is the oldest unacknowledged one.
    sqlx::query("UPDATE sub_cursors SET cursor = 1")
        .execute(pool)
        .await
        .unwrap();
    let a =
        b.pg.create_snapshot(snapshot("a"), &sub_name("s"))
            .await
            .unwrap();
    assert_eq!(
        a.expire_time,
        hours_ago(20) + converge_core::snapshot::MAX_SNAPSHOT_LIFETIME
    );

    // Cursor at 3, message 2 waiting for a retry: it is the oldest, and the only one undone.
    sqlx::query("UPDATE sub_cursors SET cursor = 3")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (sub_id, msg_id, publish_time, state, due_at)
         SELECT $1, 2, publish_time, 0, publish_time FROM messages WHERE id = 2",
    )
    .bind(sub_id)
    .execute(pool)
    .await
    .unwrap();
    b.pg.create_snapshot(snapshot("b"), &sub_name("s"))
        .await
        .unwrap();
    let rows: Vec<(String, i64, Vec<i64>, i64)> =
        sqlx::query_as("SELECT name, cursor, undone, floor FROM snapshots ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (snapshot_name("a").to_string(), 1, vec![], 1),
            (snapshot_name("b").to_string(), 3, vec![2], 1),
        ]
    );

    // A backlog within an hour of its seven days cannot be snapshotted.
    b.clock.advance(
        converge_core::snapshot::MAX_SNAPSHOT_LIFETIME - Duration::from_secs(20 * 3600 + 1800),
    );
    let too_old = b.pg.create_snapshot(snapshot("c"), &sub_name("s")).await;
    assert!(
        matches!(too_old, Err(Error::FailedPrecondition(_))),
        "{too_old:?}"
    );
}
