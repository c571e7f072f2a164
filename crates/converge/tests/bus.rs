//! The event bus, on both backends (the in-memory engine and a real converge broker reached
//! over gRPC), with the same assertions: dispatch by type, the unknown and malformed policies,
//! retries after errors and panics, cascades and their derived idempotency keys, and the
//! broker dropping what a retried handler emits again.
//!
//! What the backend stored is read from a second, plain subscription on the bus's topic (the
//! capture), created before anything is published. What the bus decided about each delivery
//! (ack or nack) is what its handler answered the transport ([`Harness::verdicts`]); that the
//! backend carries a nack out is shown by advancing the clock past the backoff and seeing the
//! message come back. Before moving the clock, a test waits until the bus's verdicts have
//! reached the backend ([`Harness::wait_settled`]), since a backoff runs from the nack's
//! arrival.
//!
//! Run with `cargo nextest run -p converge --test bus` (`memory::` or `broker::` to pick a
//! backend).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use converge::bus::{
    BusError, DEFAULT_RETRY, EventBus, EventBusBuilder, HandlerContext, HandlerResult,
    MalformedEventPolicy, Published, Publisher, UnknownEventPolicy,
};
use converge::cloudevents;
use converge::event::Event;
use converge::idempotency::{IDEMPOTENCY_KEY_ATTRIBUTE, IdempotencyKey};
use converge::transport::{
    DeadLetter, Disposition, IncomingMessage, OutgoingMessage, SubscriptionConfig,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use support::{Harness, WAIT, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

support::both_backends!(
    dispatches_by_type_with_the_key_in_scope,
    unknown_event_acked_and_logged,
    unknown_event_nacked,
    malformed_events_are_acked_by_default,
    malformed_events_nacked_when_asked,
    failed_handler_is_retried_after_the_backoff,
    panicking_handler_is_retried_and_the_bus_survives,
    cascade_carries_derived_keys,
    retried_handler_produces_no_duplicate_downstream_event,
    fresh_keys_in_a_retried_handler_do_duplicate,
    builder_refuses_bad_configurations,
    publishing_again_with_a_key_stores_nothing_new,
);

/// Past the first redelivery backoff of the bus's subscription (the backoff's minimum: the
/// first retry waits exactly that).
const FIRST_RETRY_DUE: Duration = DEFAULT_RETRY.minimum.saturating_add(Duration::from_secs(1));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u32,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "com.example.test.order.placed";

    fn ordering_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentRequested {
    order: u32,
    cents: u64,
}

impl Event for PaymentRequested {
    const TYPE: &'static str = "com.example.test.payment.requested";

    fn subject(&self) -> Option<String> {
        Some(format!("orders/{}", self.order))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StockReserved {
    order: u32,
}

impl Event for StockReserved {
    const TYPE: &'static str = "com.example.test.stock.reserved";
}

/// A type no handler in these tests is registered for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unhandled {
    what: String,
}

impl Event for Unhandled {
    const TYPE: &'static str = "com.example.test.unhandled";
}

/// What a handler saw on one call.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    event_type: String,
    key: IdempotencyKey,
    current: Option<IdempotencyKey>,
    attempt: Option<u32>,
    source: String,
    subject: Option<String>,
}

impl Call {
    fn of(ctx: &HandlerContext) -> Self {
        Self {
            event_type: ctx.event().event_type.clone(),
            key: ctx.idempotency_key().clone(),
            current: key_seen_deep_in_the_call_stack(),
            attempt: ctx.delivery_attempt(),
            source: ctx.event().source.clone(),
            subject: ctx.event().subject.clone(),
        }
    }
}

/// Stands for an HTTP client or a repository called from a handler: it gets the key without
/// being passed it.
fn key_seen_deep_in_the_call_stack() -> Option<IdempotencyKey> {
    IdempotencyKey::current()
}

/// Calls recorded by handlers, shared with the test.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    /// Records a call; returns how many calls of its event type there have been, this one
    /// included (1 on a handler's first run).
    fn record(&self, ctx: &HandlerContext) -> usize {
        let call = Call::of(ctx);
        let mut calls = self.0.lock();
        calls.push(call);
        let event_type = &calls[calls.len() - 1].event_type;
        calls.iter().filter(|c| &c.event_type == event_type).count()
    }

    fn of_type(&self, event_type: &str) -> Vec<Call> {
        self.0
            .lock()
            .iter()
            .filter(|c| c.event_type == event_type)
            .cloned()
            .collect()
    }

    fn count(&self, event_type: &str) -> usize {
        self.of_type(event_type).len()
    }

    fn total(&self) -> usize {
        self.0.lock().len()
    }
}

/// The resources of one test's bus, unique to the test.
#[derive(Debug, Clone)]
struct Names {
    topic: String,
    subscription: String,
    /// A second subscription on the bus's topic: sees every message stored on it.
    capture: String,
}

impl Names {
    fn new(h: &Harness) -> Self {
        Self {
            topic: h.topic("bus"),
            subscription: h.subscription("bus"),
            capture: h.subscription("bus-capture"),
        }
    }
}

fn builder(h: &Harness, names: &Names) -> EventBusBuilder {
    EventBus::builder(h.transport(), &names.topic, &names.subscription).source("/test")
}

/// A dead-letter policy makes the broker count deliveries, so handlers see their attempt.
fn with_dead_letter(h: &Harness, builder: EventBusBuilder) -> EventBusBuilder {
    let topic = h.topic("bus-dead-letter");
    builder.subscription_config(|config| {
        config.dead_letter = Some(DeadLetter {
            topic,
            max_delivery_attempts: 5,
        });
    })
}

/// A bus running on its own task, with a capture subscription on its topic.
struct Running<'h> {
    harness: &'h Harness,
    names: Names,
    publisher: Publisher,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), BusError>>,
}

impl<'h> Running<'h> {
    async fn start(
        h: &'h Harness,
        names: &Names,
        builder: EventBusBuilder,
    ) -> anyhow::Result<Self> {
        let bus = builder.build().await.context("building the bus")?;
        h.transport()
            .ensure_subscription(&SubscriptionConfig::new(&names.capture, &names.topic))
            .await
            .context("creating the capture subscription")?;
        let shutdown = CancellationToken::new();
        let publisher = bus.publisher();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { bus.run(token).await });
        Ok(Self {
            harness: h,
            names: names.clone(),
            publisher,
            shutdown,
            task,
        })
    }

    /// Waits until the bus has handled `n` deliveries and the backend has taken their acks
    /// and nacks into account.
    async fn settled(&self, n: usize) -> anyhow::Result<()> {
        self.harness.wait_settled(&self.names.subscription, n).await
    }

    /// Every message stored on the topic since the bus started and not captured before.
    async fn captured(&self) -> anyhow::Result<Vec<IncomingMessage>> {
        self.harness.pull_all(&self.names.capture).await
    }

    /// What the bus answered for each delivery so far, as `type verdict` (the event type
    /// without the `com.example.test.` prefix, `-` for none), sorted by type; the verdicts of
    /// one type stay in the order they were given.
    fn verdicts(&self) -> Vec<String> {
        self.verdicts_of(|m| event_type(m).to_owned())
    }

    /// Like [`Self::verdicts`], as `type payload verdict`, sorted by type and payload.
    fn verdicts_with_data(&self) -> Vec<String> {
        self.verdicts_of(|m| format!("{} {}", event_type(m), support::text(m)))
    }

    fn verdicts_of(&self, describe: impl Fn(&IncomingMessage) -> String) -> Vec<String> {
        let mut verdicts: Vec<(String, Disposition)> = self
            .harness
            .verdicts(&self.names.subscription)
            .iter()
            .map(|(message, verdict)| (describe(message), *verdict))
            .collect();
        verdicts.sort_by(|a, b| a.0.cmp(&b.0));
        verdicts
            .into_iter()
            .map(|(what, verdict)| format!("{what} {verdict:?}"))
            .collect()
    }

    /// Stops the bus: once this returns, every message it took is acked or nacked.
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("the bus did not stop in time")?
            .context("the bus task panicked")?
            .context("the bus stopped with an error")
    }
}

/// A message's `ce-type` without the `com.example.test.` prefix of these tests, `-` for none.
fn event_type(message: &IncomingMessage) -> &str {
    message
        .attributes
        .get("ce-type")
        .map_or("-", |t| t.strip_prefix("com.example.test.").unwrap_or(t))
}

/// The `ce-type` of each message (`-` for none), sorted.
fn event_types(messages: &[IncomingMessage]) -> Vec<&str> {
    let mut types: Vec<&str> = messages
        .iter()
        .map(|m| {
            m.attributes
                .get("ce-type")
                .map(String::as_str)
                .unwrap_or("-")
        })
        .collect();
    types.sort_unstable();
    types
}

async fn dispatches_by_type_with_the_key_in_scope(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let calls = Calls::default();
    let (orders, payments) = (calls.clone(), calls.clone());
    let bus = builder(&h, &names)
        .on(move |_: OrderPlaced, ctx: HandlerContext| {
            let calls = orders.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        })
        .on(move |event: PaymentRequested, ctx: HandlerContext| {
            let calls = payments.clone();
            async move {
                assert_eq!(event.cents, 1999, "payload decoded");
                calls.record(&ctx);
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;

    let first = running.publisher.publish(&OrderPlaced { order: 1 }).await?;
    let payment = running
        .publisher
        .publish(&PaymentRequested {
            order: 1,
            cents: 1999,
        })
        .await?;
    let second = running.publisher.publish(&OrderPlaced { order: 2 }).await?;
    eventually("three events handled", || calls.total() == 3).await?;

    let order_calls = calls.of_type(OrderPlaced::TYPE);
    let mut order_keys: Vec<_> = order_calls.iter().map(|c| c.key.clone()).collect();
    order_keys.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(order_keys, expected);
    let payment_calls = calls.of_type(PaymentRequested::TYPE);
    assert_eq!(payment_calls.len(), 1);
    let call = &payment_calls[0];
    assert_eq!(call.key, payment);
    assert_eq!(call.current.as_ref(), Some(&payment), "task-local key");
    assert_eq!(call.source, "/test");
    assert_eq!(call.subject.as_deref(), Some("orders/1"));
    assert_eq!(call.attempt, None, "no dead-letter policy, no count");
    for call in &order_calls {
        assert_eq!(call.current.as_ref(), Some(&call.key));
    }
    assert_eq!(IdempotencyKey::current(), None, "no key outside handlers");

    // On the wire: binary-mode CloudEvents with the key as ce-id and as the dedup attribute.
    let captured = running.captured().await?;
    assert_eq!(captured.len(), 3);
    let wire = captured
        .iter()
        .find(|m| m.attributes["ce-id"] == first.as_str())
        .context("the first order is not on the topic")?;
    assert_eq!(wire.attributes["ce-specversion"], "1.0");
    assert_eq!(wire.attributes["ce-type"], OrderPlaced::TYPE);
    assert_eq!(wire.attributes["ce-source"], "/test");
    assert_eq!(wire.attributes["Content-Type"], "application/json");
    assert_eq!(wire.attributes[IDEMPOTENCY_KEY_ATTRIBUTE], first.as_str());
    assert!(wire.attributes.contains_key("ce-time"));
    assert_eq!(wire.ordering_key, "order-1");
    assert_eq!(&wire.data[..], br#"{"order":1}"#);

    running.settled(3).await?;
    assert_eq!(
        running.verdicts(),
        [
            "order.placed Ack",
            "order.placed Ack",
            "payment.requested Ack"
        ]
    );
    assert_eq!(calls.total(), 3, "each event handled once");
    running.stop().await
}

/// Publishes an event nobody handles, then one that is handled, and waits until the bus has
/// answered for both and the backend has its answers.
async fn unknown_event_with(
    h: &Harness,
    policy: UnknownEventPolicy,
) -> anyhow::Result<(Running<'_>, Calls)> {
    let names = Names::new(h);
    let calls = Calls::default();
    let recorder = calls.clone();
    let bus =
        builder(h, &names)
            .unknown_events(policy)
            .on(move |_: OrderPlaced, ctx: HandlerContext| {
                let calls = recorder.clone();
                async move {
                    calls.record(&ctx);
                    Ok(())
                }
            });
    let running = Running::start(h, &names, bus).await?;
    running
        .publisher
        .publish(&Unhandled {
            what: "mystery".into(),
        })
        .await?;
    running.publisher.publish(&OrderPlaced { order: 1 }).await?;
    eventually("the known event handled", || {
        calls.count(OrderPlaced::TYPE) == 1
    })
    .await?;
    running.settled(2).await?;
    assert_eq!(calls.total(), 1, "no handler ran for the unknown event");
    Ok((running, calls))
}

async fn unknown_event_acked_and_logged(h: Harness) -> anyhow::Result<()> {
    let (running, _) = unknown_event_with(&h, UnknownEventPolicy::AckAndLog).await?;
    assert_eq!(running.verdicts(), ["order.placed Ack", "unhandled Ack"]);
    running.stop().await
}

async fn unknown_event_nacked(h: Harness) -> anyhow::Result<()> {
    let (running, calls) = unknown_event_with(&h, UnknownEventPolicy::Nack).await?;
    assert_eq!(running.verdicts(), ["order.placed Ack", "unhandled Nack"]);
    // Nacked, so the backend redelivers it after the backoff (and the bus nacks it again).
    h.advance(FIRST_RETRY_DUE).await?;
    running.settled(3).await?;
    assert_eq!(
        running.verdicts(),
        ["order.placed Ack", "unhandled Nack", "unhandled Nack"]
    );
    assert_eq!(calls.total(), 1, "still no handler ran for it");
    running.stop().await
}

/// Publishes two undecodable messages (no `ce-type`; a known type with a payload of the wrong
/// shape), then a valid one, and waits until the bus has answered for all three and the
/// backend has its answers.
async fn malformed_events_with(
    h: &Harness,
    policy: Option<MalformedEventPolicy>,
) -> anyhow::Result<(Running<'_>, Calls)> {
    let names = Names::new(h);
    let calls = Calls::default();
    let recorder = calls.clone();
    let mut bus = builder(h, &names).on(move |_: OrderPlaced, ctx: HandlerContext| {
        let calls = recorder.clone();
        async move {
            calls.record(&ctx);
            Ok(())
        }
    });
    if let Some(policy) = policy {
        bus = bus.malformed_events(policy);
    }
    let running = Running::start(h, &names, bus).await?;

    let no_type = OutgoingMessage {
        data: "{}".into(),
        attributes: HashMap::from([
            ("ce-specversion".to_owned(), "1.0".to_owned()),
            ("ce-id".to_owned(), "1".to_owned()),
            ("ce-source".to_owned(), "/elsewhere".to_owned()),
        ]),
        ordering_key: String::new(),
    };
    let mut wrong_shape = cloudevents::encode(
        &OrderPlaced { order: 1 },
        "/elsewhere",
        &IdempotencyKey::new(),
        SystemTime::now(),
    )?;
    wrong_shape.data = r#"{"order":"one"}"#.into();
    h.transport()
        .publish(&names.topic, vec![no_type, wrong_shape])
        .await?;
    running.publisher.publish(&OrderPlaced { order: 2 }).await?;
    eventually("the valid event handled", || {
        calls.count(OrderPlaced::TYPE) == 1
    })
    .await?;
    running.settled(3).await?;
    assert_eq!(calls.total(), 1, "malformed events never reach handlers");
    Ok((running, calls))
}

async fn malformed_events_are_acked_by_default(h: Harness) -> anyhow::Result<()> {
    let (running, _) = malformed_events_with(&h, None).await?;
    assert_eq!(
        running.verdicts_with_data(),
        [
            "- {} Ack",
            r#"order.placed {"order":"one"} Ack"#,
            r#"order.placed {"order":2} Ack"#,
        ]
    );
    running.stop().await
}

async fn malformed_events_nacked_when_asked(h: Harness) -> anyhow::Result<()> {
    let (running, calls) = malformed_events_with(&h, Some(MalformedEventPolicy::Nack)).await?;
    assert_eq!(
        running.verdicts_with_data(),
        [
            "- {} Nack",
            r#"order.placed {"order":"one"} Nack"#,
            r#"order.placed {"order":2} Ack"#,
        ]
    );
    // Kept: the backend redelivers both after the backoff (and the bus nacks them again).
    h.advance(FIRST_RETRY_DUE).await?;
    running.settled(5).await?;
    assert_eq!(
        running.verdicts_with_data(),
        [
            "- {} Nack",
            "- {} Nack",
            r#"order.placed {"order":"one"} Nack"#,
            r#"order.placed {"order":"one"} Nack"#,
            r#"order.placed {"order":2} Ack"#,
        ]
    );
    assert_eq!(calls.total(), 1, "still never reach handlers");
    running.stop().await
}

async fn failed_handler_is_retried_after_the_backoff(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let calls = Calls::default();
    let recorder = calls.clone();
    let bus =
        with_dead_letter(&h, builder(&h, &names)).on(move |_: OrderPlaced, ctx: HandlerContext| {
            let calls = recorder.clone();
            async move {
                if calls.record(&ctx) == 1 {
                    return Err("the payment provider is down".into());
                }
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;
    let key = running.publisher.publish(&OrderPlaced { order: 7 }).await?;
    eventually("the first attempt", || calls.count(OrderPlaced::TYPE) == 1).await?;
    // The nack has reached the backend: the backoff runs from now.
    running.settled(1).await?;
    h.advance(FIRST_RETRY_DUE).await?;
    eventually("the retry after the backoff", || {
        calls.count(OrderPlaced::TYPE) == 2
    })
    .await?;

    let seen = calls.of_type(OrderPlaced::TYPE);
    assert_eq!(
        seen.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [Some(1), Some(2)],
        "the broker redelivered"
    );
    assert!(seen.iter().all(|c| c.key == key), "same key on the retry");
    running.settled(2).await?;
    assert_eq!(
        running.verdicts(),
        ["order.placed Nack", "order.placed Ack"],
        "nacked, then acked once the retry succeeded"
    );
    running.stop().await
}

async fn panicking_handler_is_retried_and_the_bus_survives(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let calls = Calls::default();
    let (orders, stock) = (calls.clone(), calls.clone());
    let bus = with_dead_letter(&h, builder(&h, &names))
        .on(move |_: OrderPlaced, ctx: HandlerContext| {
            let calls = orders.clone();
            async move {
                if calls.record(&ctx) == 1 {
                    panic!("handler bug on the first delivery");
                }
                Ok(())
            }
        })
        .on(move |_: StockReserved, ctx: HandlerContext| {
            let calls = stock.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;
    running.publisher.publish(&OrderPlaced { order: 1 }).await?;
    eventually("the panicking attempt", || {
        calls.count(OrderPlaced::TYPE) == 1
    })
    .await?;
    running
        .publisher
        .publish(&StockReserved { order: 1 })
        .await?;
    eventually("another event after the panic", || {
        calls.count(StockReserved::TYPE) == 1
    })
    .await?;
    running.settled(2).await?;
    h.advance(FIRST_RETRY_DUE).await?;
    eventually("the retry after the panic", || {
        calls.count(OrderPlaced::TYPE) == 2
    })
    .await?;
    let attempts: Vec<_> = calls
        .of_type(OrderPlaced::TYPE)
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [Some(1), Some(2)]);
    running.settled(3).await?;
    assert_eq!(
        running.verdicts(),
        [
            "order.placed Nack",
            "order.placed Ack",
            "stock.reserved Ack"
        ],
        "the panic became a nack"
    );
    running.stop().await
}

async fn cascade_carries_derived_keys(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let public_topic = h.new_topic("public").await?;
    let public_capture = h
        .new_subscription("public-capture", &public_topic, |_| {})
        .await?;
    let calls = Calls::default();
    let emitted: Arc<Mutex<Vec<Published>>> = Arc::default();
    let (orders, payments, stock, emits) =
        (calls.clone(), calls.clone(), calls.clone(), emitted.clone());
    let forward_to = public_topic.clone();
    let bus = builder(&h, &names)
        .on(move |event: OrderPlaced, ctx: HandlerContext| {
            let (calls, emits, forward_to) = (orders.clone(), emits.clone(), forward_to.clone());
            async move {
                calls.record(&ctx);
                let payment = PaymentRequested {
                    order: event.order,
                    cents: 500,
                };
                let first = ctx.emit(&payment).await?;
                let second = ctx.emit(&StockReserved { order: event.order }).await?;
                // Forwarded to a topic other services read, in the same sequence of positions.
                let third = ctx.emit_to(&forward_to, &event).await?;
                assert_eq!(ctx.emitted(), 3);
                emits.lock().extend([first, second, third]);
                Ok(())
            }
        })
        .on(move |_: PaymentRequested, ctx: HandlerContext| {
            let calls = payments.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        })
        .on(move |_: StockReserved, ctx: HandlerContext| {
            let calls = stock.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;
    let root = IdempotencyKey::parse("order-42-placed")?;
    running
        .publisher
        .publish_with_key(&OrderPlaced { order: 42 }, root.clone())
        .await?;
    eventually("the cascade", || {
        emitted.lock().len() == 3
            && calls.count(PaymentRequested::TYPE) == 1
            && calls.count(StockReserved::TYPE) == 1
    })
    .await?;

    let payment = &calls.of_type(PaymentRequested::TYPE)[0];
    assert_eq!(payment.key, root.derive(0));
    assert_eq!(payment.current, Some(root.derive(0)));
    assert_eq!(payment.source, "/test");
    let stock = &calls.of_type(StockReserved::TYPE)[0];
    assert_eq!(stock.key, root.derive(1));
    let emitted_keys: Vec<_> = emitted.lock().iter().map(|p| p.key.clone()).collect();
    assert_eq!(
        emitted_keys,
        [root.derive(0), root.derive(1), root.derive(2)]
    );

    let captured = running.captured().await?;
    assert_eq!(
        event_types(&captured),
        [
            OrderPlaced::TYPE,
            PaymentRequested::TYPE,
            StockReserved::TYPE
        ],
        "the forwarded event stays off the bus's topic"
    );
    let public = h.pull_all(&public_capture).await?;
    assert_eq!(public.len(), 1);
    assert_eq!(public[0].attributes["ce-type"], OrderPlaced::TYPE);
    assert_eq!(
        public[0].attributes[IDEMPOTENCY_KEY_ATTRIBUTE],
        root.derive(2).as_str()
    );
    running.settled(3).await?;
    assert_eq!(
        running.verdicts(),
        [
            "order.placed Ack",
            "payment.requested Ack",
            "stock.reserved Ack"
        ]
    );
    running.stop().await
}

/// The issue's central claim: a handler that emits and then fails is run again and emits
/// again, and the downstream event is still stored and handled once.
async fn retried_handler_produces_no_duplicate_downstream_event(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let calls = Calls::default();
    let emitted: Arc<Mutex<Vec<Published>>> = Arc::default();
    let (orders, payments, emits) = (calls.clone(), calls.clone(), emitted.clone());
    let bus = builder(&h, &names)
        .on(move |event: OrderPlaced, ctx: HandlerContext| {
            let (calls, emits) = (orders.clone(), emits.clone());
            async move {
                let run = calls.record(&ctx);
                let published = ctx
                    .emit(&PaymentRequested {
                        order: event.order,
                        cents: 1200,
                    })
                    .await?;
                emits.lock().push(published);
                if run == 1 {
                    // Fails after emitting: the classic cascade hazard.
                    return Err("crashed after emitting".into());
                }
                HandlerResult::Ok(())
            }
        })
        .on(move |_: PaymentRequested, ctx: HandlerContext| {
            let calls = payments.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;
    let root = running.publisher.publish(&OrderPlaced { order: 9 }).await?;
    eventually("the failing first run and the payment it emitted", || {
        calls.count(OrderPlaced::TYPE) == 1 && calls.count(PaymentRequested::TYPE) == 1
    })
    .await?;
    // The order's nack and the payment's ack have reached the backend.
    running.settled(2).await?;
    h.advance(FIRST_RETRY_DUE).await?;
    eventually("the retry", || {
        calls.count(OrderPlaced::TYPE) == 2 && emitted.lock().len() == 2
    })
    .await?;
    running.settled(3).await?;

    // The handler emitted twice, with the same key; the broker answered the second publish
    // with the first message's id: it stored nothing new.
    let emitted = emitted.lock().clone();
    assert_eq!(emitted[0].key, root.derive(0));
    assert_eq!(emitted[1].key, root.derive(0));
    assert_eq!(emitted[0].message_id, emitted[1].message_id);
    // Everything ever stored on the topic: the order and one payment request.
    let captured = running.captured().await?;
    assert_eq!(
        event_types(&captured),
        [OrderPlaced::TYPE, PaymentRequested::TYPE]
    );

    assert_eq!(
        running.verdicts(),
        [
            "order.placed Nack",
            "order.placed Ack",
            "payment.requested Ack"
        ]
    );
    running.stop().await?;
    assert_eq!(
        calls.count(OrderPlaced::TYPE),
        2,
        "the order handler ran twice"
    );
    assert_eq!(
        calls.count(PaymentRequested::TYPE),
        1,
        "the payment handler ran once"
    );
    Ok(())
}

/// The control experiment: the same failing handler, publishing with a fresh key instead of
/// emitting through its context, does produce a duplicate, which the payment handler then
/// handles twice. (If this ever stops duplicating, the test above proves nothing.)
async fn fresh_keys_in_a_retried_handler_do_duplicate(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let calls = Calls::default();
    let publisher: Arc<Mutex<Option<Publisher>>> = Arc::default();
    let (orders, payments, slot) = (calls.clone(), calls.clone(), publisher.clone());
    let bus = builder(&h, &names)
        .on(move |event: OrderPlaced, ctx: HandlerContext| {
            let (calls, slot) = (orders.clone(), slot.clone());
            async move {
                let run = calls.record(&ctx);
                let publisher = slot.lock().clone().expect("publisher set");
                publisher
                    .publish(&PaymentRequested {
                        order: event.order,
                        cents: 1200,
                    })
                    .await?;
                if run == 1 {
                    return Err("crashed after publishing".into());
                }
                HandlerResult::Ok(())
            }
        })
        .on(move |_: PaymentRequested, ctx: HandlerContext| {
            let calls = payments.clone();
            async move {
                calls.record(&ctx);
                Ok(())
            }
        });
    let running = Running::start(&h, &names, bus).await?;
    *publisher.lock() = Some(running.publisher.clone());
    running.publisher.publish(&OrderPlaced { order: 9 }).await?;
    eventually("the failing first run and the payment it published", || {
        calls.count(OrderPlaced::TYPE) == 1 && calls.count(PaymentRequested::TYPE) == 1
    })
    .await?;
    running.settled(2).await?;
    h.advance(FIRST_RETRY_DUE).await?;
    eventually("the retry and the second payment", || {
        calls.count(OrderPlaced::TYPE) == 2 && calls.count(PaymentRequested::TYPE) == 2
    })
    .await?;
    running.settled(4).await?;
    let captured = running.captured().await?;
    assert_eq!(
        event_types(&captured),
        [
            OrderPlaced::TYPE,
            PaymentRequested::TYPE,
            PaymentRequested::TYPE
        ]
    );
    let payment_keys: Vec<_> = calls
        .of_type(PaymentRequested::TYPE)
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert_ne!(payment_keys[0], payment_keys[1], "two keys for one intent");
    assert_eq!(
        running.verdicts(),
        [
            "order.placed Nack",
            "order.placed Ack",
            "payment.requested Ack",
            "payment.requested Ack"
        ]
    );
    running.stop().await
}

async fn builder_refuses_bad_configurations(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let handler = |_: OrderPlaced, _: HandlerContext| async { HandlerResult::Ok(()) };
    let err = builder(&h, &names)
        .on(handler)
        .on(handler)
        .build()
        .await
        .expect_err("two handlers for one type");
    assert!(
        matches!(err, BusError::DuplicateHandler { event_type } if event_type == OrderPlaced::TYPE),
        "{err}"
    );

    let err = builder(&h, &names)
        .source("")
        .build()
        .await
        .expect_err("an empty source");
    assert!(matches!(err, BusError::EmptySource), "{err}");

    // Refused by the backend itself, when the bus creates its topic.
    let err = EventBus::builder(h.transport(), "not a topic name", &names.subscription)
        .build()
        .await
        .expect_err("an invalid topic name");
    assert!(
        matches!(&err, BusError::Setup { resource, .. } if resource == "not a topic name"),
        "{err}"
    );
    Ok(())
}

async fn publishing_again_with_a_key_stores_nothing_new(h: Harness) -> anyhow::Result<()> {
    let names = Names::new(&h);
    let bus = builder(&h, &names).build().await?;
    h.transport()
        .ensure_subscription(&SubscriptionConfig::new(&names.capture, &names.topic))
        .await?;
    let key = IdempotencyKey::parse("request-123")?;
    let first = bus
        .publish_with_key(&OrderPlaced { order: 1 }, key.clone())
        .await?;
    let again = bus
        .publish_with_key(&OrderPlaced { order: 1 }, key.clone())
        .await?;
    assert_eq!(first, again);
    assert_eq!(first.key, key);
    let other = bus
        .publish_with_key(
            &OrderPlaced { order: 1 },
            IdempotencyKey::parse("request-124")?,
        )
        .await?;
    assert_ne!(
        other.message_id, first.message_id,
        "another key, another message"
    );
    let captured = h.pull_all(&names.capture).await?;
    assert_eq!(captured.len(), 2);
    assert_eq!(bus.topic(), names.topic);
    assert_eq!(bus.subscription(), names.subscription);
    Ok(())
}
