//! Tests of the PostgreSQL store, on the real PostgreSQL (127.0.0.1:5432, user postgres,
//! database `test`), each in a fresh schema `t_<uuid>` dropped at the end (also when it fails).
//!
//! Three parts:
//! - the conformance suite ([`crate::conformance`]) on PostgreSQL, restarts included: a restart
//!   is a new store on the same schema;
//! - the schema, its migrations and the resource records, each resource call made on the
//!   embedded engine too (in memory, same clock): values and errors, messages included, must be
//!   identical;
//! - what only this engine promises: several stores (nodes) on one schema share leases,
//!   ordering holds and wake-ups, and a storm of concurrent pullers leases every message once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use converge_core::{
    AckOutcome, Clock, Error, ManualClock, MessageId, ProjectId, PullOptions, Store, Subscription,
    Topic, TopicName,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use super::schema::{self, MIGRATIONS, Migration};
use super::{PostgresError, PostgresOptions, PostgresStore, to_micros};
use crate::conformance::support::{
    data, msg, msg_with, page, project, pubsub_snapshot, pull_now, snapshot_name, sub_name,
    subscription, topic, topic_name,
};
use crate::conformance::{Backend, start_time};
use crate::embedded::{EmbeddedOptions, EmbeddedStore};

/// The test database; every test works in a schema of its own in it.
const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own for one test, dropped when the value is dropped (also when the test
/// fails).
pub(super) struct TestSchema(String);

impl TestSchema {
    pub(super) fn new() -> Self {
        Self(format!("t_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The URL naming the schema, as `converge serve --store` takes it.
    fn url(&self) -> String {
        format!("{URL}?schema={}", self.0)
    }

    /// Options of a store in this schema on `clock`, with the small pool the tests use.
    fn options(&self, clock: &ManualClock) -> PostgresOptions {
        PostgresOptions {
            schema: self.0.clone(),
            max_connections: 4,
            clock: Arc::new(clock.clone()),
            ..PostgresOptions::default()
        }
    }

    /// Opens a store (a node) on this schema, through the URL.
    pub(super) async fn open(&self, clock: &ManualClock) -> PostgresStore {
        PostgresStore::connect(
            &self.url(),
            PostgresOptions {
                clock: Arc::new(clock.clone()),
                max_connections: 4,
                ..PostgresOptions::default()
            },
        )
        .await
        .expect("the store opens on the test schema")
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
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread with
        // a runtime of its own. The test's runtime is blocked meanwhile, so a transaction of a
        // store that a failed test left open cannot finish: `lock_timeout` turns that wait into
        // an error (the schema is then left behind, and named) instead of a hung test.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut conn = URL
                        .parse::<PgConnectOptions>()?
                        .options([("lock_timeout", "10s")])
                        .connect()
                        .await?;
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

/// The conformance backend: a fresh schema per test; every open is a new store (a node
/// starting) on that schema, so a restart keeps everything but what lives in a process.
struct PgBackend {
    schema: TestSchema,
}

impl PgBackend {
    fn new() -> Self {
        Self {
            schema: TestSchema::new(),
        }
    }
}

#[async_trait]
impl Backend for PgBackend {
    async fn open(&self, clock: &ManualClock) -> converge_core::Result<Arc<dyn Store>> {
        let store = PostgresStore::connect(
            &self.schema.url(),
            PostgresOptions {
                clock: Arc::new(clock.clone()),
                max_connections: 4,
                ..PostgresOptions::default()
            },
        )
        .await?;
        Ok(Arc::new(store))
    }

    fn durable(&self) -> bool {
        true
    }
}

crate::conformance_tests!(postgres => PgBackend::new(), durable);

// ---------------------------------------------------------------------------------------------
// Schema, migrations and resource records, compared with the embedded engine.

/// A PostgreSQL store and an in-memory embedded store on one manual clock.
struct Both {
    pg: PostgresStore,
    em: EmbeddedStore,
    clock: ManualClock,
    _schema: TestSchema,
}

async fn both() -> Both {
    // Whole seconds (start_time): PostgreSQL keeps microseconds, the embedded engine
    // nanoseconds.
    let clock = ManualClock::new(start_time());
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
    stores[0].create_topic(topic("id-shared")).await.unwrap();
    assert_eq!(
        stores[4].get_topic(&topic_name("id-shared")).await.unwrap(),
        topic("id-shared")
    );

    // Connecting again (a restart) applies nothing and keeps the data.
    let again = PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap();
    assert_eq!(recorded_versions(&schema).await, expected);
    assert!(again.get_topic(&topic_name("id-shared")).await.is_ok());
    for store in stores.iter().chain([&again]) {
        Store::close(store).await.unwrap();
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
    // A newer converge migrated this schema to a version this one does not know.
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
    let store = PostgresStore::connect(URL, schema.options(&clock))
        .await
        .unwrap();
    Store::close(&store).await.unwrap();
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
    let mut labelled = topic("id-a");
    labelled.labels.insert("team".into(), "x".into());
    labelled.message_retention = Some(Duration::from_secs(600));
    labelled.resource = Bytes::from_static(b"api bytes");
    same!(b, |s| s.create_topic(labelled.clone())).unwrap();
    let exists = same!(b, |s| s.create_topic(topic("id-a")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("id-a"))).unwrap(),
        labelled
    );
    let missing = same!(b, |s| s.get_topic(&topic_name("id-nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let mut changed = labelled.clone();
    changed.dedup_window = Duration::from_secs(60);
    changed.labels.clear();
    same!(b, |s| s.update_topic(changed.clone())).unwrap();
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("id-a"))).unwrap(),
        changed
    );
    let missing = same!(b, |s| s.update_topic(topic("id-nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Paging over five topics of project p, and one of another project that must not show.
    for id in ["id-b", "id-c", "id-d", "id-e"] {
        same!(b, |s| s.create_topic(topic(id))).unwrap();
    }
    let other = Topic {
        name: TopicName::new(ProjectId::new("q").unwrap(), "id-z").unwrap(),
        ..topic("id-z")
    };
    same!(b, |s| s.create_topic(other.clone())).unwrap();
    let first = same!(b, |s| s.list_topics(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.next_page_token, topic_name("id-b").to_string());
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
    let expected: Vec<TopicName> = ["id-a", "id-b", "id-c", "id-d", "id-e"]
        .map(topic_name)
        .into();
    assert_eq!(names, expected);

    // Deleting frees the name: a new topic of the same name is a different topic.
    same!(b, |s| s.delete_topic(&topic_name("id-a"))).unwrap();
    let gone = same!(b, |s| s.delete_topic(&topic_name("id-a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_topic(&topic_name("id-a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    same!(b, |s| s.create_topic(topic("id-a"))).unwrap();
    assert_eq!(
        same!(b, |s| s.get_topic(&topic_name("id-a"))).unwrap(),
        topic("id-a")
    );
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM topics WHERE name = $1")
        .bind(topic_name("id-a").to_string())
        .fetch_one(b.pg.pool())
        .await
        .unwrap();
    assert_eq!(live, 2, "the deleted topic's row stays for its log");
}

#[tokio::test]
async fn subscriptions_behave_as_in_the_embedded_engine() {
    let b = both().await;
    same!(b, |s| s.create_topic(topic("id-t"))).unwrap();
    let created = same!(b, |s| s.create_subscription(subscription("id-s1", "id-t"))).unwrap();
    assert_eq!(
        created.created,
        b.clock.now(),
        "the store sets the creation time"
    );
    let exists = same!(b, |s| s.create_subscription(subscription("id-s1", "id-t")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    let no_topic = same!(b, |s| s
        .create_subscription(subscription("id-s2", "id-nope")));
    assert!(matches!(no_topic, Err(Error::NotFound(_))), "{no_topic:?}");
    let topicless = Subscription {
        topic: None,
        ..subscription("id-s2", "id-t")
    };
    let topicless = same!(b, |s| s.create_subscription(topicless.clone()));
    assert!(
        matches!(topicless, Err(Error::InvalidArgument(_))),
        "{topicless:?}"
    );
    let bad_filter = Subscription {
        filter: "attributes.x = ".into(),
        ..subscription("id-s2", "id-t")
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
        ..subscription("id-s2", "id-t")
    };
    same!(b, |s| s.create_subscription(filtered.clone())).unwrap();
    assert_eq!(
        same!(b, |s| s.get_subscription(&sub_name("id-s2")))
            .unwrap()
            .filter,
        filtered.filter
    );

    // Updates keep what the store owns, and refuse a new filter.
    let mut update = subscription("id-s1", "id-other");
    update.ack_deadline = Duration::from_secs(42);
    update.detached = true;
    update.created = SystemTime::UNIX_EPOCH;
    let updated = same!(b, |s| s.update_subscription(update.clone())).unwrap();
    assert_eq!(updated.ack_deadline, Duration::from_secs(42));
    assert_eq!(updated.topic, Some(topic_name("id-t")));
    assert!(!updated.detached);
    assert_eq!(updated.created, created.created);
    assert_eq!(
        same!(b, |s| s.get_subscription(&sub_name("id-s1"))).unwrap(),
        updated
    );
    let new_filter = Subscription {
        filter: "attributes.x = \"1\"".into(),
        ..subscription("id-s1", "id-t")
    };
    let refused = same!(b, |s| s.update_subscription(new_filter.clone()));
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    let missing = same!(b, |s| s
        .update_subscription(subscription("id-nope", "id-t")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Lists.
    same!(b, |s| s.create_subscription(subscription("id-s3", "id-t"))).unwrap();
    let first = same!(b, |s| s.list_subscriptions(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = same!(b, |s| s
        .list_subscriptions(&project(), page(2, &first.next_page_token)))
    .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_page_token, "");
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("id-t"), page(0, "")))
    .unwrap();
    assert_eq!(
        of_topic.items,
        [sub_name("id-s1"), sub_name("id-s2"), sub_name("id-s3")]
    );
    let missing = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("id-nope"), page(0, "")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Detaching: idempotent, kept in the settings, gone from the topic's list.
    same!(b, |s| s.detach_subscription(&sub_name("id-s3"))).unwrap();
    same!(b, |s| s.detach_subscription(&sub_name("id-s3"))).unwrap();
    let detached = same!(b, |s| s.get_subscription(&sub_name("id-s3"))).unwrap();
    assert!(detached.detached);
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("id-t"), page(0, "")))
    .unwrap();
    assert_eq!(of_topic.items, [sub_name("id-s1"), sub_name("id-s2")]);
    let missing = same!(b, |s| s.detach_subscription(&sub_name("id-nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Deleting the topic leaves the subscriptions, attached to no topic, also when a new
    // topic of the same name appears.
    same!(b, |s| s.delete_topic(&topic_name("id-t"))).unwrap();
    same!(b, |s| s.create_topic(topic("id-t"))).unwrap();
    let orphan = same!(b, |s| s.get_subscription(&sub_name("id-s1"))).unwrap();
    assert_eq!(orphan.topic, None);
    let of_topic = same!(b, |s| s
        .list_topic_subscriptions(&topic_name("id-t"), page(0, "")))
    .unwrap();
    assert!(of_topic.items.is_empty());

    same!(b, |s| s.delete_subscription(&sub_name("id-s1"))).unwrap();
    let gone = same!(b, |s| s.delete_subscription(&sub_name("id-s1")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_subscription(&sub_name("id-s1")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    // The name can be used again.
    same!(b, |s| s.create_subscription(subscription("id-s1", "id-t"))).unwrap();
    let cursors: i64 = sqlx::query_scalar("SELECT count(*) FROM sub_cursors")
        .fetch_one(b.pg.pool())
        .await
        .unwrap();
    assert_eq!(cursors, 3, "one cursor per subscription, deleted with it");
}

#[tokio::test]
async fn snapshot_records_behave_as_in_the_embedded_engine() {
    let b = both().await;
    same!(b, |s| s.create_topic(topic("id-t"))).unwrap();
    same!(b, |s| s.create_topic(topic("id-u"))).unwrap();
    same!(b, |s| s.create_subscription(subscription("id-s", "id-t"))).unwrap();
    same!(b, |s| s.create_subscription(subscription("id-su", "id-u"))).unwrap();

    let created = same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-a"), &sub_name("id-s")))
    .unwrap();
    assert_eq!(created.topic, topic_name("id-t"));
    assert_eq!(
        created.expire_time,
        b.clock.now() + converge_core::snapshot::MAX_SNAPSHOT_LIFETIME,
        "nothing unacknowledged: seven days from now"
    );
    let exists = same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-a"), &sub_name("id-s")));
    assert!(matches!(exists, Err(Error::AlreadyExists(_))), "{exists:?}");
    let no_sub = same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-b"), &sub_name("id-nope")));
    assert!(matches!(no_sub, Err(Error::NotFound(_))), "{no_sub:?}");
    same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-c"), &sub_name("id-su")))
    .unwrap();
    same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-b"), &sub_name("id-s")))
    .unwrap();
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("id-a"))).unwrap(),
        created
    );

    // Update keeps the topic.
    let mut update = pubsub_snapshot("id-a");
    update.labels.insert("k".into(), "v".into());
    update.expire_time = b.clock.now() + Duration::from_secs(7200);
    let updated = same!(b, |s| s.update_snapshot(update.clone())).unwrap();
    assert_eq!(updated.topic, topic_name("id-t"));
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("id-a"))).unwrap(),
        updated
    );
    let missing = same!(b, |s| s.update_snapshot(pubsub_snapshot("id-nope")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let first = same!(b, |s| s.list_snapshots(&project(), page(2, ""))).unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = same!(b, |s| s
        .list_snapshots(&project(), page(2, &first.next_page_token)))
    .unwrap();
    assert_eq!(rest.items.len(), 1);
    let of_t = same!(b, |s| s
        .list_topic_snapshots(&topic_name("id-t"), page(0, "")))
    .unwrap();
    assert_eq!(of_t.items, [snapshot_name("id-a"), snapshot_name("id-b")]);
    let missing = same!(b, |s| s
        .list_topic_snapshots(&topic_name("id-nope"), page(0, "")));
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // A subscription without a topic cannot be snapshotted.
    same!(b, |s| s.detach_subscription(&sub_name("id-su"))).unwrap();
    let detached = same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-d"), &sub_name("id-su")));
    assert!(
        matches!(detached, Err(Error::FailedPrecondition(_))),
        "{detached:?}"
    );
    same!(b, |s| s.delete_topic(&topic_name("id-t"))).unwrap();
    let orphan = same!(b, |s| s
        .create_snapshot(pubsub_snapshot("id-d"), &sub_name("id-s")));
    assert!(
        matches!(orphan, Err(Error::FailedPrecondition(_))),
        "{orphan:?}"
    );
    // Snapshots outlive their topic.
    assert_eq!(
        same!(b, |s| s.get_snapshot(&snapshot_name("id-a"))).unwrap(),
        updated
    );

    same!(b, |s| s.delete_snapshot(&snapshot_name("id-a"))).unwrap();
    let gone = same!(b, |s| s.delete_snapshot(&snapshot_name("id-a")));
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let gone = same!(b, |s| s.get_snapshot(&snapshot_name("id-a")));
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
            tokio::spawn(async move { store.create_topic(topic("id-race")).await })
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
                    .create_subscription(subscription("id-race", "id-race"))
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

#[tokio::test]
async fn a_snapshot_captures_the_cursor_and_the_unfinished_rows() {
    // The data plane does not exist yet: the rows it will write are inserted by hand.
    let b = both().await;
    let pool = b.pg.pool();
    b.pg.create_topic(topic("id-t")).await.unwrap();
    b.pg.create_subscription(subscription("id-s", "id-t"))
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
        .bind(to_micros(published))
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
        b.pg.create_snapshot(pubsub_snapshot("id-a"), &sub_name("id-s"))
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
    b.pg.create_snapshot(pubsub_snapshot("id-b"), &sub_name("id-s"))
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
            (snapshot_name("id-a").to_string(), 1, vec![], 1),
            (snapshot_name("id-b").to_string(), 3, vec![2], 1),
        ]
    );

    // A backlog within an hour of its seven days cannot be snapshotted.
    b.clock.advance(
        converge_core::snapshot::MAX_SNAPSHOT_LIFETIME - Duration::from_secs(20 * 3600 + 1800),
    );
    let too_old =
        b.pg.create_snapshot(pubsub_snapshot("id-c"), &sub_name("id-s"))
            .await;
    assert!(
        matches!(too_old, Err(Error::FailedPrecondition(_))),
        "{too_old:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What only this engine promises: nodes sharing one schema.

/// Two stores (two nodes) on one fresh schema, on one clock, with topic `top1` and the
/// subscription `sub`, which `configure` may change before it is created.
struct TwoNodes {
    a: PostgresStore,
    b: PostgresStore,
    clock: ManualClock,
    _schema: TestSchema,
}

async fn two_nodes(configure: impl FnOnce(&mut Subscription)) -> TwoNodes {
    let schema = TestSchema::new();
    let clock = ManualClock::new(start_time());
    let a = schema.open(&clock).await;
    let b = schema.open(&clock).await;
    a.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("sub", "top1");
    configure(&mut sub);
    a.create_subscription(sub).await.unwrap();
    TwoNodes {
        a,
        b,
        clock,
        _schema: schema,
    }
}

impl TwoNodes {
    async fn close(self) {
        Store::close(&self.a).await.unwrap();
        Store::close(&self.b).await.unwrap();
    }
}

/// A lease is a row, not a node's memory: a message leased through one node is acknowledged,
/// nacked and extended through the other, and stale ack ids stay stale across nodes.
#[tokio::test]
async fn a_lease_taken_on_one_node_is_settled_on_another() {
    let n = two_nodes(|_| {}).await;
    n.a.publish(
        &topic_name("top1"),
        vec![msg("acked"), msg("nacked"), msg("extended")],
    )
    .await
    .unwrap();
    let on_a = pull_now(&n.a, "sub").await;
    assert_eq!(data(&on_a), ["acked", "nacked", "extended"]);
    assert!(
        pull_now(&n.b, "sub").await.is_empty(),
        "leased on A: not deliverable on B"
    );

    let sub = sub_name("sub");
    assert_eq!(
        n.b.acknowledge(&sub, &[on_a[0].ack_id.clone()])
            .await
            .unwrap(),
        [AckOutcome::Applied]
    );
    assert_eq!(
        n.b.modify_ack_deadline(&sub, &[on_a[1].ack_id.clone()], Duration::ZERO)
            .await
            .unwrap(),
        [AckOutcome::Applied]
    );
    assert_eq!(
        n.b.modify_ack_deadline(&sub, &[on_a[2].ack_id.clone()], Duration::from_secs(60))
            .await
            .unwrap(),
        [AckOutcome::Applied]
    );

    // The nack on B made the message deliverable at once (no retry policy), on either node.
    let again = pull_now(&n.a, "sub").await;
    assert_eq!(data(&again), ["nacked"]);
    // The first delivery's ack id names a lease that was replaced: acknowledging it on B
    // changes nothing, and the current one (taken on A) acknowledges on B.
    assert_eq!(
        n.b.acknowledge(&sub, &[on_a[1].ack_id.clone()])
            .await
            .unwrap(),
        [AckOutcome::Invalid]
    );
    assert_eq!(
        n.b.acknowledge(&sub, &[again[0].ack_id.clone()])
            .await
            .unwrap(),
        [AckOutcome::Applied]
    );

    // Past the subscription's 10 s deadline, the extended lease (60 s) still holds on both.
    n.clock.advance(Duration::from_secs(11));
    assert!(pull_now(&n.a, "sub").await.is_empty());
    assert!(pull_now(&n.b, "sub").await.is_empty());
    // Past the extension it expires, and is redelivered by whichever node pulls.
    n.clock.advance(Duration::from_secs(50));
    assert_eq!(data(&pull_now(&n.b, "sub").await), ["extended"]);
    // The acknowledged ones never come back.
    n.clock.advance(Duration::from_secs(3600));
    assert_eq!(data(&pull_now(&n.a, "sub").await), ["extended"]);
    n.close().await;
}

/// An ordering key held on one node holds on every node: while A has the key's first message,
/// B gets other keys but not the key's second message; A's ack releases it to B.
#[tokio::test]
async fn an_ordering_key_leased_on_one_node_holds_back_its_next_message_on_another() {
    let n = two_nodes(|s| {
        s.enable_message_ordering = true;
        // A long lease: only the ack can release the key within the test.
        s.ack_deadline = Duration::from_secs(600);
    })
    .await;
    n.a.publish(
        &topic_name("top1"),
        vec![msg_with("k1", &[], "k"), msg_with("k2", &[], "k")],
    )
    .await
    .unwrap();
    let first = n.a.pull(&sub_name("sub"), 1, Duration::ZERO).await.unwrap();
    assert_eq!(data(&first), ["k1"]);
    assert!(
        pull_now(&n.b, "sub").await.is_empty(),
        "k2 waits behind k1, leased on A"
    );

    // Other keys are not held back.
    n.b.publish(&topic_name("top1"), vec![msg_with("j1", &[], "j")])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(&n.b, "sub").await), ["j1"]);
    assert!(pull_now(&n.b, "sub").await.is_empty(), "k still held by A");
    n.clock.advance(Duration::from_secs(300));
    assert!(
        pull_now(&n.b, "sub").await.is_empty(),
        "k still held by A within its lease"
    );

    assert_eq!(
        n.a.acknowledge(&sub_name("sub"), &[first[0].ack_id.clone()])
            .await
            .unwrap(),
        [AckOutcome::Applied]
    );
    assert_eq!(data(&pull_now(&n.b, "sub").await), ["k2"]);
    n.close().await;
}

/// A long poll on one node is answered by a publish on another, and by an ack on another that
/// releases the next message of an ordering key: wake-ups cross nodes (by notification, or at
/// worst by the polling fallback, both well within the poll's 30 s).
#[tokio::test]
async fn long_polls_are_woken_by_publishes_and_acks_on_another_node() {
    let n = two_nodes(|s| {
        s.enable_message_ordering = true;
        s.ack_deadline = Duration::from_secs(600);
    })
    .await;
    let waiter = tokio::spawn({
        let b = n.b.clone();
        async move { b.pull(&sub_name("sub"), 10, Duration::from_secs(30)).await }
    });
    tokio::task::yield_now().await;
    n.a.publish(
        &topic_name("top1"),
        vec![msg_with("k1", &[], "k"), msg_with("k2", &[], "k")],
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("B's long poll woken by A's publish")
        .unwrap()
        .unwrap();
    assert_eq!(data(&got), ["k1"]);

    let waiter = tokio::spawn({
        let a = n.a.clone();
        async move { a.pull(&sub_name("sub"), 10, Duration::from_secs(30)).await }
    });
    tokio::task::yield_now().await;
    n.b.acknowledge(&sub_name("sub"), &[got[0].ack_id.clone()])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("A's long poll woken by B's ack")
        .unwrap()
        .unwrap();
    assert_eq!(data(&next), ["k2"]);
    n.close().await;
}

/// Messages, pullers and batches of the storm.
const STORM_MESSAGES: usize = 1000;
const STORM_PULLERS: usize = 20;
const STORM_BATCH: usize = 100;

/// 20 pullers, half on each of two nodes, pull and ack in loops while 1,000 messages are
/// published through both nodes. The clock does not move, so no lease can expire: a message
/// received twice would have been leased to two pullers at once. Every message is received
/// exactly once, every ack is applied, and afterwards nothing is left, leased or waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_pullers_on_two_nodes_leases_every_message_once() {
    let n = two_nodes(|_| {}).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let pullers: Vec<_> = (0..STORM_PULLERS)
        .map(|i| {
            let store = if i % 2 == 0 { n.a.clone() } else { n.b.clone() };
            let acked = acked.clone();
            tokio::spawn(async move {
                let sub = sub_name("sub");
                let mut received = Vec::new();
                while acked.load(Ordering::SeqCst) < STORM_MESSAGES {
                    let got = store
                        .pull_with(&sub, PullOptions::new(10, Duration::from_millis(200)))
                        .await
                        .unwrap_or_else(|e| panic!("puller {i}: pull failed: {e:?}"));
                    if got.is_empty() {
                        continue;
                    }
                    let ids: Vec<_> = got.iter().map(|r| r.ack_id.clone()).collect();
                    let outcomes = store
                        .acknowledge(&sub, &ids)
                        .await
                        .unwrap_or_else(|e| panic!("puller {i}: ack failed: {e:?}"));
                    assert!(
                        outcomes.iter().all(|o| *o == AckOutcome::Applied),
                        "puller {i}: an ack of a current lease was not applied: {outcomes:?}"
                    );
                    acked.fetch_add(got.len(), Ordering::SeqCst);
                    received.extend(got.into_iter().map(|r| r.message.id));
                }
                received
            })
        })
        .collect();

    let publishers: Vec<_> = (0..STORM_MESSAGES / STORM_BATCH)
        .map(|batch| {
            let store = if batch % 2 == 0 {
                n.a.clone()
            } else {
                n.b.clone()
            };
            tokio::spawn(async move {
                let messages = (0..STORM_BATCH)
                    .map(|i| msg(&format!("m-{batch}-{i}")))
                    .collect();
                store.publish(&topic_name("top1"), messages).await.unwrap()
            })
        })
        .collect();
    let mut published = HashSet::new();
    for publisher in publishers {
        published.extend(publisher.await.unwrap());
    }
    assert_eq!(published.len(), STORM_MESSAGES, "every message has its id");

    let mut received: Vec<MessageId> = Vec::new();
    let all = async {
        for puller in pullers {
            received.extend(puller.await.unwrap());
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        panic!(
            "the storm did not finish: {} of {STORM_MESSAGES} acknowledged",
            acked.load(Ordering::SeqCst)
        );
    }
    let unique: HashSet<MessageId> = received.iter().copied().collect();
    assert_eq!(
        received.len(),
        unique.len(),
        "a message was leased to two pullers at once"
    );
    assert_eq!(unique, published, "every message received, and only those");

    // Nothing is left: not deliverable now, and not leased either (past every deadline).
    assert!(pull_now(&n.a, "sub").await.is_empty());
    n.clock.advance(Duration::from_secs(11));
    assert!(pull_now(&n.a, "sub").await.is_empty());
    assert!(pull_now(&n.b, "sub").await.is_empty());
    n.close().await;
}

/// Once a store is closed, a publish through it answers an error, never an OK for a message
/// that was not stored; the data stays intact for the other nodes.
#[tokio::test]
async fn a_publish_after_close_is_an_error_and_stores_nothing() {
    let n = two_nodes(|_| {}).await;
    Store::close(&n.a).await.unwrap();
    let refused = n.a.publish(&topic_name("top1"), vec![msg("late")]).await;
    assert!(refused.is_err(), "a closed store answered {refused:?}");
    let pulled = n.a.pull(&sub_name("sub"), 10, Duration::ZERO).await;
    assert!(pulled.is_err(), "a closed store answered {pulled:?}");

    assert!(
        pull_now(&n.b, "sub").await.is_empty(),
        "the refused publish stored nothing"
    );
    n.b.publish(&topic_name("top1"), vec![msg("on b")])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(&n.b, "sub").await), ["on b"]);
    Store::close(&n.b).await.unwrap();
}

/// One node of a deployment runs the periodic sweeps: while A leads, B's `maintain` sweeps
/// nothing (an expired subscription stays); once A has closed, the lead is free at once, so B's
/// very next `maintain` takes over and sweeps (a clean shutdown hands over without waiting for
/// PostgreSQL to notice that A's session ended).
#[tokio::test]
async fn one_node_leads_the_sweeps_and_the_lead_moves_when_it_closes() {
    let n = two_nodes(|s| s.expiration_ttl = Some(Duration::from_secs(86_400))).await;
    n.a.maintain().await.unwrap();
    n.clock.advance(Duration::from_secs(2 * 86_400));
    n.b.maintain().await.unwrap();
    assert!(
        n.b.get_subscription(&sub_name("sub")).await.is_ok(),
        "B does not lead while A does: it expired nothing"
    );

    Store::close(&n.a).await.unwrap();
    n.b.maintain().await.unwrap();
    let gone = n.b.get_subscription(&sub_name("sub")).await;
    assert!(
        matches!(gone, Err(Error::NotFound(_))),
        "B leads once A closed, and expired the subscription: {gone:?}"
    );
    Store::close(&n.b).await.unwrap();
}
