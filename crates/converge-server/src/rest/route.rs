//! Which RPC a REST request is: the public API's URL templates, resolved by hand.
//!
//! The REST mapping of `google.pubsub.v1` puts custom verbs inside the last path segment
//! (`/v1/projects/p/topics/t:publish`), which axum's router cannot match, so every `/v1/` path
//! is resolved here: segments are percent-decoded, the verb is split off at the last `:`, and the
//! shape of the path plus the HTTP method pick the operation. This is pure, so it is tested
//! exhaustively without a server.

use axum::http::Method;
use percent_encoding::percent_decode_str;

/// Every operation of the REST surface, named as its RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the RPC of the same name
pub enum Op {
    CreateTopic,
    GetTopic,
    UpdateTopic,
    DeleteTopic,
    ListTopics,
    Publish,
    ListTopicSubscriptions,
    ListTopicSnapshots,
    CreateSubscription,
    GetSubscription,
    UpdateSubscription,
    DeleteSubscription,
    ListSubscriptions,
    Pull,
    Acknowledge,
    ModifyAckDeadline,
    ModifyPushConfig,
    DetachSubscription,
    Seek,
    CreateSnapshot,
    GetSnapshot,
    UpdateSnapshot,
    DeleteSnapshot,
    ListSnapshots,
    CreateSchema,
    GetSchema,
    ListSchemas,
    ListSchemaRevisions,
    CommitSchema,
    RollbackSchema,
    DeleteSchemaRevision,
    DeleteSchema,
    ValidateSchema,
    ValidateMessage,
    GetIamPolicy,
    SetIamPolicy,
    TestIamPermissions,
}

impl Op {
    /// The RPC name, for logs and metrics (`Publish`).
    pub fn rpc_name(self) -> &'static str {
        match self {
            Op::CreateTopic => "CreateTopic",
            Op::GetTopic => "GetTopic",
            Op::UpdateTopic => "UpdateTopic",
            Op::DeleteTopic => "DeleteTopic",
            Op::ListTopics => "ListTopics",
            Op::Publish => "Publish",
            Op::ListTopicSubscriptions => "ListTopicSubscriptions",
            Op::ListTopicSnapshots => "ListTopicSnapshots",
            Op::CreateSubscription => "CreateSubscription",
            Op::GetSubscription => "GetSubscription",
            Op::UpdateSubscription => "UpdateSubscription",
            Op::DeleteSubscription => "DeleteSubscription",
            Op::ListSubscriptions => "ListSubscriptions",
            Op::Pull => "Pull",
            Op::Acknowledge => "Acknowledge",
            Op::ModifyAckDeadline => "ModifyAckDeadline",
            Op::ModifyPushConfig => "ModifyPushConfig",
            Op::DetachSubscription => "DetachSubscription",
            Op::Seek => "Seek",
            Op::CreateSnapshot => "CreateSnapshot",
            Op::GetSnapshot => "GetSnapshot",
            Op::UpdateSnapshot => "UpdateSnapshot",
            Op::DeleteSnapshot => "DeleteSnapshot",
            Op::ListSnapshots => "ListSnapshots",
            Op::CreateSchema => "CreateSchema",
            Op::GetSchema => "GetSchema",
            Op::ListSchemas => "ListSchemas",
            Op::ListSchemaRevisions => "ListSchemaRevisions",
            Op::CommitSchema => "CommitSchema",
            Op::RollbackSchema => "RollbackSchema",
            Op::DeleteSchemaRevision => "DeleteSchemaRevision",
            Op::DeleteSchema => "DeleteSchema",
            Op::ValidateSchema => "ValidateSchema",
            Op::ValidateMessage => "ValidateMessage",
            Op::GetIamPolicy => "GetIamPolicy",
            Op::SetIamPolicy => "SetIamPolicy",
            Op::TestIamPermissions => "TestIamPermissions",
        }
    }
}

/// A resolved request: the operation and the resource name its path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The operation.
    pub op: Op,
    /// The full resource name from the path: `projects/p/topics/t` for a topic operation (also
    /// for `…/t/subscriptions`), `projects/p` for a list of a project's resources.
    pub name: String,
}

/// Why a path resolves to no operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No operation has this path (or custom verb): 404.
    #[error("no such REST path")]
    NotFound,
    /// The path exists but not for this HTTP method: 405 with an `Allow` header.
    #[error("method not allowed here; allowed: {allowed:?}")]
    MethodNotAllowed {
        /// The methods the path accepts.
        allowed: Vec<Method>,
    },
}

/// The collections of a project.
const COLLECTIONS: &[&str] = &["topics", "subscriptions", "snapshots"];

/// Operations on one resource: (collection, custom verb, HTTP method, operation).
const ITEM_OPS: &[(&str, Option<&str>, Method, Op)] = &[
    ("topics", None, Method::PUT, Op::CreateTopic),
    ("topics", None, Method::GET, Op::GetTopic),
    ("topics", None, Method::PATCH, Op::UpdateTopic),
    ("topics", None, Method::DELETE, Op::DeleteTopic),
    ("topics", Some("publish"), Method::POST, Op::Publish),
    ("subscriptions", None, Method::PUT, Op::CreateSubscription),
    ("subscriptions", None, Method::GET, Op::GetSubscription),
    ("subscriptions", None, Method::PATCH, Op::UpdateSubscription),
    (
        "subscriptions",
        None,
        Method::DELETE,
        Op::DeleteSubscription,
    ),
    ("subscriptions", Some("pull"), Method::POST, Op::Pull),
    (
        "subscriptions",
        Some("acknowledge"),
        Method::POST,
        Op::Acknowledge,
    ),
    (
        "subscriptions",
        Some("modifyAckDeadline"),
        Method::POST,
        Op::ModifyAckDeadline,
    ),
    (
        "subscriptions",
        Some("modifyPushConfig"),
        Method::POST,
        Op::ModifyPushConfig,
    ),
    (
        "subscriptions",
        Some("detach"),
        Method::POST,
        Op::DetachSubscription,
    ),
    ("subscriptions", Some("seek"), Method::POST, Op::Seek),
    ("snapshots", None, Method::PUT, Op::CreateSnapshot),
    ("snapshots", None, Method::GET, Op::GetSnapshot),
    ("snapshots", None, Method::PATCH, Op::UpdateSnapshot),
    ("snapshots", None, Method::DELETE, Op::DeleteSnapshot),
    ("schemas", None, Method::GET, Op::GetSchema),
    ("schemas", None, Method::DELETE, Op::DeleteSchema),
    (
        "schemas",
        Some("listRevisions"),
        Method::GET,
        Op::ListSchemaRevisions,
    ),
    ("schemas", Some("commit"), Method::POST, Op::CommitSchema),
    (
        "schemas",
        Some("rollback"),
        Method::POST,
        Op::RollbackSchema,
    ),
    (
        "schemas",
        Some("deleteRevision"),
        Method::DELETE,
        Op::DeleteSchemaRevision,
    ),
];

/// The collections whose resources carry IAM policies (the `google.iam.v1.IAMPolicy` mixin).
const IAM_COLLECTIONS: &[&str] = &["topics", "subscriptions", "snapshots", "schemas"];

/// The IAM mixin's custom verbs: (verb, HTTP methods, operation). Pub/Sub's own REST surface
/// reads policies with GET; the mixin's generic binding uses POST: both are accepted.
const IAM_OPS: &[(&str, &[Method], Op)] = &[
    (
        "getIamPolicy",
        &[Method::GET, Method::POST],
        Op::GetIamPolicy,
    ),
    ("setIamPolicy", &[Method::POST], Op::SetIamPolicy),
    (
        "testIamPermissions",
        &[Method::POST],
        Op::TestIamPermissions,
    ),
];

/// The custom verbs on a project's schema collection (`projects/p/schemas:validate`).
const SCHEMA_COLLECTION_OPS: &[(&str, Op)] = &[
    ("validate", Op::ValidateSchema),
    ("validateMessage", Op::ValidateMessage),
];

/// Resolves `method path` (the raw, still percent-encoded path) to an operation.
pub fn resolve(method: &Method, path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v1/").ok_or(RouteError::NotFound)?;
    let segments = rest
        .split('/')
        .map(decode_segment)
        .collect::<Option<Vec<String>>>()
        .ok_or(RouteError::NotFound)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["projects", project, "schemas"] => {
            let name = format!("projects/{project}");
            match *method {
                Method::GET => Ok(Route {
                    op: Op::ListSchemas,
                    name,
                }),
                Method::POST => Ok(Route {
                    op: Op::CreateSchema,
                    name,
                }),
                _ => Err(RouteError::MethodNotAllowed {
                    allowed: vec![Method::GET, Method::POST],
                }),
            }
        }
        ["projects", project, last] if split_verb(last).0 == "schemas" => {
            let verb = split_verb(last).1;
            let op = SCHEMA_COLLECTION_OPS
                .iter()
                .find(|(v, _)| Some(*v) == verb)
                .map(|(_, op)| *op)
                .ok_or(RouteError::NotFound)?;
            only(method, Method::POST, op, format!("projects/{project}"))
        }
        ["projects", project, collection] if COLLECTIONS.contains(collection) => {
            let op = match *collection {
                "topics" => Op::ListTopics,
                "subscriptions" => Op::ListSubscriptions,
                _ => Op::ListSnapshots,
            };
            only(method, Method::GET, op, format!("projects/{project}"))
        }
        ["projects", project, collection, last] => {
            let (id, verb) = split_verb(last);
            if id.is_empty() {
                return Err(RouteError::NotFound);
            }
            let name = format!("projects/{project}/{collection}/{id}");
            if let Some(route) = iam(method, collection, verb, &name) {
                return route;
            }
            item(
                method,
                collection,
                verb,
                format!("projects/{project}/{collection}/{id}"),
            )
        }
        ["projects", project, "topics", topic, child] => {
            let op = match *child {
                "subscriptions" => Op::ListTopicSubscriptions,
                "snapshots" => Op::ListTopicSnapshots,
                _ => return Err(RouteError::NotFound),
            };
            only(
                method,
                Method::GET,
                op,
                format!("projects/{project}/topics/{topic}"),
            )
        }
        _ => Err(RouteError::NotFound),
    }
}

/// Splits the custom verb off a path segment at its last `:` (`t:publish` → (`t`, `publish`)).
/// Resource ids cannot contain `:`, so the last one always starts the verb.
pub fn split_verb(segment: &str) -> (&str, Option<&str>) {
    match segment.rsplit_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    }
}

/// Percent-decodes one path segment; `None` for an empty segment or one that is not UTF-8.
fn decode_segment(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let decoded = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
    (!decoded.is_empty()).then_some(decoded)
}

/// An IAM verb on a resource that carries policies; `None` when the path is no IAM call.
fn iam(
    method: &Method,
    collection: &str,
    verb: Option<&str>,
    name: &str,
) -> Option<Result<Route, RouteError>> {
    if !IAM_COLLECTIONS.contains(&collection) {
        return None;
    }
    let (_, methods, op) = IAM_OPS.iter().find(|(v, _, _)| Some(*v) == verb)?;
    if !methods.contains(method) {
        return Some(Err(RouteError::MethodNotAllowed {
            allowed: methods.to_vec(),
        }));
    }
    Some(Ok(Route {
        op: *op,
        name: name.to_owned(),
    }))
}

/// A path that takes exactly one method.
fn only(method: &Method, allowed: Method, op: Op, name: String) -> Result<Route, RouteError> {
    if *method != allowed {
        return Err(RouteError::MethodNotAllowed {
            allowed: vec![allowed],
        });
    }
    Ok(Route { op, name })
}

/// A path naming one resource, optionally with a custom verb.
fn item(
    method: &Method,
    collection: &str,
    verb: Option<&str>,
    name: String,
) -> Result<Route, RouteError> {
    let candidates: Vec<&(&str, Option<&str>, Method, Op)> = ITEM_OPS
        .iter()
        .filter(|(c, v, _, _)| *c == collection && *v == verb)
        .collect();
    if candidates.is_empty() {
        return Err(RouteError::NotFound);
    }
    match candidates.iter().find(|(_, _, m, _)| m == method) {
        Some((_, _, _, op)) => Ok(Route { op: *op, name }),
        None => Err(RouteError::MethodNotAllowed {
            allowed: candidates.iter().map(|(_, _, m, _)| m.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str) -> Route {
        resolve(&method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    #[test]
    fn split_verb_splits_at_the_last_colon() {
        assert_eq!(split_verb("t:publish"), ("t", Some("publish")));
        assert_eq!(split_verb("t"), ("t", None));
        assert_eq!(split_verb("a:b:pull"), ("a:b", Some("pull")));
        assert_eq!(split_verb("t:"), ("t", Some("")));
    }

    #[test]
    fn topic_paths() {
        let route = ok(Method::PUT, "/v1/projects/p/topics/t");
        assert_eq!(
            route,
            Route {
                op: Op::CreateTopic,
                name: "projects/p/topics/t".into()
            }
        );
        assert_eq!(ok(Method::GET, "/v1/projects/p/topics/t").op, Op::GetTopic);
        assert_eq!(
            ok(Method::PATCH, "/v1/projects/p/topics/t").op,
            Op::UpdateTopic
        );
        assert_eq!(
            ok(Method::DELETE, "/v1/projects/p/topics/t").op,
            Op::DeleteTopic
        );
        let route = ok(Method::POST, "/v1/projects/p/topics/t:publish");
        assert_eq!(
            route,
            Route {
                op: Op::Publish,
                name: "projects/p/topics/t".into()
            }
        );
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/topics"),
            Route {
                op: Op::ListTopics,
                name: "projects/p".into()
            }
        );
        let route = ok(Method::GET, "/v1/projects/p/topics/t/subscriptions");
        assert_eq!(
            route,
            Route {
                op: Op::ListTopicSubscriptions,
                name: "projects/p/topics/t".into()
            }
        );
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/topics/t/snapshots").op,
            Op::ListTopicSnapshots
        );
    }

    #[test]
    fn subscription_paths() {
        let name = "projects/p/subscriptions/s";
        for (method, path, op) in [
            (
                Method::PUT,
                "/v1/projects/p/subscriptions/s",
                Op::CreateSubscription,
            ),
            (
                Method::GET,
                "/v1/projects/p/subscriptions/s",
                Op::GetSubscription,
            ),
            (
                Method::PATCH,
                "/v1/projects/p/subscriptions/s",
                Op::UpdateSubscription,
            ),
            (
                Method::DELETE,
                "/v1/projects/p/subscriptions/s",
                Op::DeleteSubscription,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:pull",
                Op::Pull,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:acknowledge",
                Op::Acknowledge,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:modifyAckDeadline",
                Op::ModifyAckDeadline,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:modifyPushConfig",
                Op::ModifyPushConfig,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:detach",
                Op::DetachSubscription,
            ),
            (
                Method::POST,
                "/v1/projects/p/subscriptions/s:seek",
                Op::Seek,
            ),
        ] {
            assert_eq!(
                ok(method, path),
                Route {
                    op,
                    name: name.into()
                },
                "{path}"
            );
        }
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/subscriptions").op,
            Op::ListSubscriptions
        );
    }

    #[test]
    fn snapshot_paths() {
        assert_eq!(
            ok(Method::PUT, "/v1/projects/p/snapshots/x").op,
            Op::CreateSnapshot
        );
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/snapshots/x").op,
            Op::GetSnapshot
        );
        assert_eq!(
            ok(Method::PATCH, "/v1/projects/p/snapshots/x").op,
            Op::UpdateSnapshot
        );
        assert_eq!(
            ok(Method::DELETE, "/v1/projects/p/snapshots/x").name,
            "projects/p/snapshots/x"
        );
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/snapshots").op,
            Op::ListSnapshots
        );
    }

    #[test]
    fn segments_are_percent_decoded_before_the_verb_is_split() {
        assert_eq!(
            ok(Method::GET, "/v1/projects/p/topics/a%25b").name,
            "projects/p/topics/a%b"
        );
        let route = ok(Method::POST, "/v1/projects/p/topics/t%3Apublish");
        assert_eq!(
            route,
            Route {
                op: Op::Publish,
                name: "projects/p/topics/t".into()
            }
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for (method, path) in [
            (Method::GET, "/v1/projects/p"),
            (Method::GET, "/v1/projects/p/queues"),
            (Method::GET, "/v1/projects/p/queues/q"),
            (Method::POST, "/v1/projects/p/topics/t:pull"),
            (Method::POST, "/v1/projects/p/subscriptions/s:nope"),
            (Method::GET, "/v1/projects/p/topics/t/other"),
            (Method::GET, "/v1/projects/p/subscriptions/s/snapshots"),
            (Method::GET, "/v1/projects/p/topics/"),
            (Method::GET, "/v1/projects//topics/t"),
            (Method::POST, "/v1/projects/p/topics/:publish"),
            (Method::GET, "/v2/projects/p/topics/t"),
            (Method::GET, "/v1/projects/p/topics/t/subscriptions/x"),
            (Method::GET, "/v1/organizations/p/topics"),
        ] {
            assert_eq!(
                resolve(&method, path),
                Err(RouteError::NotFound),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn wrong_methods_are_not_allowed_and_say_what_is() {
        assert_eq!(
            resolve(&Method::GET, "/v1/projects/p/topics/t:publish"),
            Err(RouteError::MethodNotAllowed {
                allowed: vec![Method::POST]
            })
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/projects/p/topics"),
            Err(RouteError::MethodNotAllowed {
                allowed: vec![Method::GET]
            })
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/projects/p/subscriptions/s"),
            Err(RouteError::MethodNotAllowed {
                allowed: vec![Method::PUT, Method::GET, Method::PATCH, Method::DELETE]
            })
        );
    }

    #[test]
    fn schema_paths() {
        let project = "projects/p";
        let schema = "projects/p/schemas/s";
        for (method, path, op, name) in [
            (
                Method::GET,
                "/v1/projects/p/schemas",
                Op::ListSchemas,
                project,
            ),
            (
                Method::POST,
                "/v1/projects/p/schemas",
                Op::CreateSchema,
                project,
            ),
            (
                Method::POST,
                "/v1/projects/p/schemas:validate",
                Op::ValidateSchema,
                project,
            ),
            (
                Method::POST,
                "/v1/projects/p/schemas:validateMessage",
                Op::ValidateMessage,
                project,
            ),
            (
                Method::GET,
                "/v1/projects/p/schemas/s",
                Op::GetSchema,
                schema,
            ),
            (
                Method::GET,
                "/v1/projects/p/schemas/s@c7cfa2a8",
                Op::GetSchema,
                "projects/p/schemas/s@c7cfa2a8",
            ),
            (
                Method::DELETE,
                "/v1/projects/p/schemas/s",
                Op::DeleteSchema,
                schema,
            ),
            (
                Method::GET,
                "/v1/projects/p/schemas/s:listRevisions",
                Op::ListSchemaRevisions,
                schema,
            ),
            (
                Method::POST,
                "/v1/projects/p/schemas/s:commit",
                Op::CommitSchema,
                schema,
            ),
            (
                Method::POST,
                "/v1/projects/p/schemas/s:rollback",
                Op::RollbackSchema,
                schema,
            ),
            (
                Method::DELETE,
                "/v1/projects/p/schemas/s@c7cfa2a8:deleteRevision",
                Op::DeleteSchemaRevision,
                "projects/p/schemas/s@c7cfa2a8",
            ),
        ] {
            assert_eq!(
                ok(method, path),
                Route {
                    op,
                    name: name.into()
                },
                "{path}"
            );
        }
        assert_eq!(
            resolve(&Method::PUT, "/v1/projects/p/schemas"),
            Err(RouteError::MethodNotAllowed {
                allowed: vec![Method::GET, Method::POST]
            })
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/projects/p/schemas:nope"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn iam_paths_on_every_resource_that_has_policies() {
        for collection in ["topics", "subscriptions", "snapshots", "schemas"] {
            let name = format!("projects/p/{collection}/r");
            let path = |verb: &str| format!("/v1/{name}:{verb}");
            for (method, verb, op) in [
                (Method::GET, "getIamPolicy", Op::GetIamPolicy),
                (Method::POST, "getIamPolicy", Op::GetIamPolicy),
                (Method::POST, "setIamPolicy", Op::SetIamPolicy),
                (Method::POST, "testIamPermissions", Op::TestIamPermissions),
            ] {
                assert_eq!(
                    ok(method, &path(verb)),
                    Route {
                        op,
                        name: name.clone()
                    }
                );
            }
            assert_eq!(
                resolve(&Method::GET, &path("setIamPolicy")),
                Err(RouteError::MethodNotAllowed {
                    allowed: vec![Method::POST]
                })
            );
        }
    }

    #[test]
    fn every_op_has_its_own_rpc_name() {
        let names: std::collections::HashSet<&str> =
            ITEM_OPS.iter().map(|(_, _, _, op)| op.rpc_name()).collect();
        assert_eq!(names.len(), ITEM_OPS.len());
    }
}
