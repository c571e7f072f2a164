//! What happens after a delivery fails (a nack or an expired lease): the next attempt is
//! scheduled, or the message is dead-lettered or given up, following the subscription's
//! dead-letter policy and retry schedule (`converge_core`).

use std::time::SystemTime;

use converge_core::dead_letter::dead_letter_attributes;
use converge_core::{NewMessage, Result, SubscriptionName};

use super::record::{MessageRecord, Record};
use super::state::State;
use super::{DEAD_LETTER_TOPIC_MISSING_RETRY, Inner};
use converge_core::subscription::AfterFailure;

impl Inner {
    /// Records for the failed deliveries of one subscription: dead-lettered messages are
    /// published to the dead-letter topic and completed at the source in the same batch.
    pub(super) fn after_failures(
        &self,
        state: &mut State,
        name: &SubscriptionName,
        failed: Vec<u64>,
        now: SystemTime,
    ) -> Result<Vec<Record>> {
        let mut outcomes = Vec::new();
        {
            let Some(sub) = state.subscriptions.get_mut(name) else {
                return Ok(Vec::new());
            };
            for id in failed {
                outcomes.push((id, sub.fail(id, now, rand::random::<f64>())));
            }
        }
        let mut records = Vec::new();
        let mut done = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                AfterFailure::Retry { .. } => {
                    metrics::counter!("converge_messages_nacked_or_expired_total").increment(1);
                }
                AfterFailure::GiveUp { attempts } => {
                    tracing::warn!(subscription = %name, message_id = id, attempts, "retry schedule exhausted and no dead-letter topic: message dropped");
                    metrics::counter!("converge_messages_dropped_total", "reason" => "retries_exhausted").increment(1);
                    done.push(id);
                }
                AfterFailure::DeadLetter { attempts } => {
                    match self.dead_letter_record(state, name, id, attempts, now)? {
                        Some(record) => {
                            records.push(record);
                            done.push(id);
                            metrics::counter!("converge_messages_dead_lettered_total").increment(1);
                        }
                        None => {
                            let sub = state.subscriptions.get_mut(name).expect("checked above");
                            sub.wait(id, now + DEAD_LETTER_TOPIC_MISSING_RETRY);
                        }
                    }
                }
            }
        }
        if !done.is_empty() {
            let subscription_id = state.subscriptions[name].id;
            records.push(Record::Done {
                subscription_id,
                ids: done,
            });
        }
        Ok(records)
    }

    /// The message record that forwards message `id` to the subscription's dead-letter topic,
    /// or `None` when that topic does not exist (the message then waits and tries again).
    pub(super) fn dead_letter_record(
        &self,
        state: &mut State,
        name: &SubscriptionName,
        id: u64,
        attempts: u32,
        now: SystemTime,
    ) -> Result<Option<Record>> {
        let sub = &state.subscriptions[name];
        let Some(policy) = sub.settings.dead_letter_policy.clone() else {
            return Ok(None);
        };
        let Some(target) = state.topics.get(&policy.topic).map(|m| m.id) else {
            tracing::warn!(subscription = %name, dead_letter_topic = %policy.topic, "dead-letter topic does not exist; message kept");
            return Ok(None);
        };
        let Some(entry) = state.logs.get(&sub.log_id).and_then(|d| d.log.get(id)) else {
            return Ok(None);
        };
        let source = self.load(entry)?;
        let message = NewMessage {
            attributes: dead_letter_attributes(
                source.attributes,
                name,
                source.publish_time,
                attempts,
            ),
            data: source.data,
            ordering_key: source.ordering_key,
        };
        let new_id = state.next_message_id;
        state.next_message_id += 1;
        tracing::info!(subscription = %name, message_id = id, dead_letter_topic = %policy.topic, new_message_id = new_id, attempts, "message dead-lettered");
        Ok(Some(Record::Message(MessageRecord::new(
            target, new_id, now, &message,
        ))))
    }
}
