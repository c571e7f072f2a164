//! Schemas (SchemaService, topics bound to a schema) and the IAM mixin, over gRPC and REST,
//! against the real `converge` binary.
//!
//! gRPC goes through the official generated client stubs (`SchemaServiceClient` of the pubsub
//! crate, `IamPolicyClient` of the IAM crate re-exported by the server), REST through plain HTTP
//! at the public API's paths.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::pubsub::{self, schema_service_client::SchemaServiceClient};
use common::{Broker, PROJECT, new_subscription_name, new_topic_name, subscription, unique_id};
use converge_server::grpc::iam::proto as iam;
use iam::iam_policy_client::IamPolicyClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

/// An Avro record with two required strings and an optional long.
const AVRO_V1: &str = r#"{"type": "record", "name": "State", "fields": [
    {"name": "name", "type": "string"},
    {"name": "post_abbr", "type": "string"},
    {"name": "population", "type": ["null", "long"], "default": null}]}"#;

/// The second revision: `post_abbr` replaced by `code`.
const AVRO_V2: &str = r#"{"type": "record", "name": "State", "fields": [
    {"name": "name", "type": "string"},
    {"name": "code", "type": "string"}]}"#;

/// A message matching [`AVRO_V1`] only.
const V1_MESSAGE: &str = r#"{"name": "Alaska", "post_abbr": "AK", "population": {"long": 733391}}"#;
/// A message matching [`AVRO_V2`] only.
const V2_MESSAGE: &str = r#"{"name": "Alaska", "code": "AK"}"#;

/// A proto3 message definition.
const PROTO: &str = "syntax = \"proto3\"; message State { string name = 1; string post_abbr = 2; int64 population = 3; }";

/// SchemaService and IAMPolicy clients of one broker.
struct Clients {
    schemas: SchemaServiceClient<Channel>,
    iam: IamPolicyClient<Channel>,
    grpc: common::Grpc,
}

async fn clients(broker: &Broker) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(broker.endpoint())
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("cannot connect to the broker");
    Clients {
        schemas: SchemaServiceClient::new(channel.clone()),
        iam: IamPolicyClient::new(channel.clone()),
        grpc: common::Grpc::new(channel),
    }
}

fn project() -> String {
    format!("projects/{PROJECT}")
}

fn avro(definition: &str) -> pubsub::Schema {
    pubsub::Schema {
        r#type: pubsub::schema::Type::Avro as i32,
        definition: definition.to_owned(),
        ..Default::default()
    }
}

impl Clients {
    async fn create_schema(
        &self,
        id: &str,
        schema: pubsub::Schema,
    ) -> Result<pubsub::Schema, tonic::Status> {
        let request = pubsub::CreateSchemaRequest {
            parent: project(),
            schema: Some(schema),
            schema_id: id.to_owned(),
        };
        self.schemas
            .clone()
            .create_schema(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get_schema(
        &self,
        name: &str,
        view: pubsub::SchemaView,
    ) -> Result<pubsub::Schema, tonic::Status> {
        let request = pubsub::GetSchemaRequest {
            name: name.to_owned(),
            view: view as i32,
        };
        self.schemas
            .clone()
            .get_schema(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn commit(&self, name: &str, definition: &str) -> pubsub::Schema {
        let request = pubsub::CommitSchemaRequest {
            name: name.to_owned(),
            schema: Some(avro(definition)),
        };
        self.schemas
            .clone()
            .commit_schema(request)
            .await
            .unwrap_or_else(|s| panic!("CommitSchema {name}: {s:?}"))
            .into_inner()
    }

    async fn revisions(&self, name: &str) -> Vec<pubsub::Schema> {
        let request = pubsub::ListSchemaRevisionsRequest {
            name: name.to_owned(),
            view: pubsub::SchemaView::Full as i32,
            ..Default::default()
        };
        self.schemas
            .clone()
            .list_schema_revisions(request)
            .await
            .unwrap_or_else(|s| panic!("ListSchemaRevisions {name}: {s:?}"))
            .into_inner()
            .schemas
    }

    async fn get_policy(&self, resource: &str) -> Result<iam::Policy, tonic::Status> {
        let request = iam::GetIamPolicyRequest {
            resource: resource.to_owned(),
            options: None,
        };
        self.iam
            .clone()
            .get_iam_policy(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn set_policy(
        &self,
        resource: &str,
        policy: iam::Policy,
    ) -> Result<iam::Policy, tonic::Status> {
        let request = iam::SetIamPolicyRequest {
            resource: resource.to_owned(),
            policy: Some(policy),
            update_mask: None,
        };
        self.iam
            .clone()
            .set_iam_policy(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

fn schema_name(id: &str) -> String {
    format!("projects/{PROJECT}/schemas/{id}")
}

fn json_message(text: &str) -> pubsub::PubsubMessage {
    pubsub::PubsubMessage {
        data: text.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn viewer_policy(member: &str, etag: Vec<u8>) -> iam::Policy {
    iam::Policy {
        bindings: vec![iam::Binding {
            role: "roles/pubsub.viewer".into(),
            members: vec![member.to_owned()],
            condition: None,
        }],
        etag,
        ..Default::default()
    }
}

#[tokio::test]
async fn schema_lifecycle_over_grpc() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let id = unique_id("states");
    let name = schema_name(&id);

    let created = c
        .create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    assert_eq!(created.name, name);
    assert_eq!(created.revision_id.len(), 8, "{created:?}");
    assert!(created.revision_create_time.is_some());
    let again = c
        .create_schema(&id, avro(AVRO_V1))
        .await
        .expect_err("a second create");
    assert_eq!(again.code(), Code::AlreadyExists);
    let bad = c
        .create_schema(&unique_id("bad"), avro("{\"type\": \"record\"}"))
        .await;
    assert_eq!(
        bad.expect_err("an invalid definition").code(),
        Code::InvalidArgument
    );

    let full = c
        .get_schema(&name, pubsub::SchemaView::Unspecified)
        .await
        .expect("GetSchema");
    assert_eq!(full.definition, AVRO_V1, "GetSchema is FULL by default");
    let basic = c
        .get_schema(&name, pubsub::SchemaView::Basic)
        .await
        .expect("GetSchema");
    assert!(basic.definition.is_empty());
    assert_eq!(basic.r#type, pubsub::schema::Type::Avro as i32);

    let listed = c
        .schemas
        .clone()
        .list_schemas(pubsub::ListSchemasRequest {
            parent: project(),
            ..Default::default()
        })
        .await
        .expect("ListSchemas")
        .into_inner();
    let mine = listed
        .schemas
        .iter()
        .find(|s| s.name == name)
        .expect("listed");
    assert!(
        mine.definition.is_empty(),
        "ListSchemas is BASIC by default"
    );

    let second = c.commit(&name, AVRO_V2).await;
    assert_ne!(second.revision_id, created.revision_id);
    let latest = c
        .get_schema(&name, pubsub::SchemaView::Full)
        .await
        .expect("GetSchema");
    assert_eq!(latest.definition, AVRO_V2);
    let first = c
        .get_schema(
            &format!("{name}@{}", created.revision_id),
            pubsub::SchemaView::Full,
        )
        .await
        .expect("GetSchema of a revision");
    assert_eq!(first.definition, AVRO_V1);

    let rolled = c
        .schemas
        .clone()
        .rollback_schema(pubsub::RollbackSchemaRequest {
            name: name.clone(),
            revision_id: created.revision_id.clone(),
        })
        .await
        .expect("RollbackSchema")
        .into_inner();
    assert_eq!(rolled.definition, AVRO_V1);
    let ids: Vec<String> = c
        .revisions(&name)
        .await
        .into_iter()
        .map(|r| r.revision_id)
        .collect();
    assert_eq!(
        ids,
        [
            rolled.revision_id.clone(),
            second.revision_id.clone(),
            created.revision_id.clone()
        ],
        "revisions are listed newest first"
    );

    let deleted = c
        .schemas
        .clone()
        .delete_schema_revision(pubsub::DeleteSchemaRevisionRequest {
            name: format!("{name}@{}", second.revision_id),
            ..Default::default()
        })
        .await
        .expect("DeleteSchemaRevision")
        .into_inner();
    assert_eq!(deleted.revision_id, second.revision_id);
    assert_eq!(c.revisions(&name).await.len(), 2);

    c.schemas
        .clone()
        .delete_schema(pubsub::DeleteSchemaRequest { name: name.clone() })
        .await
        .expect("DeleteSchema");
    let gone = c
        .get_schema(&name, pubsub::SchemaView::Full)
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn the_last_revision_cannot_be_deleted() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let id = unique_id("single");
    let created = c
        .create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    let error = c
        .schemas
        .clone()
        .delete_schema_revision(pubsub::DeleteSchemaRevisionRequest {
            name: format!("{}@{}", schema_name(&id), created.revision_id),
            ..Default::default()
        })
        .await
        .expect_err("the only revision");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        c.get_schema(&schema_name(&id), pubsub::SchemaView::Full)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn validate_schema_and_message_over_grpc() {
    use pubsub::validate_message_request::SchemaSpec;
    let broker = Broker::start();
    let c = clients(&broker).await;
    let proto = pubsub::Schema {
        r#type: pubsub::schema::Type::ProtocolBuffer as i32,
        definition: PROTO.into(),
        ..Default::default()
    };
    let validate_schema = |schema: pubsub::Schema| {
        let mut client = c.schemas.clone();
        async move {
            client
                .validate_schema(pubsub::ValidateSchemaRequest {
                    parent: project(),
                    schema: Some(schema),
                })
                .await
        }
    };
    assert!(validate_schema(proto.clone()).await.is_ok());
    let broken = pubsub::Schema {
        definition: "syntax = \"proto3\"; message State { strin name = 1; }".into(),
        ..proto.clone()
    };
    let error = validate_schema(broken).await.expect_err("an unknown type");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("strin"), "{error:?}");

    let validate = |spec: SchemaSpec, encoding: pubsub::Encoding, message: Vec<u8>| {
        let mut client = c.schemas.clone();
        async move {
            client
                .validate_message(pubsub::ValidateMessageRequest {
                    parent: project(),
                    message,
                    encoding: encoding as i32,
                    schema_spec: Some(spec),
                })
                .await
        }
    };
    // Inline protocol buffer schema, binary encoding: name = "AK", population = 5.
    let good = vec![0x0A, 0x02, b'A', b'K', 0x18, 0x05];
    let inline = SchemaSpec::Schema(proto.clone());
    assert!(
        validate(inline.clone(), pubsub::Encoding::Binary, good)
            .await
            .is_ok()
    );
    let error = validate(
        inline.clone(),
        pubsub::Encoding::Binary,
        vec![0x0A, 0x0A, b'A'],
    )
    .await
    .expect_err("truncated");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        validate(
            inline,
            pubsub::Encoding::Json,
            br#"{"postAbbr": "AK"}"#.to_vec()
        )
        .await
        .is_ok()
    );

    // A stored Avro schema by name, JSON encoding.
    let id = unique_id("avro");
    c.create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    let by_name = SchemaSpec::Name(schema_name(&id));
    assert!(
        validate(by_name.clone(), pubsub::Encoding::Json, V1_MESSAGE.into())
            .await
            .is_ok()
    );
    let error = validate(by_name, pubsub::Encoding::Json, V2_MESSAGE.into())
        .await
        .expect_err("a message of the other shape");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("post_abbr"), "{error:?}");
    let missing = SchemaSpec::Name(schema_name(&unique_id("none")));
    let error = validate(missing, pubsub::Encoding::Json, V1_MESSAGE.into())
        .await
        .expect_err("no such schema");
    assert_eq!(error.code(), Code::NotFound);
}

/// Creates a topic bound to `schema` with the given revision range, and a subscription on it.
async fn schema_topic(c: &Clients, schema: &str, first: &str, last: &str) -> (String, String) {
    let topic = new_topic_name("validated");
    let resource = pubsub::Topic {
        name: topic.clone(),
        schema_settings: Some(pubsub::SchemaSettings {
            schema: schema.to_owned(),
            encoding: pubsub::Encoding::Json as i32,
            first_revision_id: first.to_owned(),
            last_revision_id: last.to_owned(),
        }),
        ..Default::default()
    };
    c.grpc
        .try_create_topic(resource)
        .await
        .expect("CreateTopic with a schema");
    let sub = new_subscription_name("validated");
    c.grpc.create_subscription(subscription(&sub, &topic)).await;
    (topic, sub)
}

#[tokio::test]
async fn a_schema_topic_accepts_valid_messages_and_stores_nothing_of_an_invalid_publish() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let id = unique_id("states");
    let created = c
        .create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    let (topic, sub) = schema_topic(&c, &schema_name(&id), "", "").await;

    c.grpc
        .publish(&topic, vec![json_message(V1_MESSAGE)])
        .await
        .expect("a valid message");
    let error = c
        .grpc
        .publish(
            &topic,
            vec![json_message(V1_MESSAGE), json_message("{\"name\": 1}")],
        )
        .await
        .expect_err("the second message is invalid");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("Message 1"), "{error:?}");

    let received = c.grpc.pull(&sub, 10).await;
    assert_eq!(
        received.len(),
        1,
        "nothing of the failed publish is stored: {received:?}"
    );
    let attributes = &received[0].message.as_ref().expect("a message").attributes;
    assert_eq!(attributes["googclient_schemaname"], schema_name(&id));
    assert_eq!(attributes["googclient_schemaencoding"], "JSON");
    assert_eq!(
        attributes["googclient_schemarevisionid"],
        created.revision_id
    );

    let missing = pubsub::Topic {
        name: new_topic_name("orphan"),
        schema_settings: Some(pubsub::SchemaSettings {
            schema: schema_name(&unique_id("none")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let error = c
        .grpc
        .try_create_topic(missing)
        .await
        .expect_err("no such schema");
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn the_revision_range_of_a_topic_is_honoured() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let id = unique_id("ranged");
    let name = schema_name(&id);
    let first = c
        .create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    let second = c.commit(&name, AVRO_V2).await;

    // Any revision: both shapes pass, each tagged with the revision that accepted it.
    let (any, any_sub) = schema_topic(&c, &name, "", "").await;
    c.grpc
        .publish(
            &any,
            vec![json_message(V1_MESSAGE), json_message(V2_MESSAGE)],
        )
        .await
        .expect("both revisions allowed");
    let revisions: Vec<String> = c
        .grpc
        .pull(&any_sub, 10)
        .await
        .iter()
        .map(|r| {
            r.message.as_ref().expect("a message").attributes["googclient_schemarevisionid"].clone()
        })
        .collect();
    assert_eq!(
        revisions,
        [first.revision_id.clone(), second.revision_id.clone()]
    );

    // From the second revision on: the first shape is refused.
    let (newer, _) = schema_topic(&c, &name, &second.revision_id, "").await;
    assert!(
        c.grpc
            .publish(&newer, vec![json_message(V2_MESSAGE)])
            .await
            .is_ok()
    );
    let error = c
        .grpc
        .publish(&newer, vec![json_message(V1_MESSAGE)])
        .await
        .expect_err("too old");
    assert_eq!(error.code(), Code::InvalidArgument);

    // Up to the first revision: the second shape is refused.
    let (older, _) = schema_topic(&c, &name, "", &first.revision_id).await;
    assert!(
        c.grpc
            .publish(&older, vec![json_message(V1_MESSAGE)])
            .await
            .is_ok()
    );
    let error = c
        .grpc
        .publish(&older, vec![json_message(V2_MESSAGE)])
        .await
        .expect_err("too new");
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn deleting_a_schema_marks_its_topics_and_their_publishes_fail() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let id = unique_id("doomed");
    c.create_schema(&id, avro(AVRO_V1))
        .await
        .expect("CreateSchema");
    let (topic, _) = schema_topic(&c, &schema_name(&id), "", "").await;
    c.schemas
        .clone()
        .delete_schema(pubsub::DeleteSchemaRequest {
            name: schema_name(&id),
        })
        .await
        .expect("DeleteSchema");
    let shown = c
        .grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest {
            topic: topic.clone(),
        })
        .await
        .expect("GetTopic")
        .into_inner();
    assert_eq!(
        shown.schema_settings.expect("settings kept").schema,
        "_deleted-schema_"
    );
    let error = c
        .grpc
        .publish(&topic, vec![json_message(V1_MESSAGE)])
        .await
        .expect_err("no schema");
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn iam_policies_over_grpc_with_etags() {
    let broker = Broker::start();
    let c = clients(&broker).await;
    let topic = new_topic_name("guarded");
    c.grpc.create_topic(&topic).await;

    let empty = c.get_policy(&topic).await.expect("GetIamPolicy");
    assert!(empty.bindings.is_empty());
    assert_eq!(BASE64.encode(&empty.etag), "ACAB");

    let set = c
        .set_policy(
            &topic,
            viewer_policy("user:ana@example.com", empty.etag.clone()),
        )
        .await
        .expect("SetIamPolicy with the current etag");
    assert_ne!(set.etag, empty.etag);
    let read = c.get_policy(&topic).await.expect("GetIamPolicy");
    assert_eq!(read, set);

    let stale = c
        .set_policy(
            &topic,
            viewer_policy("user:bo@example.com", empty.etag.clone()),
        )
        .await
        .expect_err("a stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    let unconditional = c
        .set_policy(&topic, viewer_policy("user:bo@example.com", Vec::new()))
        .await
        .expect("no etag overwrites");
    assert_ne!(unconditional.etag, set.etag);

    let permissions = vec![
        "pubsub.topics.publish".to_owned(),
        "pubsub.topics.get".to_owned(),
    ];
    let granted = c
        .iam
        .clone()
        .test_iam_permissions(iam::TestIamPermissionsRequest {
            resource: topic.clone(),
            permissions: permissions.clone(),
        })
        .await
        .expect("TestIamPermissions")
        .into_inner();
    assert_eq!(granted.permissions, permissions);

    let missing = c
        .get_policy(&new_subscription_name("none"))
        .await
        .expect_err("no such subscription");
    assert_eq!(missing.code(), Code::NotFound);
}

/// One REST answer: status and JSON body.
async fn rest(
    broker: &Broker,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let http = broker.http();
    let mut request = http.client.request(method, http.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the request is sent");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn schemas_and_iam_over_rest() {
    let broker = Broker::start();
    let id = unique_id("rest");
    let path = format!("/v1/projects/{PROJECT}/schemas/{id}");

    let (status, created) = rest(
        &broker,
        Method::POST,
        &format!("/v1/projects/{PROJECT}/schemas?schemaId={id}"),
        Some(json!({"type": "AVRO", "definition": AVRO_V1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["name"], schema_name(&id));
    assert_eq!(created["type"], "AVRO");
    let first_revision = created["revisionId"]
        .as_str()
        .expect("a revision id")
        .to_owned();

    let (status, basic) = rest(&broker, Method::GET, &format!("{path}?view=BASIC"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(basic.get("definition").is_none(), "{basic}");

    let (status, committed) = rest(
        &broker,
        Method::POST,
        &format!("{path}:commit"),
        Some(json!({"schema": {"type": "AVRO", "definition": AVRO_V2}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{committed}");
    let (_, listed) = rest(
        &broker,
        Method::GET,
        &format!("{path}:listRevisions?view=FULL"),
        None,
    )
    .await;
    let revisions = listed["schemas"].as_array().expect("revisions");
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0]["revisionId"], committed["revisionId"]);
    assert_eq!(revisions[1]["revisionId"], first_revision.as_str());

    let (status, _) = rest(
        &broker,
        Method::POST,
        &format!("/v1/projects/{PROJECT}/schemas:validateMessage"),
        Some(
            json!({"name": format!("{}@{first_revision}", schema_name(&id)), "encoding": "JSON",
                    "message": BASE64.encode(V1_MESSAGE)}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = rest(
        &broker,
        Method::POST,
        &format!("/v1/projects/{PROJECT}/schemas:validateMessage"),
        Some(json!({"name": schema_name(&id), "encoding": "JSON", "message": BASE64.encode(V1_MESSAGE)})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the newest revision refuses it"
    );
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    let (status, _) = rest(
        &broker,
        Method::POST,
        &format!("/v1/projects/{PROJECT}/schemas:validate"),
        Some(json!({"schema": {"type": "PROTOCOL_BUFFER", "definition": PROTO}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // IAM on the schema: empty, set, read back (GET and POST), stale etag, permissions.
    let (status, empty) = rest(&broker, Method::GET, &format!("{path}:getIamPolicy"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty, json!({"etag": "ACAB"}));
    let policy = json!({"bindings": [{"role": "roles/pubsub.viewer", "members": ["group:ops@example.com"]}],
                        "etag": "ACAB"});
    let (status, set) = rest(
        &broker,
        Method::POST,
        &format!("{path}:setIamPolicy"),
        Some(json!({"policy": policy})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_ne!(set["etag"], "ACAB");
    let (_, read) = rest(
        &broker,
        Method::POST,
        &format!("{path}:getIamPolicy"),
        Some(json!({})),
    )
    .await;
    assert_eq!(read, set);
    let (status, stale) = rest(
        &broker,
        Method::POST,
        &format!("{path}:setIamPolicy"),
        Some(json!({"policy": policy})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(stale["error"]["status"], "ABORTED");
    let (status, granted) = rest(
        &broker,
        Method::POST,
        &format!("{path}:testIamPermissions"),
        Some(json!({"permissions": ["pubsub.schemas.get"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(granted, json!({"permissions": ["pubsub.schemas.get"]}));

    let (status, _) = rest(&broker, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, gone) = rest(&broker, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    let (status, _) = rest(&broker, Method::GET, &format!("{path}:getIamPolicy"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn schemas_and_policies_survive_a_restart() {
    let mut broker = Broker::start_on_disk();
    let id = unique_id("durable");
    let name = schema_name(&id);
    let topic = new_topic_name("durable");
    let (revisions_before, policy_before) = {
        let c = clients(&broker).await;
        c.create_schema(&id, avro(AVRO_V1))
            .await
            .expect("CreateSchema");
        c.commit(&name, AVRO_V2).await;
        c.grpc.create_topic(&topic).await;
        let policy = c
            .set_policy(&topic, viewer_policy("user:ana@example.com", Vec::new()))
            .await
            .expect("SetIamPolicy");
        (c.revisions(&name).await, policy)
    };
    broker.restart().await;
    let c = clients(&broker).await;
    assert_eq!(c.revisions(&name).await, revisions_before);
    assert_eq!(
        c.get_policy(&topic).await.expect("GetIamPolicy"),
        policy_before
    );
    let head = c
        .get_schema(&name, pubsub::SchemaView::Full)
        .await
        .expect("GetSchema");
    assert_eq!(head.definition, AVRO_V2);
}
