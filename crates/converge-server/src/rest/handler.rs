//! Runs one resolved REST operation: request from path, query and body; the service call;
//! the answer as proto3 JSON.
//!
//! Names in the path win over names in the body, as in gRPC-HTTP transcoding of a `body: "*"`
//! rule where the path binds the field: the body's `name` (or `topic`, `subscription`, …) is
//! overwritten with the path's, so a request acts on the resource its URL names.

use axum::extract::Query;
use axum::http::Uri;
use serde::Deserialize;

use super::json::{self, ProtoJson};
use super::route::{Op, Route};
use crate::proto as v1;
use crate::service::ApiError;
use crate::state::AppState;

/// The paging parameters of list calls, as the query string spells them. Google accepts both
/// spellings; other parameters (`$alt`, `prettyPrint`, …) are its system parameters: ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    #[serde(default, alias = "page_size")]
    page_size: Option<String>,
    #[serde(default, alias = "page_token")]
    page_token: Option<String>,
}

/// The other query parameters of the schema and IAM calls, in either spelling.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtraQuery {
    #[serde(default)]
    view: Option<String>,
    #[serde(default, alias = "schema_id")]
    schema_id: Option<String>,
    #[serde(default, alias = "revision_id")]
    revision_id: Option<String>,
    #[serde(
        default,
        rename = "options.requestedPolicyVersion",
        alias = "options.requested_policy_version"
    )]
    requested_policy_version: Option<String>,
}

/// Parsed paging parameters.
#[derive(Debug, PartialEq, Eq)]
struct Paging {
    page_size: i32,
    page_token: String,
}

/// Executes `route` and returns the JSON answer body.
pub async fn execute(
    state: &AppState,
    route: Route,
    uri: &Uri,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let service = state.service()?;
    let name = route.name;
    match route.op {
        Op::CreateTopic => {
            let mut topic: v1::Topic = decode(body)?;
            topic.name = name;
            encode(&service.create_topic(topic).await?)
        }
        Op::GetTopic => encode(
            &service
                .get_topic(v1::GetTopicRequest { topic: name })
                .await?,
        ),
        Op::UpdateTopic => {
            let mut request: v1::UpdateTopicRequest = decode(body)?;
            request.topic.get_or_insert_with(Default::default).name = name;
            encode(&service.update_topic(request).await?)
        }
        Op::DeleteTopic => encode(
            &service
                .delete_topic(v1::DeleteTopicRequest { topic: name })
                .await?,
        ),
        Op::ListTopics => {
            let q = list_query(uri)?;
            let request = v1::ListTopicsRequest {
                project: name,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_topics(request).await?)
        }
        Op::Publish => {
            let mut request: v1::PublishRequest = decode(body)?;
            request.topic = name;
            encode(&service.publish(request).await?)
        }
        Op::ListTopicSubscriptions => {
            let q = list_query(uri)?;
            let request = v1::ListTopicSubscriptionsRequest {
                topic: name,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_topic_subscriptions(request).await?)
        }
        Op::ListTopicSnapshots => {
            let q = list_query(uri)?;
            let request = v1::ListTopicSnapshotsRequest {
                topic: name,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_topic_snapshots(request).await?)
        }
        Op::CreateSubscription => {
            let mut subscription: v1::Subscription = decode(body)?;
            subscription.name = name;
            encode(&service.create_subscription(subscription).await?)
        }
        Op::GetSubscription => encode(
            &service
                .get_subscription(v1::GetSubscriptionRequest { subscription: name })
                .await?,
        ),
        Op::UpdateSubscription => {
            let mut request: v1::UpdateSubscriptionRequest = decode(body)?;
            request
                .subscription
                .get_or_insert_with(Default::default)
                .name = name;
            encode(&service.update_subscription(request).await?)
        }
        Op::DeleteSubscription => encode(
            &service
                .delete_subscription(v1::DeleteSubscriptionRequest { subscription: name })
                .await?,
        ),
        Op::ListSubscriptions => {
            let q = list_query(uri)?;
            let request = v1::ListSubscriptionsRequest {
                project: name,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_subscriptions(request).await?)
        }
        Op::Pull => {
            let mut request: v1::PullRequest = decode(body)?;
            request.subscription = name;
            encode(&state.pull_until_shutdown(request, None).await?)
        }
        Op::Acknowledge => {
            let mut request: v1::AcknowledgeRequest = decode(body)?;
            request.subscription = name;
            encode(&service.acknowledge(request).await?)
        }
        Op::ModifyAckDeadline => {
            let mut request: v1::ModifyAckDeadlineRequest = decode(body)?;
            request.subscription = name;
            encode(&service.modify_ack_deadline(request).await?)
        }
        Op::ModifyPushConfig => {
            let mut request: v1::ModifyPushConfigRequest = decode(body)?;
            request.subscription = name;
            encode(&service.modify_push_config(request).await?)
        }
        Op::DetachSubscription => encode(
            &service
                .detach_subscription(v1::DetachSubscriptionRequest { subscription: name })
                .await?,
        ),
        Op::Seek => {
            let mut request: v1::SeekRequest = decode(body)?;
            request.subscription = name;
            encode(&service.seek(request).await?)
        }
        Op::CreateSnapshot => {
            let mut request: v1::CreateSnapshotRequest = decode(body)?;
            request.name = name;
            encode(&service.create_snapshot(request).await?)
        }
        Op::GetSnapshot => encode(
            &service
                .get_snapshot(v1::GetSnapshotRequest { snapshot: name })
                .await?,
        ),
        Op::UpdateSnapshot => {
            let mut request: v1::UpdateSnapshotRequest = decode(body)?;
            request.snapshot.get_or_insert_with(Default::default).name = name;
            encode(&service.update_snapshot(request).await?)
        }
        Op::DeleteSnapshot => encode(
            &service
                .delete_snapshot(v1::DeleteSnapshotRequest { snapshot: name })
                .await?,
        ),
        Op::ListSnapshots => {
            let q = list_query(uri)?;
            let request = v1::ListSnapshotsRequest {
                project: name,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_snapshots(request).await?)
        }
        Op::CreateSchema
        | Op::GetSchema
        | Op::ListSchemas
        | Op::ListSchemaRevisions
        | Op::CommitSchema
        | Op::RollbackSchema
        | Op::DeleteSchemaRevision
        | Op::DeleteSchema
        | Op::ValidateSchema
        | Op::ValidateMessage
        | Op::GetIamPolicy
        | Op::SetIamPolicy
        | Op::TestIamPermissions => execute_schema_or_iam(service, route.op, name, uri, body).await,
    }
}

/// Runs the SchemaService and IAM operations (the rest of [`execute`]).
async fn execute_schema_or_iam(
    service: &crate::service::PubSub,
    op: Op,
    name: String,
    uri: &Uri,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    use crate::grpc::iam::proto as iam;
    match op {
        Op::CreateSchema => {
            let schema: v1::Schema = decode(body)?;
            let request = v1::CreateSchemaRequest {
                parent: name,
                schema: Some(schema),
                schema_id: extra_query(uri)?.schema_id.unwrap_or_default(),
            };
            encode(&service.create_schema(request).await?)
        }
        Op::GetSchema => {
            let view = view(&extra_query(uri)?)?;
            encode(
                &service
                    .get_schema(v1::GetSchemaRequest { name, view })
                    .await?,
            )
        }
        Op::ListSchemas => {
            let q = list_query(uri)?;
            let request = v1::ListSchemasRequest {
                parent: name,
                view: view(&extra_query(uri)?)?,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_schemas(request).await?)
        }
        Op::ListSchemaRevisions => {
            let q = list_query(uri)?;
            let request = v1::ListSchemaRevisionsRequest {
                name,
                view: view(&extra_query(uri)?)?,
                page_size: q.page_size,
                page_token: q.page_token,
            };
            encode(&service.list_schema_revisions(request).await?)
        }
        Op::CommitSchema => {
            let mut request: v1::CommitSchemaRequest = decode(body)?;
            request.name = name;
            encode(&service.commit_schema(request).await?)
        }
        Op::RollbackSchema => {
            let mut request: v1::RollbackSchemaRequest = decode(body)?;
            request.name = name;
            encode(&service.rollback_schema(request).await?)
        }
        Op::DeleteSchemaRevision => {
            #[allow(deprecated)] // the deprecated query parameter is still honoured
            let request = v1::DeleteSchemaRevisionRequest {
                name,
                revision_id: extra_query(uri)?.revision_id.unwrap_or_default(),
            };
            encode(&service.delete_schema_revision(request).await?)
        }
        Op::DeleteSchema => encode(
            &service
                .delete_schema(v1::DeleteSchemaRequest { name })
                .await?,
        ),
        Op::ValidateSchema => {
            let mut request: v1::ValidateSchemaRequest = decode(body)?;
            request.parent = name;
            encode(&service.validate_schema(request).await?)
        }
        Op::ValidateMessage => {
            let mut request: v1::ValidateMessageRequest = decode(body)?;
            request.parent = name;
            encode(&service.validate_message(request).await?)
        }
        Op::GetIamPolicy => {
            let mut request: iam::GetIamPolicyRequest = decode(body)?;
            request.resource = name;
            if let Some(text) = extra_query(uri)?.requested_policy_version {
                let version = text.parse::<i32>().map_err(|_| {
                    ApiError::invalid(format!(
                        "Invalid value at 'options.requested_policy_version' (TYPE_INT32), \"{text}\""
                    ))
                })?;
                request.options = Some(iam::GetPolicyOptions {
                    requested_policy_version: version,
                });
            }
            encode(&service.get_iam_policy(request).await?)
        }
        Op::SetIamPolicy => {
            let mut request: iam::SetIamPolicyRequest = decode(body)?;
            request.resource = name;
            encode(&service.set_iam_policy(request).await?)
        }
        Op::TestIamPermissions => {
            let mut request: iam::TestIamPermissionsRequest = decode(body)?;
            request.resource = name;
            encode(&service.test_iam_permissions(request).await?)
        }
        other => {
            debug_assert!(false, "{other:?} is not a schema or IAM operation");
            Err(ApiError::unimplemented(other.rpc_name()))
        }
    }
}

/// Reads the schema and IAM query parameters.
fn extra_query(uri: &Uri) -> Result<ExtraQuery, ApiError> {
    let Query(query) = Query::<ExtraQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::invalid(format!("Invalid query: {}", e.body_text())))?;
    Ok(query)
}

/// The `view` parameter as a `SchemaView` number (by name or number); absent is unspecified.
fn view(query: &ExtraQuery) -> Result<i32, ApiError> {
    let Some(text) = &query.view else {
        return Ok(0);
    };
    json::parse_enum::<v1::SchemaView>(text).ok_or_else(|| {
        ApiError::invalid(format!(
            "Invalid value at 'view' (type.googleapis.com/google.pubsub.v1.SchemaView), \"{text}\""
        ))
    })
}

/// Parses a request body; a malformed one is `INVALID_ARGUMENT` with the parser's words.
fn decode<T: ProtoJson>(body: &[u8]) -> Result<T, ApiError> {
    json::from_slice(body).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Serializes an answer.
#[allow(clippy::unnecessary_wraps)] // keeps every arm of `execute` one expression
fn encode<T: ProtoJson>(answer: &T) -> Result<Vec<u8>, ApiError> {
    Ok(json::to_vec(answer))
}

/// Reads `pageSize` and `pageToken` from the query string.
fn list_query(uri: &Uri) -> Result<Paging, ApiError> {
    let Query(query) = Query::<ListQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::invalid(format!("Invalid query: {}", e.body_text())))?;
    let page_size = match query.page_size {
        None => 0,
        Some(text) => text.parse::<i32>().map_err(|_| {
            ApiError::invalid(format!(
                "Invalid value at 'page_size' (TYPE_INT32), \"{text}\""
            ))
        })?,
    };
    Ok(Paging {
        page_size,
        page_token: query.page_token.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paging(uri: &str) -> Result<Paging, ApiError> {
        list_query(&uri.parse().expect("a URI"))
    }

    #[test]
    fn paging_reads_both_spellings() {
        let expected = Paging {
            page_size: 5,
            page_token: "abc".into(),
        };
        assert_eq!(
            paging("/v1/projects/p/topics?pageSize=5&pageToken=abc"),
            Ok(expected)
        );
        let expected = Paging {
            page_size: 7,
            page_token: "x y".into(),
        };
        assert_eq!(
            paging("/v1/projects/p/topics?page_size=7&page_token=x%20y"),
            Ok(expected)
        );
    }

    #[test]
    fn paging_defaults_and_ignores_system_parameters() {
        let expected = Paging {
            page_size: 0,
            page_token: String::new(),
        };
        assert_eq!(paging("/v1/projects/p/topics"), Ok(expected));
        let expected = Paging {
            page_size: 2,
            page_token: String::new(),
        };
        assert_eq!(
            paging("/v1/projects/p/topics?prettyPrint=false&pageSize=2"),
            Ok(expected)
        );
    }

    #[test]
    fn a_bad_page_size_is_invalid_argument() {
        let error = paging("/v1/projects/p/topics?pageSize=many").expect_err("not a number");
        assert_eq!(error.code, tonic::Code::InvalidArgument);
        assert!(error.message.contains("many"), "{}", error.message);
    }
}
