//! `converge topics create|list|get|delete`.

use std::collections::HashMap;

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeleteTopicRequest, GetTopicRequest, ListTopicsRequest, Topic,
};
use serde_json::{Value, json};

use super::Context;
use crate::cli::{TopicCreateArgs, TopicsCommand};
use crate::client::ClientError;
use crate::output::{details, duration_json, duration_text, pairs, pairs_json, table};
use crate::parse::to_proto_duration;
use converge_core::retry::{LABEL_DEDUP_WINDOW, format_label_duration};

/// Topics asked for per page when listing.
const PAGE_SIZE: i32 = 1000;

/// Runs one topics command.
pub async fn run(ctx: &Context, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Create(args) => create(ctx, args).await,
        TopicsCommand::List => list(ctx).await,
        TopicsCommand::Get(arg) => {
            let topic = arg.name.expand(&ctx.project)?.to_string();
            tracing::debug!(topic = %topic, "get topic");
            let topic = ctx
                .clients
                .publisher
                .clone()
                .get_topic(GetTopicRequest { topic })
                .await
                .map_err(ClientError::from)?;
            show(ctx, &topic.into_inner())
        }
        TopicsCommand::Delete(arg) => {
            let topic = arg.name.expand(&ctx.project)?.to_string();
            tracing::debug!(topic = %topic, "delete topic");
            ctx.clients
                .publisher
                .clone()
                .delete_topic(DeleteTopicRequest {
                    topic: topic.clone(),
                })
                .await
                .map_err(ClientError::from)?;
            ctx.output.done(
                &json!({ "deleted": topic }),
                &format!("Deleted topic [{topic}]."),
            )?;
            Ok(())
        }
    }
}

async fn create(ctx: &Context, args: TopicCreateArgs) -> anyhow::Result<()> {
    let name = args.name.expand(&ctx.project)?.to_string();
    let request = create_request(name, args);
    tracing::debug!(topic = %request.name, "create topic");
    let topic = ctx
        .clients
        .publisher
        .clone()
        .create_topic(request)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    show(ctx, &topic)
}

/// The topic to create: labels, with converge's own settings as `converge-*` labels.
fn create_request(name: String, args: TopicCreateArgs) -> Topic {
    let mut labels: HashMap<String, String> = args.labels.into_iter().collect();
    if let Some(window) = args.dedup_window {
        labels.insert(LABEL_DEDUP_WINDOW.to_owned(), format_label_duration(window));
    }
    Topic {
        name,
        labels,
        message_retention_duration: args.retention.map(to_proto_duration),
        ..Topic::default()
    }
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let mut topics = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTopicsRequest {
            project: ctx.project.to_string(),
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = ctx
            .clients
            .publisher
            .clone()
            .list_topics(request)
            .await
            .map_err(ClientError::from)?
            .into_inner();
        topics.extend(page.topics);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let json = Value::Array(topics.iter().map(topic_json).collect());
    ctx.output.emit(&json, || {
        let mut t = table(&["NAME", "RETENTION", "LABELS"]);
        for topic in &topics {
            t.add_row(vec![
                topic.name.clone(),
                duration_text(topic.message_retention_duration.as_ref()),
                pairs(&topic.labels),
            ]);
        }
        t
    })?;
    Ok(())
}

fn show(ctx: &Context, topic: &Topic) -> anyhow::Result<()> {
    ctx.output.emit(&topic_json(topic), || {
        details(vec![
            ("name", topic.name.clone()),
            (
                "messageRetentionDuration",
                duration_text(topic.message_retention_duration.as_ref()),
            ),
            ("labels", pairs(&topic.labels)),
        ])
    })?;
    Ok(())
}

/// A topic in proto3 JSON, limited to the fields converge gives meaning to.
fn topic_json(topic: &Topic) -> Value {
    let mut value = json!({ "name": topic.name, "labels": pairs_json(&topic.labels) });
    if topic.message_retention_duration.is_some() {
        value["messageRetentionDuration"] =
            duration_json(topic.message_retention_duration.as_ref());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::parse::topic_name;

    #[test]
    fn dedup_window_becomes_a_label_beside_user_labels() {
        let args = TopicCreateArgs {
            name: topic_name("orders").unwrap(),
            labels: vec![("team".into(), "core".into())],
            retention: Some(Duration::from_secs(86_400)),
            dedup_window: Some(Duration::from_secs(3_600)),
        };
        let topic = create_request("projects/p/topics/orders".into(), args);
        assert_eq!(topic.labels.get("team").map(String::as_str), Some("core"));
        assert_eq!(
            topic.labels.get(LABEL_DEDUP_WINDOW).map(String::as_str),
            Some("1h")
        );
        assert_eq!(
            topic.message_retention_duration.map(|d| d.seconds),
            Some(86_400)
        );
        let json = topic_json(&topic);
        assert_eq!(json["messageRetentionDuration"], "86400s");
        assert_eq!(json["labels"]["team"], "core");
    }

    #[test]
    fn no_options_means_no_labels_and_no_retention() {
        let args = TopicCreateArgs {
            name: topic_name("orders").unwrap(),
            labels: vec![],
            retention: None,
            dedup_window: None,
        };
        let topic = create_request("projects/p/topics/orders".into(), args);
        assert!(topic.labels.is_empty());
        assert!(topic.message_retention_duration.is_none());
        assert!(topic_json(&topic).get("messageRetentionDuration").is_none());
    }
}
