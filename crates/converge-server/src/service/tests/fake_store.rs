//! A minimal in-memory [`Store`] that records what the service layer asked of it.
//!
//! Its error messages are deliberately unlike the real service's, so the tests prove that the
//! service layer rewords `NOT_FOUND` and `ALREADY_EXISTS` itself.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_core::store::SubscriptionStats;
use converge_core::{
    AckId, Error, MessageId, NewMessage, Page, PageRequest, ProjectId, ReceivedMessage, Result,
    Store, StoredMessage, Subscription, SubscriptionName, Topic, TopicName,
};

/// The recorded state.
#[derive(Default)]
pub struct State {
    pub topics: BTreeMap<TopicName, Topic>,
    pub subscriptions: BTreeMap<SubscriptionName, Subscription>,
    pub published: Vec<(TopicName, NewMessage)>,
    pub queued: Vec<(SubscriptionName, ReceivedMessage)>,
    pub acked: Vec<AckId>,
    pub modacks: Vec<(AckId, Duration)>,
    pub last_pull: Option<(usize, Duration)>,
    pub last_page: Option<PageRequest>,
}

/// The fake.
#[derive(Default)]
pub struct FakeStore {
    pub state: Mutex<State>,
}

fn gone() -> Error {
    Error::NotFound("gone".into())
}

impl FakeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake store lock")
    }

    fn live_subscription(&self, name: &SubscriptionName) -> Result<()> {
        match self.lock().subscriptions.get(name) {
            None => Err(gone()),
            Some(s) if s.detached => Err(Error::FailedPrecondition("detached".into())),
            Some(_) => Ok(()),
        }
    }
}

#[async_trait]
impl Store for FakeStore {
    async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        let mut s = self.lock();
        if s.topics.contains_key(&topic.name) {
            return Err(Error::AlreadyExists("dup".into()));
        }
        s.topics.insert(topic.name.clone(), topic.clone());
        Ok(topic)
    }
    async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        self.lock().topics.get(name).cloned().ok_or_else(gone)
    }
    async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        let mut s = self.lock();
        let slot = s.topics.get_mut(&topic.name).ok_or_else(gone)?;
        *slot = topic.clone();
        Ok(topic)
    }
    async fn list_topics(&self, project: &ProjectId, page: PageRequest) -> Result<Page<Topic>> {
        let mut s = self.lock();
        s.last_page = Some(page);
        let items = s
            .topics
            .values()
            .filter(|t| t.name.project() == project)
            .cloned()
            .collect();
        Ok(Page {
            items,
            next_page_token: "next".into(),
        })
    }
    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let mut s = self.lock();
        s.topics.remove(name).ok_or_else(gone)?;
        for sub in s
            .subscriptions
            .values_mut()
            .filter(|sub| sub.topic.as_ref() == Some(name))
        {
            sub.topic = None;
        }
        Ok(())
    }
    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SubscriptionName>> {
        let mut s = self.lock();
        s.topics.get(topic).ok_or_else(gone)?;
        s.last_page = Some(page);
        let items = s
            .subscriptions
            .values()
            .filter(|sub| sub.topic.as_ref() == Some(topic))
            .map(|sub| sub.name.clone())
            .collect();
        Ok(Page {
            items,
            next_page_token: String::new(),
        })
    }
    async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let mut s = self.lock();
        if s.subscriptions.contains_key(&subscription.name) {
            return Err(Error::AlreadyExists("dup".into()));
        }
        s.subscriptions
            .insert(subscription.name.clone(), subscription.clone());
        Ok(subscription)
    }
    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        self.lock()
            .subscriptions
            .get(name)
            .cloned()
            .ok_or_else(gone)
    }
    async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let mut s = self.lock();
        let slot = s
            .subscriptions
            .get_mut(&subscription.name)
            .ok_or_else(gone)?;
        *slot = subscription.clone();
        Ok(subscription)
    }
    async fn list_subscriptions(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Subscription>> {
        let mut s = self.lock();
        s.last_page = Some(page);
        let items = s
            .subscriptions
            .values()
            .filter(|sub| sub.name.project() == project)
            .cloned()
            .collect();
        Ok(Page {
            items,
            next_page_token: String::new(),
        })
    }
    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        self.lock()
            .subscriptions
            .remove(name)
            .map(|_| ())
            .ok_or_else(gone)
    }
    async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let mut s = self.lock();
        s.subscriptions.get_mut(name).ok_or_else(gone)?.detached = true;
        Ok(())
    }
    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>> {
        let mut s = self.lock();
        s.topics.get(topic).ok_or_else(gone)?;
        let mut ids = Vec::new();
        for m in messages {
            let id = MessageId(1_000 + s.published.len() as u64);
            let subs: Vec<_> = s
                .subscriptions
                .values()
                .filter(|sub| sub.topic.as_ref() == Some(topic))
                .cloned()
                .collect();
            for sub in subs {
                let stored = StoredMessage {
                    id,
                    publish_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
                    data: m.data.clone(),
                    attributes: m.attributes.clone(),
                    ordering_key: m.ordering_key.clone(),
                };
                let delivery_attempt = u32::from(sub.dead_letter_policy.is_some());
                let received = ReceivedMessage {
                    ack_id: AckId(format!("{}-{id}", sub.name.id())),
                    message: stored,
                    delivery_attempt,
                };
                s.queued.push((sub.name.clone(), received));
            }
            s.published.push((topic.clone(), m));
            ids.push(id);
        }
        Ok(ids)
    }
    async fn pull(
        &self,
        subscription: &SubscriptionName,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.live_subscription(subscription)?;
        let mut s = self.lock();
        s.last_pull = Some((max_messages, wait));
        let (mine, rest): (Vec<_>, Vec<_>) = s
            .queued
            .drain(..)
            .partition(|(name, _)| name == subscription);
        s.queued = rest;
        Ok(mine
            .into_iter()
            .map(|(_, r)| r)
            .take(max_messages)
            .collect())
    }
    async fn acknowledge(&self, subscription: &SubscriptionName, ack_ids: &[AckId]) -> Result<()> {
        self.live_subscription(subscription)?;
        self.lock().acked.extend_from_slice(ack_ids);
        Ok(())
    }
    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
        deadline: Duration,
    ) -> Result<()> {
        self.live_subscription(subscription)?;
        self.lock()
            .modacks
            .extend(ack_ids.iter().map(|id| (id.clone(), deadline)));
        Ok(())
    }
    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>> {
        Ok(Vec::new())
    }
    async fn maintain(&self) -> Result<()> {
        Ok(())
    }
    async fn check_ready(&self) -> Result<()> {
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
