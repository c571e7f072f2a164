//! The SchemaService RPCs, and the schema checks of topics bound to a schema.
//!
//! A schema is a list of immutable revisions. Each revision is one store document of kind
//! [`REVISION_KIND`] under `projects/p/schemas/s@{revision}` holding the prost-encoded `Schema`
//! (name without revision, type, definition, revision id, creation time); the newest revision is
//! also kept under [`HEAD_KIND`] at `projects/p/schemas/s`, so that listing a project's schemas
//! reads one document per schema. Revision ids are 8 lowercase hex digits, as the real service
//! shows them (e.g. `c7cfa2a8`); `projects/p/schemas/s@c7cfa2a8` names one revision.
//!
//! Writes to schemas go through one lock ([`SCHEMA_WRITES`]): a commit reads the revisions and
//! writes the new one, and two concurrent commits must not both become the head.

use std::time::SystemTime;

use converge_core::name::{ProjectId, validate_resource_id};
use prost::Message as _;

use super::schema_validation::{self, ParsedSchema, SchemaError};
use super::{ApiError, PubSub, convert, not_found, page_request};
use crate::proto as v1;

/// The document kind of schema revisions.
const REVISION_KIND: &str = "schema-revision";
/// The document kind of each schema's newest revision.
const HEAD_KIND: &str = "schema";
/// What a topic's `schema_settings.schema` shows once its schema is deleted.
pub(super) const DELETED_SCHEMA: &str = "_deleted-schema_";
/// The attribute naming the schema a published message was validated against.
const SCHEMA_NAME_ATTRIBUTE: &str = "googclient_schemaname";
/// The attribute naming the encoding a published message was validated in.
const SCHEMA_ENCODING_ATTRIBUTE: &str = "googclient_schemaencoding";
/// The attribute naming the revision a published message was validated against.
const SCHEMA_REVISION_ATTRIBUTE: &str = "googclient_schemarevisionid";

/// Serializes schema writes (see the module documentation). A tokio mutex: it is held across
/// store calls.
static SCHEMA_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A schema's name: `projects/{project}/schemas/{schema}`, optionally `@{revision}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SchemaName {
    /// `projects/p/schemas/s`, without the revision.
    pub(super) name: String,
    /// The schema id.
    pub(super) id: String,
    /// The revision the name addresses, if it has `@revision`.
    pub(super) revision: Option<String>,
}

impl SchemaName {
    /// Parses a schema name; `INVALID_ARGUMENT` naming what is wrong.
    pub(super) fn parse(text: &str) -> Result<Self, ApiError> {
        let (base, revision) = match text.split_once('@') {
            Some((base, revision)) => (base, Some(revision)),
            None => (text, None),
        };
        let bad = || ApiError::invalid(format!("Invalid schema name: \"{text}\""));
        let mut parts = base.split('/');
        let (Some("projects"), Some(project), Some("schemas"), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        ProjectId::new(project)?;
        validate_resource_id("schema", id)?;
        if revision.is_some_and(str::is_empty) {
            return Err(bad());
        }
        Ok(Self {
            name: base.to_owned(),
            id: id.to_owned(),
            revision: revision.map(str::to_owned),
        })
    }

    /// The document key of revision `revision` of this schema.
    fn revision_key(&self, revision: &str) -> String {
        format!("{}@{revision}", self.name)
    }
}

/// `NOT_FOUND` for a schema (or revision) as the real service words it.
fn schema_not_found(name: &SchemaName) -> ApiError {
    not_found(&name.id)
}

/// A store failure on schema documents (they have no NOT_FOUND of their own to map).
fn store_failure(e: converge_core::Error) -> ApiError {
    ApiError::from(e)
}

/// A fresh revision id: 8 lowercase hex digits.
fn new_revision_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(8);
    id
}

/// Applies a `SchemaView`: `BASIC` leaves the definition out; unspecified means `default`.
fn apply_view(mut schema: v1::Schema, view: i32, default: v1::SchemaView) -> v1::Schema {
    let view = v1::SchemaView::try_from(view)
        .ok()
        .filter(|v| *v != v1::SchemaView::Unspecified)
        .unwrap_or(default);
    if view == v1::SchemaView::Basic {
        schema.definition.clear();
    }
    schema
}

/// The parse error of a definition as the API reports it.
fn definition_error(e: SchemaError) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// Parses a schema resource's definition; `INVALID_ARGUMENT` with the parser's message.
fn parse_definition(schema: &v1::Schema) -> Result<std::sync::Arc<ParsedSchema>, ApiError> {
    if schema.definition.is_empty() {
        return Err(ApiError::invalid(
            "Invalid schema definition: the definition must not be empty",
        ));
    }
    schema_validation::parse(schema.r#type, &schema.definition).map_err(definition_error)
}

/// Decodes a stored schema document.
fn decode(bytes: &[u8]) -> Result<v1::Schema, ApiError> {
    v1::Schema::decode(bytes).map_err(|e| {
        ApiError::new(
            tonic::Code::Internal,
            format!("a stored schema cannot be decoded: {e}"),
        )
    })
}

/// The creation time of a revision, for ordering.
fn created(schema: &v1::Schema) -> (i64, i32) {
    schema
        .revision_create_time
        .as_ref()
        .map_or((0, 0), |t| (t.seconds, t.nanos))
}

impl PubSub {
    /// Every revision of `name`, newest first; empty when the schema does not exist.
    pub(super) async fn schema_revisions(
        &self,
        name: &SchemaName,
    ) -> Result<Vec<v1::Schema>, ApiError> {
        let prefix = format!("{}@", name.name);
        let mut revisions = Vec::new();
        let mut page = converge_core::PageRequest::default();
        loop {
            let answer = self
                .store()
                .list_documents(REVISION_KIND, &prefix, page.clone())
                .await
                .map_err(store_failure)?;
            for (_, bytes) in &answer.items {
                revisions.push(decode(bytes)?);
            }
            if answer.next_page_token.is_empty() {
                break;
            }
            page.page_token = answer.next_page_token;
        }
        revisions.sort_by_key(|r| std::cmp::Reverse(created(r)));
        Ok(revisions)
    }

    /// The newest revision of a schema; `NOT_FOUND` when it does not exist.
    pub(super) async fn schema_head(&self, name: &SchemaName) -> Result<v1::Schema, ApiError> {
        let head = self
            .store()
            .get_document(HEAD_KIND, &name.name)
            .await
            .map_err(store_failure)?;
        match head {
            Some(bytes) => decode(&bytes),
            None => Err(schema_not_found(name)),
        }
    }

    /// The revision a name addresses: the one after `@`, or the newest.
    async fn schema_at(&self, name: &SchemaName) -> Result<v1::Schema, ApiError> {
        let Some(revision) = &name.revision else {
            return self.schema_head(name).await;
        };
        let stored = self
            .store()
            .get_document(REVISION_KIND, &name.revision_key(revision))
            .await
            .map_err(store_failure)?;
        match stored {
            Some(bytes) => decode(&bytes),
            None => Err(schema_not_found(name)),
        }
    }

    /// Stores `schema` as a new revision of `name` (and as its head); returns it as stored.
    async fn write_revision(
        &self,
        name: &SchemaName,
        mut schema: v1::Schema,
        existing: &[v1::Schema],
    ) -> Result<v1::Schema, ApiError> {
        let mut revision = new_revision_id();
        while existing.iter().any(|r| r.revision_id == revision) {
            revision = new_revision_id();
        }
        schema.name.clone_from(&name.name);
        schema.revision_id.clone_from(&revision);
        let mut now = self.now();
        // Revisions are ordered by creation time: keep it strictly increasing even if two
        // commits fall on the same clock reading.
        if let Some(newest) = existing.first().and_then(|r| r.revision_create_time) {
            let floor = SystemTime::try_from(newest).unwrap_or(now);
            if now <= floor {
                now = floor + std::time::Duration::from_nanos(1000);
            }
        }
        schema.revision_create_time = Some(convert::timestamp(now));
        let bytes = convert::encode(&schema);
        self.store()
            .put_document(REVISION_KIND, &name.revision_key(&revision), bytes.clone())
            .await
            .map_err(store_failure)?;
        self.store()
            .put_document(HEAD_KIND, &name.name, bytes)
            .await
            .map_err(store_failure)?;
        tracing::debug!(schema = %name.name, revision = %revision, "schema revision written");
        Ok(schema)
    }

    /// CreateSchema: parses the definition and stores the first revision.
    pub async fn create_schema(
        &self,
        req: v1::CreateSchemaRequest,
    ) -> Result<v1::Schema, ApiError> {
        let project = ProjectId::parse(&req.parent)?;
        let schema = req.schema.ok_or_else(|| {
            ApiError::invalid("Invalid CreateSchemaRequest: the schema is required")
        })?;
        let id = if req.schema_id.is_empty() {
            // The id may also come as the last segment of the schema's own name.
            SchemaName::parse(&schema.name).map(|n| n.id).map_err(|_| {
                ApiError::invalid("Invalid CreateSchemaRequest: schema_id is required")
            })?
        } else {
            req.schema_id.clone()
        };
        let name = SchemaName::parse(&format!("{project}/schemas/{id}"))?;
        parse_definition(&schema)?;
        let _guard = SCHEMA_WRITES.lock().await;
        let exists = self
            .store()
            .get_document(HEAD_KIND, &name.name)
            .await
            .map_err(store_failure)?;
        if exists.is_some() {
            return Err(super::already_exists(&name.id));
        }
        let fresh = v1::Schema {
            r#type: schema.r#type,
            definition: schema.definition,
            ..Default::default()
        };
        self.write_revision(&name, fresh, &[]).await
    }

    /// GetSchema: a schema's newest revision, or the revision its name names; full by default.
    pub async fn get_schema(&self, req: v1::GetSchemaRequest) -> Result<v1::Schema, ApiError> {
        let name = SchemaName::parse(&req.name)?;
        let schema = self.schema_at(&name).await?;
        Ok(apply_view(schema, req.view, v1::SchemaView::Full))
    }

    /// ListSchemas: one page of a project's schemas (their newest revisions), by name; without
    /// definitions unless the view is `FULL`.
    pub async fn list_schemas(
        &self,
        req: v1::ListSchemasRequest,
    ) -> Result<v1::ListSchemasResponse, ApiError> {
        let project = ProjectId::parse(&req.parent)?;
        let page = page_request(req.page_size, req.page_token)?;
        let prefix = format!("{project}/schemas/");
        let answer = self
            .store()
            .list_documents(HEAD_KIND, &prefix, page)
            .await
            .map_err(store_failure)?;
        let schemas = answer
            .items
            .iter()
            .map(|(_, bytes)| decode(bytes).map(|s| apply_view(s, req.view, v1::SchemaView::Basic)))
            .collect::<Result<_, _>>()?;
        Ok(v1::ListSchemasResponse {
            schemas,
            next_page_token: answer.next_page_token,
        })
    }

    /// ListSchemaRevisions: one page of a schema's revisions, newest first. The page token is
    /// the revision id the next page starts at.
    pub async fn list_schema_revisions(
        &self,
        req: v1::ListSchemaRevisionsRequest,
    ) -> Result<v1::ListSchemaRevisionsResponse, ApiError> {
        let name = SchemaName::parse(&req.name)?;
        let page = page_request(req.page_size, req.page_token)?;
        let revisions = self.schema_revisions(&name).await?;
        if revisions.is_empty() {
            return Err(schema_not_found(&name));
        }
        let start = if page.page_token.is_empty() {
            0
        } else {
            revisions
                .iter()
                .position(|r| r.revision_id == page.page_token)
                .ok_or_else(|| ApiError::invalid("Invalid page_token"))?
        };
        let size = if page.page_size == 0 {
            revisions.len()
        } else {
            page.page_size
        };
        let end = (start + size).min(revisions.len());
        let next_page_token = revisions
            .get(end)
            .map(|r| r.revision_id.clone())
            .unwrap_or_default();
        let schemas = revisions[start..end]
            .iter()
            .cloned()
            .map(|s| apply_view(s, req.view, v1::SchemaView::Basic))
            .collect();
        Ok(v1::ListSchemaRevisionsResponse {
            schemas,
            next_page_token,
        })
    }

    /// CommitSchema: a new revision with the given definition (same type as the schema).
    pub async fn commit_schema(
        &self,
        req: v1::CommitSchemaRequest,
    ) -> Result<v1::Schema, ApiError> {
        let name = SchemaName::parse(&req.name)?;
        let schema = req.schema.ok_or_else(|| {
            ApiError::invalid("Invalid CommitSchemaRequest: the schema is required")
        })?;
        let _guard = SCHEMA_WRITES.lock().await;
        let revisions = self.schema_revisions(&name).await?;
        let Some(newest) = revisions.first() else {
            return Err(schema_not_found(&name));
        };
        let kind = if schema.r#type == 0 {
            newest.r#type
        } else {
            schema.r#type
        };
        if kind != newest.r#type {
            return Err(ApiError::invalid(
                "Invalid schema: a revision must have the type of the schema",
            ));
        }
        let revision = v1::Schema {
            r#type: kind,
            definition: schema.definition,
            ..Default::default()
        };
        parse_definition(&revision)?;
        self.write_revision(&name, revision, &revisions).await
    }

    /// RollbackSchema: a new revision copying the definition of an older one.
    pub async fn rollback_schema(
        &self,
        req: v1::RollbackSchemaRequest,
    ) -> Result<v1::Schema, ApiError> {
        let name = SchemaName::parse(&req.name)?;
        if req.revision_id.is_empty() {
            return Err(ApiError::invalid(
                "Invalid RollbackSchemaRequest: revision_id is required",
            ));
        }
        let _guard = SCHEMA_WRITES.lock().await;
        let revisions = self.schema_revisions(&name).await?;
        if revisions.is_empty() {
            return Err(schema_not_found(&name));
        }
        let Some(old) = revisions.iter().find(|r| r.revision_id == req.revision_id) else {
            return Err(not_found(&format!("{}@{}", name.id, req.revision_id)));
        };
        let revision = v1::Schema {
            r#type: old.r#type,
            definition: old.definition.clone(),
            ..Default::default()
        };
        self.write_revision(&name, revision, &revisions).await
    }

    /// DeleteSchemaRevision: removes one revision (never the last one); answers the deleted
    /// revision.
    pub async fn delete_schema_revision(
        &self,
        req: v1::DeleteSchemaRevisionRequest,
    ) -> Result<v1::Schema, ApiError> {
        let mut name = SchemaName::parse(&req.name)?;
        #[allow(deprecated)] // the deprecated field is still honoured when the name has no `@`
        if name.revision.is_none() && !req.revision_id.is_empty() {
            name.revision = Some(req.revision_id.clone());
        }
        let Some(revision) = name.revision.clone() else {
            return Err(ApiError::invalid(
                "Invalid DeleteSchemaRevisionRequest: the name must include a revision id \
                 (projects/p/schemas/s@revision)",
            ));
        };
        let _guard = SCHEMA_WRITES.lock().await;
        let revisions = self.schema_revisions(&name).await?;
        let Some(position) = revisions.iter().position(|r| r.revision_id == revision) else {
            return Err(not_found(&format!("{}@{revision}", name.id)));
        };
        if revisions.len() == 1 {
            return Err(ApiError::new(
                tonic::Code::FailedPrecondition,
                format!(
                    "Cannot delete revision {revision}: it is the only revision of schema {}; \
                     delete the schema instead",
                    name.name
                ),
            ));
        }
        if position == 0 {
            let new_head = convert::encode(&revisions[1]);
            self.store()
                .put_document(HEAD_KIND, &name.name, new_head)
                .await
                .map_err(store_failure)?;
        }
        self.store()
            .delete_document(REVISION_KIND, &name.revision_key(&revision))
            .await
            .map_err(store_failure)?;
        tracing::debug!(schema = %name.name, revision = %revision, "schema revision deleted");
        Ok(revisions[position].clone())
    }

    /// DeleteSchema: removes every revision and the schema's IAM policy; topics bound to it then
    /// show `_deleted-schema_` and refuse publishes.
    pub async fn delete_schema(&self, req: v1::DeleteSchemaRequest) -> Result<(), ApiError> {
        let name = SchemaName::parse(&req.name)?;
        if name.revision.is_some() {
            return Err(ApiError::invalid(format!(
                "Invalid schema name: \"{}\" names a revision; use DeleteSchemaRevision",
                req.name
            )));
        }
        let _guard = SCHEMA_WRITES.lock().await;
        let existed = self
            .store()
            .delete_document(HEAD_KIND, &name.name)
            .await
            .map_err(store_failure)?;
        if !existed {
            return Err(schema_not_found(&name));
        }
        for revision in self.schema_revisions(&name).await? {
            self.store()
                .delete_document(REVISION_KIND, &name.revision_key(&revision.revision_id))
                .await
                .map_err(store_failure)?;
        }
        self.forget_iam_policy(&name.name).await?;
        self.detach_schema_from_topics(&name).await?;
        tracing::debug!(schema = %name.name, "schema deleted");
        Ok(())
    }

    /// Rewrites the settings of every topic of the schema's project that uses it to
    /// `_deleted-schema_`.
    async fn detach_schema_from_topics(&self, name: &SchemaName) -> Result<(), ApiError> {
        let project = ProjectId::parse(name.name.split("/schemas/").next().unwrap_or_default())?;
        let mut page = converge_core::PageRequest::default();
        loop {
            let answer = self
                .store()
                .list_topics(&project, page.clone())
                .await
                .map_err(ApiError::from)?;
            for topic in answer.items {
                let mut resource = convert::topic_to_proto(&topic)?;
                let Some(settings) = resource.schema_settings.as_mut() else {
                    continue;
                };
                if settings.schema != name.name {
                    continue;
                }
                settings.schema = DELETED_SCHEMA.to_owned();
                let updated = super::publisher::topic_from_proto(&resource, topic.name.clone())?;
                self.store()
                    .update_topic(updated)
                    .await
                    .map_err(ApiError::from)?;
                tracing::debug!(topic = %topic.name, schema = %name.name, "topic schema deleted");
            }
            if answer.next_page_token.is_empty() {
                return Ok(());
            }
            page.page_token = answer.next_page_token;
        }
    }

    /// ValidateSchema: whether a definition parses.
    pub async fn validate_schema(
        &self,
        req: v1::ValidateSchemaRequest,
    ) -> Result<v1::ValidateSchemaResponse, ApiError> {
        ProjectId::parse(&req.parent)?;
        let schema = req.schema.ok_or_else(|| {
            ApiError::invalid("Invalid ValidateSchemaRequest: the schema is required")
        })?;
        parse_definition(&schema)?;
        Ok(v1::ValidateSchemaResponse {})
    }

    /// ValidateMessage: whether a message matches a stored schema (by name, optionally with
    /// `@revision`) or an inline one, in the given encoding.
    pub async fn validate_message(
        &self,
        req: v1::ValidateMessageRequest,
    ) -> Result<v1::ValidateMessageResponse, ApiError> {
        use v1::validate_message_request::SchemaSpec;
        ProjectId::parse(&req.parent)?;
        let schema = match req.schema_spec {
            Some(SchemaSpec::Name(text)) => self.schema_at(&SchemaName::parse(&text)?).await?,
            Some(SchemaSpec::Schema(schema)) => schema,
            None => {
                return Err(ApiError::invalid(
                    "Invalid ValidateMessageRequest: a schema name or schema is required",
                ));
            }
        };
        let parsed = parse_definition(&schema)?;
        schema_validation::validate(&parsed, req.encoding, &req.message)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(v1::ValidateMessageResponse {})
    }

    /// Checks a topic's schema settings as CreateTopic and UpdateTopic do: the schema exists and
    /// the revision range names revisions of it, first not after last.
    pub(super) async fn check_schema_settings(
        &self,
        settings: &v1::SchemaSettings,
    ) -> Result<(), ApiError> {
        if settings.schema == DELETED_SCHEMA {
            return Err(ApiError::invalid(
                "Invalid schema settings: the schema has been deleted",
            ));
        }
        let name = SchemaName::parse(&settings.schema)?;
        if name.revision.is_some() {
            return Err(ApiError::invalid(format!(
                "Invalid schema settings: schema \"{}\" must not name a revision; use \
                 first_revision_id and last_revision_id",
                settings.schema
            )));
        }
        let revisions = self.schema_revisions(&name).await?;
        if revisions.is_empty() {
            return Err(schema_not_found(&name));
        }
        let position = |id: &str, field: &str| {
            revisions
                .iter()
                .position(|r| r.revision_id == id)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid schema settings: {field} \"{id}\" is not a revision of {}",
                        name.name
                    ))
                })
        };
        let first = (!settings.first_revision_id.is_empty())
            .then(|| position(&settings.first_revision_id, "first_revision_id"))
            .transpose()?;
        let last = (!settings.last_revision_id.is_empty())
            .then(|| position(&settings.last_revision_id, "last_revision_id"))
            .transpose()?;
        // Newest first: the first revision must not come after (sit before) the last one.
        if let (Some(first), Some(last)) = (first, last)
            && first < last
        {
            return Err(ApiError::invalid(
                "Invalid schema settings: first_revision_id is newer than last_revision_id",
            ));
        }
        Ok(())
    }

    /// Validates every message against the revisions the settings allow and adds the
    /// attributes the real service adds (schema name, encoding, revision that accepted it).
    /// The first message that no allowed revision accepts fails the whole publish.
    pub(super) async fn validate_for_topic(
        &self,
        settings: &v1::SchemaSettings,
        messages: &mut [v1::PubsubMessage],
    ) -> Result<(), ApiError> {
        if settings.schema == DELETED_SCHEMA {
            return Err(ApiError::invalid(
                "The topic's schema has been deleted: messages cannot be validated",
            ));
        }
        let name = SchemaName::parse(&settings.schema)?;
        let revisions = allowed_revisions(self.schema_revisions(&name).await?, settings);
        if revisions.is_empty() {
            return Err(ApiError::invalid(format!(
                "No revision of schema {} is in the topic's revision range",
                name.name
            )));
        }
        let parsed = revisions
            .iter()
            .map(|r| parse_definition(r).map(|p| (r.revision_id.as_str(), p)))
            .collect::<Result<Vec<_>, _>>()?;
        let encoding = match v1::Encoding::try_from(settings.encoding) {
            Ok(v1::Encoding::Binary) => "BINARY",
            _ => "JSON",
        };
        for (index, message) in messages.iter_mut().enumerate() {
            let mut first_error = None;
            let accepted = parsed.iter().find(|(_, schema)| {
                match schema_validation::validate(schema, settings.encoding, &message.data) {
                    Ok(()) => true,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        false
                    }
                }
            });
            let Some((revision, _)) = accepted else {
                let why = first_error.map(|e| e.to_string()).unwrap_or_default();
                return Err(ApiError::invalid(format!(
                    "Message {index} failed schema validation against {}: {why}",
                    name.name
                )));
            };
            let attributes = &mut message.attributes;
            attributes.insert(SCHEMA_NAME_ATTRIBUTE.to_owned(), name.name.clone());
            attributes.insert(SCHEMA_ENCODING_ATTRIBUTE.to_owned(), encoding.to_owned());
            attributes.insert(SCHEMA_REVISION_ATTRIBUTE.to_owned(), (*revision).to_owned());
        }
        Ok(())
    }
}

/// The revisions (newest first) within the settings' inclusive range; a bound naming a revision
/// that no longer exists is ignored.
fn allowed_revisions(revisions: Vec<v1::Schema>, settings: &v1::SchemaSettings) -> Vec<v1::Schema> {
    let time_of = |id: &str| {
        revisions
            .iter()
            .find(|r| !id.is_empty() && r.revision_id == id)
            .map(created)
    };
    let from = time_of(&settings.first_revision_id);
    let to = time_of(&settings.last_revision_id);
    revisions
        .iter()
        .filter(|r| from.is_none_or(|f| created(r) >= f) && to.is_none_or(|t| created(r) <= t))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_parse_with_and_without_revision() {
        let name = SchemaName::parse("projects/p/schemas/orders").expect("valid");
        assert_eq!(name.name, "projects/p/schemas/orders");
        assert_eq!(name.id, "orders");
        assert_eq!(name.revision, None);
        let name = SchemaName::parse("projects/p/schemas/orders@c7cfa2a8").expect("valid");
        assert_eq!(name.name, "projects/p/schemas/orders");
        assert_eq!(name.revision.as_deref(), Some("c7cfa2a8"));
        for bad in [
            "projects/p/schemas/",
            "projects/p/topics/orders",
            "projects/p/schemas/orders@",
            "projects/p/schemas/o",
            "projects/p/schemas/orders/x",
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revision_ids_are_eight_hex_digits() {
        let id = new_revision_id();
        assert_eq!(id.len(), 8);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn the_basic_view_drops_only_the_definition() {
        let schema = v1::Schema {
            name: "projects/p/schemas/s".into(),
            r#type: 2,
            definition: "{}".into(),
            revision_id: "abcdef12".into(),
            revision_create_time: None,
        };
        let basic = apply_view(schema.clone(), 0, v1::SchemaView::Basic);
        assert!(basic.definition.is_empty());
        assert_eq!(basic.revision_id, "abcdef12");
        let full = apply_view(
            schema.clone(),
            v1::SchemaView::Full as i32,
            v1::SchemaView::Basic,
        );
        assert_eq!(full, schema);
    }

    #[test]
    fn the_revision_range_is_inclusive_by_creation_time() {
        let revision = |id: &str, seconds: i64| v1::Schema {
            revision_id: id.into(),
            revision_create_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        };
        let revisions = vec![revision("c", 3), revision("b", 2), revision("a", 1)];
        let ids = |settings: v1::SchemaSettings| {
            allowed_revisions(revisions.clone(), &settings)
                .into_iter()
                .map(|r| r.revision_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(v1::SchemaSettings::default()), ["c", "b", "a"]);
        let range = v1::SchemaSettings {
            first_revision_id: "b".into(),
            ..Default::default()
        };
        assert_eq!(ids(range), ["c", "b"]);
        let range = v1::SchemaSettings {
            first_revision_id: "a".into(),
            last_revision_id: "b".into(),
            ..Default::default()
        };
        assert_eq!(ids(range), ["b", "a"]);
    }
}
