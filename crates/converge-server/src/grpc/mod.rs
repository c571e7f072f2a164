//! The gRPC door: `google.pubsub.v1.Publisher`, `Subscriber`, `SchemaService` and the IAM
//! mixin `google.iam.v1.IAMPolicy`, each method a call into [`crate::service::PubSub`].

pub mod iam;
mod publisher;
pub mod schema;
mod streaming_pull;
pub mod stubs;
mod subscriber;

use std::future::Future;

use axum::Router;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

pub use iam::IamApi;
pub use publisher::PublisherApi;
pub use schema::SchemaApi;
pub use subscriber::SubscriberApi;

use crate::service::{ApiError, PubSub};
use crate::state::AppState;
use iam::stubs::i_a_m_policy_server::IAMPolicyServer as IamPolicyServer;
use schema::stubs::schema_service_server::SchemaServiceServer;
use stubs::publisher_server::PublisherServer;
use stubs::subscriber_server::SubscriberServer;

/// `google.protobuf.Empty`, as the generated stubs name it (prost maps it to `()`).
pub type Empty = ();

/// Largest gRPC message either way. A publish request may carry 10 MB of data and a pull
/// response as much plus metadata, well above tonic's 4 MiB default.
pub const MAX_MESSAGE_SIZE: usize = 20 * 1024 * 1024;

/// The gRPC services as axum routes (`/google.pubsub.v1.Publisher/*`, `…Subscriber/*`), to
/// merge with the REST routes on the same port.
pub fn router(state: AppState) -> Router {
    let publisher = PublisherServer::new(PublisherApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let subscriber = SubscriberServer::new(SubscriberApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let schemas = SchemaServiceServer::new(SchemaApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let iam = IamPolicyServer::new(IamApi::new(state));
    Router::new()
        .route_service(&service_path::<PublisherServer<PublisherApi>>(), publisher)
        .route_service(
            &service_path::<SubscriberServer<SubscriberApi>>(),
            subscriber,
        )
        .route_service(&service_path::<SchemaServiceServer<SchemaApi>>(), schemas)
        .route_service(&service_path::<IamPolicyServer<IamApi>>(), iam)
}

/// The route catching every method of a service: `/google.pubsub.v1.Publisher/{*method}`.
fn service_path<S: NamedService>() -> String {
    format!("/{}/{{*method}}", S::NAME)
}

/// Runs one unary RPC: unwraps the request, calls the service (or answers `UNAVAILABLE` while
/// the store opens) and maps the error to a gRPC status.
async fn unary<Req, Resp, F, Fut>(
    state: &AppState,
    request: Request<Req>,
    call: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(PubSub, Req) -> Fut,
    Fut: Future<Output = Result<Resp, ApiError>>,
{
    let service = state.service()?.clone();
    let answer = call(service, request.into_inner()).await?;
    Ok(Response::new(answer))
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`), if it sent one and it parses.
pub(crate) fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_grpc_timeout_header() {
        use std::time::Duration;
        let with = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(with("5S"), Some(Duration::from_secs(5)));
        assert_eq!(with("2500m"), Some(Duration::from_millis(2500)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("S"), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn routes_use_the_real_service_names() {
        assert_eq!(
            service_path::<PublisherServer<PublisherApi>>(),
            "/google.pubsub.v1.Publisher/{*method}"
        );
        assert_eq!(
            service_path::<SubscriberServer<SubscriberApi>>(),
            "/google.pubsub.v1.Subscriber/{*method}"
        );
        assert_eq!(
            service_path::<SchemaServiceServer<SchemaApi>>(),
            "/google.pubsub.v1.SchemaService/{*method}"
        );
        assert_eq!(
            service_path::<IamPolicyServer<IamApi>>(),
            "/google.iam.v1.IAMPolicy/{*method}"
        );
    }
}
