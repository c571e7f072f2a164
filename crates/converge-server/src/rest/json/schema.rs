//! proto3 JSON of the SchemaService messages: `Schema` and the bodies of its create, list,
//! commit, rollback and validate RPCs.

use super::codec::{Bytes, Enum, Msg, Opt, Repeated, Str};
use super::object::proto_message;
use super::wkt::Ts;
use crate::proto::{
    self, CommitSchemaRequest, CreateSchemaRequest, ListSchemaRevisionsResponse,
    ListSchemasResponse, RollbackSchemaRequest, Schema, ValidateMessageRequest,
    ValidateMessageResponse, ValidateSchemaRequest, ValidateSchemaResponse,
    validate_message_request,
};

proto_message! {
    Schema = "google.pubsub.v1.Schema" {
        name: Str,
        r#type: Enum<proto::schema::Type>,
        definition: Str,
        revision_id: Str,
        revision_create_time: Opt<Ts>,
    }
}

proto_message! {
    CreateSchemaRequest = "google.pubsub.v1.CreateSchemaRequest" {
        parent: Str,
        schema: Opt<Msg<Schema>>,
        schema_id: Str,
    }
}

proto_message! {
    ListSchemasResponse = "google.pubsub.v1.ListSchemasResponse" {
        schemas: Repeated<Msg<Schema>>,
        next_page_token: Str,
    }
}

proto_message! {
    ListSchemaRevisionsResponse = "google.pubsub.v1.ListSchemaRevisionsResponse" {
        schemas: Repeated<Msg<Schema>>,
        next_page_token: Str,
    }
}

proto_message! {
    CommitSchemaRequest = "google.pubsub.v1.CommitSchemaRequest" {
        name: Str,
        schema: Opt<Msg<Schema>>,
    }
}

proto_message! {
    RollbackSchemaRequest = "google.pubsub.v1.RollbackSchemaRequest" {
        name: Str,
        revision_id: Str,
    }
}

proto_message! {
    ValidateSchemaRequest = "google.pubsub.v1.ValidateSchemaRequest" {
        parent: Str,
        schema: Opt<Msg<Schema>>,
    }
}

proto_message! {
    ValidateSchemaResponse = "google.pubsub.v1.ValidateSchemaResponse" {}
}

proto_message! {
    ValidateMessageRequest = "google.pubsub.v1.ValidateMessageRequest" {
        parent: Str,
        message: Bytes,
        encoding: Enum<proto::Encoding>,
    }
    oneof schema_spec {
        name => validate_message_request::SchemaSpec::Name: Str,
        schema => validate_message_request::SchemaSpec::Schema: Msg<Schema>,
    }
}

proto_message! {
    ValidateMessageResponse = "google.pubsub.v1.ValidateMessageResponse" {}
}
