//! `converge publish TOPIC [DATA|-]`: one message from the command line, or one message per line
//! of stdin, sent in batches that stay inside the API's request limits.

use std::collections::HashMap;
use std::io::IsTerminal;

use converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{PublishRequest, PubsubMessage};
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Context, UsageError};
use crate::cli::PublishArgs;
use crate::client::ClientError;

/// Most messages in one Publish call (the API's limit).
const MAX_BATCH_MESSAGES: usize = 1000;
/// Most encoded bytes of messages in one Publish call: below the API's 10 MB request limit, with
/// room for the topic name and framing.
const MAX_BATCH_BYTES: usize = 9_000_000;

/// Runs `converge publish`.
pub async fn run(ctx: &Context, args: PublishArgs) -> anyhow::Result<()> {
    let topic = args.topic.expand(&ctx.project)?.to_string();
    let template = Template {
        attributes: args.attributes.iter().cloned().collect(),
        ordering_key: args.ordering_key.clone().unwrap_or_default(),
        idempotency_key: args.idempotency_key.clone(),
    };
    let mut publisher = Publisher {
        ctx,
        topic,
        ids: Vec::new(),
    };
    match args.data.as_deref() {
        Some(data) if data != "-" => {
            let message = template.message(data.as_bytes().to_vec(), None);
            publisher.send(vec![message]).await?;
        }
        None if std::io::stdin().is_terminal() => {
            return Err(UsageError(
                "no message: give DATA (or '' for an attributes-only message), or pipe lines into stdin".into(),
            )
            .into());
        }
        _ => publish_lines(&mut publisher, &template).await?,
    }
    if ctx.output.is_json() {
        ctx.output
            .done(&json!({ "messageIds": publisher.ids }), "")?;
    }
    Ok(())
}

/// Publishes each non-empty line of stdin as one message, batch by batch, so that ids appear
/// while a long input is still being read.
async fn publish_lines(publisher: &mut Publisher<'_>, template: &Template) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut batch = Batch::default();
    let mut line = Vec::new();
    let mut number = 0_u64;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        number += 1;
        let data = strip_newline(&line);
        if data.is_empty() {
            continue;
        }
        if let Some(full) = batch.push(template.message(data.to_vec(), Some(number))) {
            publisher.send(full).await?;
        }
    }
    let rest = batch.take();
    if !rest.is_empty() {
        publisher.send(rest).await?;
    }
    if publisher.ids.is_empty() {
        return Err(UsageError("stdin had no non-empty line: nothing to publish".into()).into());
    }
    Ok(())
}

/// A line without its `\n` or `\r\n`.
fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What every message of one run shares.
#[derive(Debug)]
struct Template {
    attributes: HashMap<String, String>,
    ordering_key: String,
    idempotency_key: Option<String>,
}

impl Template {
    /// A message with this data. Reading stdin, `line` numbers the idempotency key, so that every
    /// line has its own key and a re-run of the same input is recognised line by line.
    fn message(&self, data: Vec<u8>, line: Option<u64>) -> PubsubMessage {
        let mut attributes = self.attributes.clone();
        if let Some(key) = &self.idempotency_key {
            let key = line.map_or_else(|| key.clone(), |n| format!("{key}-{n}"));
            attributes.insert(IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(), key);
        }
        PubsubMessage {
            data,
            attributes,
            ordering_key: self.ordering_key.clone(),
            ..PubsubMessage::default()
        }
    }
}

/// Messages gathered for one Publish call.
#[derive(Debug, Default)]
struct Batch {
    messages: Vec<PubsubMessage>,
    bytes: usize,
}

impl Batch {
    /// Adds a message; returns the batch to send first when the message would not fit in it.
    /// A message too large for any batch is sent alone and the broker judges it.
    fn push(&mut self, message: PubsubMessage) -> Option<Vec<PubsubMessage>> {
        let size = framed_len(&message);
        let full = !self.messages.is_empty()
            && (self.messages.len() >= MAX_BATCH_MESSAGES || self.bytes + size > MAX_BATCH_BYTES);
        let ready = full.then(|| self.take());
        self.bytes += size;
        self.messages.push(message);
        debug_assert!(self.messages.len() <= MAX_BATCH_MESSAGES);
        ready
    }

    /// Empties the batch.
    fn take(&mut self) -> Vec<PubsubMessage> {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }
}

/// Bytes a message adds to a PublishRequest: its encoding plus the field tag and length prefix.
fn framed_len(message: &PubsubMessage) -> usize {
    let len = message.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Sends batches and remembers the ids.
struct Publisher<'a> {
    ctx: &'a Context,
    topic: String,
    ids: Vec<String>,
}

impl Publisher<'_> {
    async fn send(&mut self, messages: Vec<PubsubMessage>) -> anyhow::Result<()> {
        let count = messages.len();
        tracing::debug!(topic = %self.topic, count, "publish");
        let request = PublishRequest {
            topic: self.topic.clone(),
            messages,
        };
        let response = self
            .ctx
            .clients
            .publisher
            .clone()
            .publish(request)
            .await
            .map_err(ClientError::from)?;
        let ids = response.into_inner().message_ids;
        debug_assert_eq!(ids.len(), count, "one id per message");
        if !self.ctx.output.is_json() {
            crate::output::print(&ids.join("\n"))?;
        }
        self.ids.extend(ids);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(bytes: usize) -> PubsubMessage {
        PubsubMessage {
            data: vec![b'x'; bytes],
            ..PubsubMessage::default()
        }
    }

    #[test]
    fn batches_hold_at_most_a_thousand_messages() {
        let mut batch = Batch::default();
        let mut sent = Vec::new();
        for _ in 0..2_500 {
            if let Some(full) = batch.push(message(1)) {
                sent.push(full.len());
            }
        }
        sent.push(batch.take().len());
        assert_eq!(sent, [1000, 1000, 500]);
    }

    #[test]
    fn batches_stay_under_the_byte_limit() {
        let mut batch = Batch::default();
        let mut sent = Vec::new();
        for _ in 0..5 {
            if let Some(full) = batch.push(message(4_000_000)) {
                sent.push(full.iter().map(framed_len).sum::<usize>());
            }
        }
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            sent.iter()
                .all(|&bytes| bytes <= MAX_BATCH_BYTES && bytes > 4_000_000)
        );
        let oversized = batch.push(message(MAX_BATCH_BYTES + 1)).unwrap();
        assert_eq!(oversized.len(), 1, "the pending message goes first");
        assert_eq!(batch.take().len(), 1, "an oversized message is sent alone");
    }

    #[test]
    fn framed_len_matches_the_encoded_request() {
        let messages = vec![message(10), message(300), message(70_000)];
        let expected: usize = messages.iter().map(framed_len).sum();
        let request = PublishRequest {
            topic: String::new(),
            messages,
        };
        assert_eq!(request.encoded_len(), expected);
    }

    #[test]
    fn lines_lose_their_line_endings_only() {
        assert_eq!(strip_newline(b"a b\r\n"), b"a b");
        assert_eq!(strip_newline(b"a\n"), b"a");
        assert_eq!(strip_newline(b"a"), b"a");
        assert_eq!(strip_newline(b"a\r\r\n"), b"a\r");
    }

    #[test]
    fn idempotency_keys_are_numbered_per_line() {
        let template = Template {
            attributes: [("k".to_owned(), "v".to_owned())].into(),
            ordering_key: "o".into(),
            idempotency_key: Some("run1".into()),
        };
        let single = template.message(b"x".to_vec(), None);
        assert_eq!(single.attributes[IDEMPOTENCY_KEY_ATTRIBUTE], "run1");
        let line = template.message(b"x".to_vec(), Some(7));
        assert_eq!(line.attributes[IDEMPOTENCY_KEY_ATTRIBUTE], "run1-7");
        assert_eq!(
            (line.attributes["k"].as_str(), line.ordering_key.as_str()),
            ("v", "o")
        );
        let plain = Template {
            idempotency_key: None,
            ..template
        }
        .message(vec![], None);
        assert!(!plain.attributes.contains_key(IDEMPOTENCY_KEY_ATTRIBUTE));
    }
}
