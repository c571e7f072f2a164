//! `converge pull SUB [--max N] [--ack] [--wait]`: one unary Pull, optionally acknowledged.

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    AcknowledgeRequest, PullRequest, ReceivedMessage,
};
use serde_json::{Value, json};

use super::Context;
use crate::cli::PullArgs;
use crate::client::ClientError;
use crate::output::{pairs, pairs_json, payload, table, timestamp_json, timestamp_text};

/// Runs `converge pull`.
pub async fn run(ctx: &Context, args: PullArgs) -> anyhow::Result<()> {
    let subscription = args.subscription.expand(&ctx.project)?.to_string();
    tracing::debug!(subscription = %subscription, max = args.max, wait = args.wait, "pull");
    #[allow(deprecated)]
    // return_immediately is deprecated in the API but still the way to not wait
    let request = PullRequest {
        subscription: subscription.clone(),
        return_immediately: !args.wait,
        max_messages: args.max,
    };
    let response = ctx
        .clients
        .subscriber
        .clone()
        .pull(request)
        .await
        .map_err(ClientError::from)?;
    let received = response.into_inner().received_messages;
    if args.ack && !received.is_empty() {
        let ack_ids = received.iter().map(|m| m.ack_id.clone()).collect();
        tracing::debug!(subscription = %subscription, count = received.len(), "acknowledge");
        let request = AcknowledgeRequest {
            subscription,
            ack_ids,
        };
        ctx.clients
            .subscriber
            .clone()
            .acknowledge(request)
            .await
            .map_err(ClientError::from)?;
    }
    let json = Value::Array(
        received
            .iter()
            .map(|m| received_json(m, args.ack))
            .collect(),
    );
    if received.is_empty() && !ctx.output.is_json() {
        eprintln!("Listed 0 items.");
        return Ok(());
    }
    ctx.output.emit(&json, || {
        let mut t = table(&[
            "MESSAGE ID",
            "PUBLISH TIME",
            "ATTRIBUTES",
            "DATA",
            "DELIVERY ATTEMPT",
            "ACK ID",
        ]);
        for m in &received {
            let message = m.message.clone().unwrap_or_default();
            t.add_row(vec![
                message.message_id,
                timestamp_text(message.publish_time.as_ref()),
                pairs(&message.attributes),
                payload(&message.data).text,
                m.delivery_attempt.to_string(),
                m.ack_id.clone(),
            ]);
        }
        t
    })?;
    Ok(())
}

/// A received message as JSON: the API's fields, with the payload as text when it is UTF-8
/// (`dataEncoding` says which).
fn received_json(received: &ReceivedMessage, acked: bool) -> Value {
    let message = received.message.clone().unwrap_or_default();
    let data = payload(&message.data);
    json!({
        "ackId": received.ack_id,
        "messageId": message.message_id,
        "publishTime": timestamp_json(message.publish_time.as_ref()),
        "attributes": pairs_json(&message.attributes),
        "orderingKey": message.ordering_key,
        "data": data.text,
        "dataEncoding": data.encoding,
        "deliveryAttempt": received.delivery_attempt,
        "acked": acked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::PubsubMessage;

    #[test]
    fn received_messages_show_binary_data_as_base64() {
        let received = ReceivedMessage {
            ack_id: "a1".into(),
            message: Some(PubsubMessage {
                data: vec![0xff],
                message_id: "42".into(),
                attributes: [("k".to_owned(), "v".to_owned())].into(),
                publish_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                ordering_key: String::new(),
            }),
            delivery_attempt: 3,
        };
        let json = received_json(&received, true);
        assert_eq!(json["data"], "/w==");
        assert_eq!(json["dataEncoding"], "base64");
        assert_eq!(json["messageId"], "42");
        assert_eq!(json["deliveryAttempt"], 3);
        assert_eq!(json["publishTime"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(json["attributes"]["k"], "v");
        assert_eq!(json["acked"], true);
    }
}
