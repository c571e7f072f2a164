//! The behavioural suite of the [`Transport`] seam: every test runs once on the in-memory
//! backend and once on a real converge broker (over gRPC, through the SDK's client), with the
//! same assertions. A test that passes on one backend and fails on the other has found a
//! difference in semantics, which is a bug in the engine, the server or the client.
//!
//! Run: `cargo nextest run -p converge --test behaviour` (`memory::` or `broker::` to pick a
//! backend).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use converge::transport::{
    Code, DeadLetter, Disposition, OutgoingMessage, ReceiveOptions, RetryBackoff,
};
use support::{Harness, Recorder, text};
use tokio_util::sync::CancellationToken;

support::both_backends!(
    round_trip_preserves_data_attributes_and_ordering_key,
    ack_removes_the_message,
    nack_redelivers_only_after_the_minimum_backoff,
    backoff_grows_exponentially,
    nack_without_retry_policy_redelivers_at_once,
    dead_letters_after_max_delivery_attempts,
    ordering_delivers_each_key_in_publish_order,
    ordering_nack_holds_back_later_messages_of_the_key,
    same_idempotency_key_is_delivered_once,
    filter_delivers_only_matching_messages,
    hung_handler_loses_its_lease_past_the_lease_extension,
    shutdown_waits_for_handlers_and_settles_them,
    receive_on_a_missing_subscription_is_not_found,
    publish_to_a_missing_topic_is_not_found,
    invalid_message_is_refused,
    one_publish_may_mix_ordering_keys,
    flow_control_bounds_the_messages_in_handlers,
);

/// A message with `data` and the given attributes.
fn message(data: &str, attributes: &[(&str, &str)]) -> OutgoingMessage {
    OutgoingMessage {
        data: data.to_owned().into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ordering_key: String::new(),
    }
}

/// A message with `data` and an ordering key.
fn keyed(data: &str, key: &str) -> OutgoingMessage {
    OutgoingMessage {
        ordering_key: key.to_owned(),
        ..message(data, &[])
    }
}

const SECOND: Duration = Duration::from_secs(1);

async fn round_trip_preserves_data_attributes_and_ordering_key(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("orders").await?;
    let sub = h
        .new_subscription("orders", &topic, |c| c.message_ordering = true)
        .await?;
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());

    let mut sent = message("order 42", &[("kind", "placed"), ("ce-id", "abc")]);
    sent.ordering_key = "customer-7".into();
    let ids = h.transport().publish(&topic, vec![sent.clone()]).await?;
    assert_eq!(ids.len(), 1);
    assert!(
        ids[0].parse::<u64>().is_ok(),
        "ids are decimal strings: {ids:?}"
    );

    let seen = recorder.wait_for(1).await?;
    let got = &seen[0];
    assert_eq!(got.message_id, ids[0]);
    assert_eq!(got.data, sent.data);
    assert_eq!(got.attributes, sent.attributes);
    assert_eq!(got.ordering_key, "customer-7");
    assert_eq!(
        got.delivery_attempt, None,
        "attempts are counted only with a dead-letter policy"
    );
    receiving.stop().await
}

async fn ack_removes_the_message(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("acks").await?;
    let sub = h.new_subscription("acks", &topic, |_| {}).await?;
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());

    h.transport()
        .publish(&topic, vec![message("once", &[])])
        .await?;
    recorder.wait_for(1).await?;
    // Gives the ack time to reach the backend before the clock jumps (clients send acks in
    // batches, a few milliseconds after the handler returns).
    recorder.assert_quiet(1).await?;
    // Well past the 10 s ack deadline: an acknowledged message never comes back.
    h.advance(60 * SECOND).await?;
    recorder.assert_quiet(1).await?;
    h.advance(600 * SECOND).await?;
    recorder.assert_quiet(1).await?;
    receiving.stop().await
}

async fn nack_redelivers_only_after_the_minimum_backoff(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("nacks").await?;
    let sub = h
        .new_subscription("nacks", &topic, |c| {
            c.retry = Some(RetryBackoff {
                minimum: 60 * SECOND,
                maximum: 600 * SECOND,
            });
        })
        .await?;
    let recorder = Recorder::new();
    let handler = recorder.handler(|_, delivery| {
        if delivery == 1 {
            Disposition::Nack
        } else {
            Disposition::Ack
        }
    });
    let receiving = h.receive(&sub, handler);

    h.transport()
        .publish(&topic, vec![message("retry me", &[])])
        .await?;
    recorder.wait_for(1).await?;
    recorder.assert_quiet(1).await?;
    h.advance(30 * SECOND).await?;
    recorder.assert_quiet(1).await?;
    h.advance(31 * SECOND).await?;
    let seen = recorder.wait_for(2).await?;
    assert_eq!(seen[0].message_id, seen[1].message_id);
    assert_eq!(text(&seen[1]), "retry me");
    // The second delivery was acked: nothing more, however long we wait.
    recorder.assert_quiet(2).await?;
    h.advance(700 * SECOND).await?;
    recorder.assert_quiet(2).await?;
    receiving.stop().await
}

async fn backoff_grows_exponentially(h: Harness) -> anyhow::Result<()> {
    // Retry n waits between max(minimum, nominal/2) and nominal = minimum * 2^(n-1) (equal
    // jitter): 60 s, then 60..120 s, then 120..240 s.
    let topic = h.new_topic("backoff").await?;
    let sub = h
        .new_subscription("backoff", &topic, |c| {
            c.retry = Some(RetryBackoff {
                minimum: 60 * SECOND,
                maximum: 600 * SECOND,
            });
        })
        .await?;
    let recorder = Recorder::new();
    let handler = recorder.handler(|_, delivery| {
        if delivery < 4 {
            Disposition::Nack
        } else {
            Disposition::Ack
        }
    });
    let receiving = h.receive(&sub, handler);
    h.transport()
        .publish(&topic, vec![message("flaky", &[])])
        .await?;
    // Each step first watches for QUIET without moving the clock: that shows nothing comes
    // back at once, and lets the nack reach the backend, since the backoff runs from it.
    recorder.wait_for(1).await?;
    recorder.assert_quiet(1).await?;

    // First retry: exactly the minimum.
    h.advance(50 * SECOND).await?;
    recorder.assert_quiet(1).await?;
    h.advance(11 * SECOND).await?;
    recorder.wait_for(2).await?;
    recorder.assert_quiet(2).await?;

    // Second retry: at least 60 s, at most 120 s.
    h.advance(50 * SECOND).await?;
    recorder.assert_quiet(2).await?;
    h.advance(71 * SECOND).await?;
    recorder.wait_for(3).await?;
    recorder.assert_quiet(3).await?;

    // Third retry: at least 120 s, so more than what sufficed for the first two.
    h.advance(110 * SECOND).await?;
    recorder.assert_quiet(3).await?;
    h.advance(131 * SECOND).await?;
    recorder.wait_for(4).await?;
    recorder.assert_quiet(4).await?;

    h.advance(700 * SECOND).await?;
    recorder.assert_quiet(4).await?;
    receiving.stop().await
}

async fn nack_without_retry_policy_redelivers_at_once(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("immediate").await?;
    let sub = h.new_subscription("immediate", &topic, |_| {}).await?;
    let recorder = Recorder::new();
    let handler = recorder.handler(|_, delivery| {
        if delivery < 3 {
            Disposition::Nack
        } else {
            Disposition::Ack
        }
    });
    let receiving = h.receive(&sub, handler);
    h.transport()
        .publish(&topic, vec![message("again", &[])])
        .await?;
    // No clock movement at all: without a retry policy a nack redelivers at once.
    let seen = recorder.wait_for(3).await?;
    assert!(seen.iter().all(|m| m.message_id == seen[0].message_id));
    recorder.assert_quiet(3).await?;
    receiving.stop().await
}

async fn dead_letters_after_max_delivery_attempts(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("work").await?;
    let dead = h.new_topic("work-dead").await?;
    let dead_sub = h.new_subscription("work-dead", &dead, |_| {}).await?;
    let sub = h
        .new_subscription("work", &topic, |c| {
            c.dead_letter = Some(DeadLetter {
                topic: dead.clone(),
                max_delivery_attempts: 5,
            });
        })
        .await?;
    let source = Recorder::new();
    let receiving = h.receive(&sub, source.handler(|_, _| Disposition::Nack));
    let graveyard = Recorder::new();
    let dead_receiving = h.receive(&dead_sub, graveyard.acking());

    h.transport()
        .publish(&topic, vec![message("poison", &[("kind", "bad")])])
        .await?;
    let seen = source.wait_for(5).await?;
    let attempts: Vec<_> = seen.iter().map(|m| m.delivery_attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5].map(Some));

    let dead_letters = graveyard.wait_for(1).await?;
    let dl = &dead_letters[0];
    assert_eq!(text(dl), "poison");
    assert_eq!(dl.attributes.get("kind").map(String::as_str), Some("bad"));
    let sub_id = sub.rsplit('/').next().unwrap_or_default();
    assert_eq!(
        dl.attributes
            .get("CloudPubSubDeadLetterSourceSubscription")
            .map(String::as_str),
        Some(sub_id)
    );
    assert_eq!(
        dl.attributes
            .get("CloudPubSubDeadLetterSourceDeliveryCount")
            .map(String::as_str),
        Some("5")
    );
    // Gone from the source: no sixth delivery, even after the deadline and more.
    graveyard.assert_quiet(1).await?;
    h.advance(60 * SECOND).await?;
    source.assert_quiet(5).await?;
    graveyard.assert_quiet(1).await?;
    receiving.stop().await?;
    dead_receiving.stop().await
}

async fn ordering_delivers_each_key_in_publish_order(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("ordered").await?;
    let sub = h
        .new_subscription("ordered", &topic, |c| c.message_ordering = true)
        .await?;
    for i in 0..5 {
        for key in ["a", "b"] {
            h.transport()
                .publish(&topic, vec![keyed(&format!("{key}{i}"), key)])
                .await?;
        }
    }
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());
    recorder.wait_for(10).await?;
    recorder.assert_quiet(10).await?;
    let seen = recorder.seen();
    for key in ["a", "b"] {
        let of_key: Vec<String> = seen
            .iter()
            .filter(|m| m.ordering_key == key)
            .map(text)
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{key}{i}")).collect();
        assert_eq!(of_key, expected, "key {key}");
    }
    receiving.stop().await
}

async fn ordering_nack_holds_back_later_messages_of_the_key(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("ordered-nack").await?;
    let sub = h
        .new_subscription("ordered-nack", &topic, |c| {
            c.message_ordering = true;
            c.retry = Some(RetryBackoff {
                minimum: 60 * SECOND,
                maximum: 600 * SECOND,
            });
        })
        .await?;
    let recorder = Recorder::new();
    let handler = recorder.handler(|m, delivery| {
        if text(m) == "k1" && delivery == 1 {
            Disposition::Nack
        } else {
            Disposition::Ack
        }
    });
    let receiving = h.receive(&sub, handler);
    for (data, key) in [("k1", "k"), ("k2", "k"), ("k3", "k"), ("j1", "j")] {
        h.transport()
            .publish(&topic, vec![keyed(data, key)])
            .await?;
    }
    // k1 (nacked) and j1; k2 waits behind k1 while k1 waits out its backoff.
    recorder.wait_for(2).await?;
    recorder.assert_quiet(2).await?;
    let mut first: Vec<String> = recorder.seen_data();
    first.sort();
    assert_eq!(first, ["j1", "k1"]);

    h.advance(61 * SECOND).await?;
    recorder.wait_for(5).await?;
    recorder.assert_quiet(5).await?;
    let of_k: Vec<String> = recorder
        .seen()
        .iter()
        .filter(|m| m.ordering_key == "k")
        .map(text)
        .collect();
    assert_eq!(of_k, ["k1", "k1", "k2", "k3"]);
    receiving.stop().await
}

async fn same_idempotency_key_is_delivered_once(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("dedup").await?;
    let sub = h.new_subscription("dedup", &topic, |_| {}).await?;
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());

    let key = "converge-idempotency-key";
    let first = h
        .transport()
        .publish(&topic, vec![message("charge 10", &[(key, "charge-1")])])
        .await?;
    let again = h
        .transport()
        .publish(&topic, vec![message("charge 10", &[(key, "charge-1")])])
        .await?;
    assert_eq!(first, again, "a repeated publish answers the original id");
    let other = h
        .transport()
        .publish(&topic, vec![message("charge 20", &[(key, "charge-2")])])
        .await?;
    assert_ne!(first, other);

    recorder.wait_for(2).await?;
    recorder.assert_quiet(2).await?;
    let mut data = recorder.seen_data();
    data.sort();
    assert_eq!(data, ["charge 10", "charge 20"]);
    receiving.stop().await
}

async fn filter_delivers_only_matching_messages(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("filtered").await?;
    let sub = h
        .new_subscription("filtered", &topic, |c| {
            c.filter = r#"attributes.kind = "wanted""#.into();
        })
        .await?;
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());
    for (data, kind) in [("w1", "wanted"), ("u1", "unwanted"), ("w2", "wanted")] {
        h.transport()
            .publish(&topic, vec![message(data, &[("kind", kind)])])
            .await?;
    }
    h.transport()
        .publish(&topic, vec![message("none", &[])])
        .await?;
    recorder.wait_for(2).await?;
    recorder.assert_quiet(2).await?;
    let mut data = recorder.seen_data();
    data.sort();
    assert_eq!(data, ["w1", "w2"]);
    receiving.stop().await
}

async fn hung_handler_loses_its_lease_past_the_lease_extension(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("hung").await?;
    let sub = h.new_subscription("hung", &topic, |_| {}).await?;
    let release = CancellationToken::new();
    let recorder = Recorder::new();
    let gate = release.clone();
    let handler = recorder.handler_async(move |_, delivery| {
        let gate = gate.clone();
        Box::pin(async move {
            if delivery == 1 {
                // The first delivery hangs until the test lets it go.
                gate.cancelled().await;
            }
            Disposition::Ack
        })
    });
    let options = ReceiveOptions {
        max_lease_extension: 60 * SECOND,
        ..ReceiveOptions::default()
    };
    let receiving = h.receive_with(&sub, options, handler);
    h.transport()
        .publish(&topic, vec![message("slow", &[])])
        .await?;
    recorder.wait_for(1).await?;

    // Within the ack deadline: the lease holds.
    h.advance(5 * SECOND).await?;
    recorder.assert_quiet(1).await?;
    // Far past the lease extension (and past any ack deadline a client may set, 600 s at
    // most): the message is delivered again while the first handler still hangs.
    //
    // Not a jump between the client's lease (60 s) and the lease extension: there the backends
    // differ. The memory backend treats a jump as time during which leases are extended (the
    // message stays with its handler); the broker's client extends leases on real time and
    // cannot react to a jump of the broker's clock, so the lease runs out and the message is
    // delivered again.
    h.advance(700 * SECOND).await?;
    let seen = recorder.wait_for(2).await?;
    assert_eq!(seen[0].message_id, seen[1].message_id);
    // The second delivery was acked; releasing the first (a stale lease) changes nothing.
    release.cancel();
    recorder.assert_quiet(2).await?;
    h.advance(700 * SECOND).await?;
    recorder.assert_quiet(2).await?;
    receiving.stop().await
}

async fn shutdown_waits_for_handlers_and_settles_them(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("drain").await?;
    let sub = h.new_subscription("drain", &topic, |_| {}).await?;
    let release = CancellationToken::new();
    let recorder = Recorder::new();
    let gate = release.clone();
    let handler = recorder.handler_async(move |_, _| {
        let gate = gate.clone();
        Box::pin(async move {
            gate.cancelled().await;
            Disposition::Ack
        })
    });
    let receiving = h.receive(&sub, handler);
    h.transport()
        .publish(&topic, vec![message("in flight", &[])])
        .await?;
    recorder.wait_for(1).await?;

    let stopping = tokio::spawn(receiving.stop());
    tokio::time::sleep(support::QUIET).await;
    assert!(
        !stopping.is_finished(),
        "receive returned while a handler was still running"
    );
    release.cancel();
    stopping.await??;

    // The handler's ack was sent before receive returned: a new receiver gets nothing, even
    // after the lease would have expired.
    let after = Recorder::new();
    let receiving = h.receive(&sub, after.acking());
    h.advance(700 * SECOND).await?;
    after.assert_quiet(0).await?;
    receiving.stop().await
}

async fn receive_on_a_missing_subscription_is_not_found(h: Harness) -> anyhow::Result<()> {
    let missing = h.subscription("missing");
    let recorder = Recorder::new();
    let mut receiving = h.receive(&missing, recorder.acking());
    let error = receiving
        .join()
        .await
        .expect_err("receiving from a missing subscription must fail");
    let transport_error = error
        .downcast_ref::<converge::TransportError>()
        .ok_or_else(|| anyhow::anyhow!("not a transport error: {error:#}"))?;
    assert_eq!(transport_error.code(), Code::NotFound, "{transport_error}");
    Ok(())
}

async fn publish_to_a_missing_topic_is_not_found(h: Harness) -> anyhow::Result<()> {
    let missing = h.topic("missing");
    let error = h
        .transport()
        .publish(&missing, vec![message("lost", &[])])
        .await
        .expect_err("publishing to a missing topic must fail");
    assert_eq!(error.code(), Code::NotFound, "{error}");
    Ok(())
}

async fn invalid_message_is_refused(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("invalid").await?;
    // Neither data nor attributes: Pub/Sub refuses such a message.
    let error = h
        .transport()
        .publish(&topic, vec![OutgoingMessage::default()])
        .await
        .expect_err("an empty message must be refused");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    // Attribute keys starting with "goog" are reserved.
    let error = h
        .transport()
        .publish(&topic, vec![message("x", &[("google-thing", "1")])])
        .await
        .expect_err("a reserved attribute must be refused");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    Ok(())
}

async fn one_publish_may_mix_ordering_keys(h: Harness) -> anyhow::Result<()> {
    // The API takes one ordering key per request; a transport splits a mixed batch itself.
    let topic = h.new_topic("mixed").await?;
    let sub = h
        .new_subscription("mixed", &topic, |c| c.message_ordering = true)
        .await?;
    let batch = vec![
        keyed("a1", "a"),
        keyed("b1", "b"),
        keyed("a2", "a"),
        message("n1", &[]),
    ];
    let ids = h.transport().publish(&topic, batch).await?;
    assert_eq!(ids.len(), 4);
    let recorder = Recorder::new();
    let receiving = h.receive(&sub, recorder.acking());
    recorder.wait_for(4).await?;
    recorder.assert_quiet(4).await?;
    let seen = recorder.seen();
    // Each id answers its own message, in the caller's order.
    for (id, data) in ids.iter().zip(["a1", "b1", "a2", "n1"]) {
        let got = seen
            .iter()
            .find(|m| &m.message_id == id)
            .ok_or_else(|| anyhow::anyhow!("id {id} was not delivered"))?;
        assert_eq!(text(got), data);
    }
    let of_a: Vec<String> = seen
        .iter()
        .filter(|m| m.ordering_key == "a")
        .map(text)
        .collect();
    assert_eq!(of_a, ["a1", "a2"]);
    receiving.stop().await
}

async fn flow_control_bounds_the_messages_in_handlers(h: Harness) -> anyhow::Result<()> {
    let topic = h.new_topic("flow").await?;
    let sub = h.new_subscription("flow", &topic, |_| {}).await?;
    let batch: Vec<_> = (0..12).map(|i| message(&format!("m{i}"), &[])).collect();
    h.transport().publish(&topic, batch).await?;

    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::new();
    let handler = {
        let (running, peak) = (running.clone(), peak.clone());
        recorder.handler_async(move |_, _| {
            let (running, peak) = (running.clone(), peak.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Long enough for the transport to hand out more if flow control let it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Disposition::Ack
            })
        })
    };
    let options = ReceiveOptions {
        max_outstanding_messages: 3,
        ..ReceiveOptions::default()
    };
    let receiving = h.receive_with(&sub, options, handler);
    recorder.wait_for(12).await?;
    recorder.assert_quiet(12).await?;
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} messages were in handlers at once");
    assert!(peak >= 2, "handlers never ran concurrently (peak {peak})");
    receiving.stop().await
}
