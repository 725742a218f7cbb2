//! The queue module against the real RabbitMQ (amqp://guest:guest@127.0.0.1:5672/%2f, or
//! `SLUICE_TEST_AMQP_URL`). Each test declares its own uniquely named exchanges and queues and
//! deletes them when it ends, pass or fail. An unreachable broker fails the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use sluice_shared::queue::{
    self, Broker, Consumer, DEFAULT_AMQP_URL, Delivery, ERROR_HEADER, ERROR_KIND_HEADER, Publisher,
    QueueError, QueueRoute, QueueSettings, attempt_of, header_string, job_headers, queue_depth,
    retry_queue_arguments, work_queue_arguments,
};
use sluice_shared::secret::Secret;

/// Settings with names no other test uses, short retry delays and a few publish attempts.
fn unique_settings() -> QueueSettings {
    let url = std::env::var("SLUICE_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let p = format!("sluice-test.{}", &id[..12]);
    QueueSettings {
        amqp_url: Secret::new(url),
        exchange: format!("{p}.jobs"),
        work_queue: format!("{p}.work"),
        dead_letter_exchange: format!("{p}.dlx"),
        dead_letter_queue: format!("{p}.dlq"),
        retry_queue_prefix: format!("{p}.retry"),
        retry_delays: vec![Duration::from_secs(2), Duration::from_secs(60)],
        publish_attempts: 3,
        // A local broker: fail fast when it is down.
        reconnect_attempts: 2,
        confirm_timeout: Duration::from_secs(10),
        connection_name: format!("{p}.test"),
        ..QueueSettings::default()
    }
}

/// A declared topology that deletes its exchanges and queues when dropped.
struct TestTopology {
    settings: QueueSettings,
    connection: Connection,
}

async fn connect_or_fail(settings: &QueueSettings) -> Connection {
    // The error names the URL (password masked) and says how to start a local broker.
    queue::connect(settings).await.unwrap_or_else(|e| {
        panic!(
            "{e}; or run scripts/test.sh (which installs and starts RabbitMQ), or point \
             SLUICE_TEST_AMQP_URL at a broker"
        )
    })
}

impl TestTopology {
    async fn declare(settings: QueueSettings) -> Self {
        let connection = connect_or_fail(&settings).await;
        let channel = connection.create_channel().await.expect("channel");
        queue::declare_topology(&channel, &settings)
            .await
            .expect("declaring the topology");
        TestTopology {
            settings,
            connection,
        }
    }

    async fn channel(&self) -> Channel {
        self.connection.create_channel().await.expect("channel")
    }

    async fn depth(&self, queue: &str) -> u32 {
        queue_depth(&self.channel().await, queue)
            .await
            .expect("queue depth")
    }

    /// Polls until `queue` holds `want` ready messages, or panics after `within`.
    async fn wait_depth(&self, queue: &str, want: u32, within: Duration) {
        let start = Instant::now();
        loop {
            let depth = self.depth(queue).await;
            if depth == want {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{queue} holds {depth} messages, expected {want} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes one message off `queue` (acking it), or panics.
    async fn get(&self, queue: &str) -> lapin::message::Delivery {
        // Keep the channel until the ack is done: dropping it closes it.
        let channel = self.channel().await;
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("{queue} is empty"))
            .delivery;
        message
            .ack(BasicAckOptions::default())
            .await
            .expect("ack basic.get");
        message
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        sluice_shared::testing::delete_topology(&self.settings);
    }
}

/// The next delivery within `within`, or panics.
async fn next_within(consumer: &mut Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {within:?}"))
        .expect("consumer ended")
        .expect("delivery")
}

fn is_precondition_failed(error: &QueueError) -> bool {
    error.to_string().contains("PRECONDITION_FAILED")
}

async fn redeclare(t: &TestTopology, queue: &str, args: FieldTable) -> Result<(), QueueError> {
    // A failed declare closes its channel: one channel per attempt.
    t.channel()
        .await
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(|_| ())
        .map_err(|source| QueueError::Declare {
            what: queue.to_string(),
            source,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_idempotent_and_made_of_quorum_queues() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    // A second declaration (another process starting) succeeds with the same arguments.
    queue::declare_topology(&t.channel().await, s)
        .await
        .expect("declaring the topology twice");

    // Same name, classic instead of quorum: the broker refuses, so the queue IS a quorum queue.
    let mut classic = work_queue_arguments(s);
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let err = redeclare(&t, &s.work_queue, classic).await.unwrap_err();
    assert!(is_precondition_failed(&err), "{err}");

    let mut dlq_classic = FieldTable::default();
    dlq_classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let err = redeclare(&t, &s.dead_letter_queue, dlq_classic)
        .await
        .unwrap_err();
    assert!(is_precondition_failed(&err), "{err}");

    // The work queue dead-letters somewhere else only over the broker's objection.
    let mut other_dlx = work_queue_arguments(s);
    other_dlx.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("elsewhere".into()),
    );
    let err = redeclare(&t, &s.work_queue, other_dlx).await.unwrap_err();
    assert!(is_precondition_failed(&err), "{err}");

    // Each retry queue carries its own fixed TTL.
    let retry = s.retry_queue_name(s.retry_delays[0]);
    let wrong_ttl = retry_queue_arguments(s, Duration::from_secs(99));
    let err = redeclare(&t, &retry, wrong_ttl).await.unwrap_err();
    assert!(is_precondition_failed(&err), "{err}");
    redeclare(&t, &retry, retry_queue_arguments(s, s.retry_delays[0]))
        .await
        .expect("the same arguments are accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publish_is_consumed_and_acked() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let publisher = Publisher::connect(s).await.expect("publisher");
    let body = br#"{"schema_version":1,"kind":"index","source":"file:///a.md"}"#;
    publisher
        .publish_with_retry(&s.routing_key, body, job_headers(0))
        .await
        .expect("confirmed publish");
    for _ in 0..2 {
        publisher
            .publish(&s.routing_key, b"{}", job_headers(0))
            .await
            .expect("confirmed publish");
    }
    // Confirmed means enqueued: the depth shows all three at once.
    assert_eq!(t.depth(&s.work_queue).await, 3);

    let connection = connect_or_fail(s).await;
    let mut consumer = Consumer::start(&connection, s, "c1")
        .await
        .expect("consumer");
    let first = next_within(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(first.body(), body);
    assert!(!first.redelivered());
    assert_eq!(first.attempt(), 0);
    let props = &first.inner().properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert!(first.published_at().is_some());
    first.ack().await.expect("ack");
    for _ in 0..2 {
        next_within(&mut consumer, Duration::from_secs(10))
            .await
            .ack()
            .await
            .expect("ack");
    }
    // Acked for real: closing the channel returns nothing to the queue.
    consumer.close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.depth(&s.work_queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_an_error_not_a_silent_ack() {
    let t = TestTopology::declare(unique_settings()).await;
    let publisher = Publisher::connect(&t.settings).await.expect("publisher");
    let err = publisher
        .publish_with_retry("no-such-key", b"{}", job_headers(0))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unroutable { .. }), "{err}");
    assert!(!err.is_retryable());
    let err = publisher
        .publish_to_retry(9, b"{}", job_headers(0))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NoSuchRetryDelay { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_delivery_on_a_closed_channel_is_redelivered() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let publisher = Publisher::connect(s).await.expect("publisher");
    publisher
        .publish(&s.routing_key, b"{\"n\":1}", job_headers(0))
        .await
        .expect("publish");

    let conn1 = connect_or_fail(s).await;
    let mut c1 = Consumer::start(&conn1, s, "c1").await.expect("consumer 1");
    let held = next_within(&mut c1, Duration::from_secs(10)).await;
    assert!(!held.redelivered());
    c1.close().await.expect("closing consumer 1");
    // The worker's channel died before it acked: the ack must fail, not pretend.
    let err = held.ack().await.unwrap_err();
    assert!(matches!(err, QueueError::ChannelGone), "{err}");

    let conn2 = connect_or_fail(s).await;
    let mut c2 = Consumer::start(&conn2, s, "c2").await.expect("consumer 2");
    let again = next_within(&mut c2, Duration::from_secs(10)).await;
    assert!(again.redelivered(), "redelivered flag set");
    assert_eq!(again.body(), b"{\"n\":1}");
    again.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_later_returns_after_the_ttl_with_the_attempt_incremented() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let publisher = Publisher::connect(s).await.expect("publisher");
    publisher
        .publish(&s.routing_key, b"{\"doc\":7}", job_headers(0))
        .await
        .expect("publish");
    let connection = connect_or_fail(s).await;
    let mut consumer = Consumer::start(&connection, s, "c")
        .await
        .expect("consumer");
    let d = next_within(&mut consumer, Duration::from_secs(10)).await;
    let next_attempt = d.attempt() + 1;
    let sent = Instant::now();
    d.retry_later(next_attempt, "embedding provider returned 503")
        .await
        .expect("retry_later");
    // Parked on the first (2 s) retry queue, not on the work queue.
    let retry_queue = s.retry_queue_name(s.retry_delays[0]);
    assert_eq!(t.depth(&retry_queue).await, 1);
    assert_eq!(t.depth(&s.work_queue).await, 0);

    let back = next_within(&mut consumer, Duration::from_secs(20)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "came back after {:?}, before the TTL",
        sent.elapsed()
    );
    assert_eq!(back.attempt(), 1);
    assert_eq!(back.body(), b"{\"doc\":7}");
    assert_eq!(
        header_string(back.headers(), ERROR_HEADER).as_deref(),
        Some("embedding provider returned 503")
    );
    // A second retry goes to the second delay's queue.
    back.retry_later(2, "still 503").await.expect("retry again");
    let second = s.retry_queue_name(s.retry_delays[1]);
    t.wait_depth(&second, 1, Duration::from_secs(5)).await;
    assert_eq!(
        attempt_of(t.get(&second).await.properties.headers().as_ref()),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_lands_in_the_dlq_with_the_reason() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let publisher = Publisher::connect(s).await.expect("publisher");
    publisher
        .publish(&s.routing_key, b"not json", job_headers(0))
        .await
        .expect("publish");
    let connection = connect_or_fail(s).await;
    let mut consumer = Consumer::start(&connection, s, "c")
        .await
        .expect("consumer");
    let d = next_within(&mut consumer, Duration::from_secs(10)).await;
    d.dead_letter("expected value at line 1 column 1", "malformed_json")
        .await
        .expect("dead_letter");

    t.wait_depth(&s.dead_letter_queue, 1, Duration::from_secs(5))
        .await;
    let dead = t.get(&s.dead_letter_queue).await;
    let headers = dead.properties.headers().as_ref();
    assert_eq!(dead.data, b"not json");
    assert_eq!(
        header_string(headers, ERROR_HEADER).as_deref(),
        Some("expected value at line 1 column 1")
    );
    assert_eq!(
        header_string(headers, ERROR_KIND_HEADER).as_deref(),
        Some("malformed_json")
    );
    consumer.close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.depth(&s.work_queue).await, 0, "the original was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_dead_letters_a_message_past_the_delivery_limit() {
    let settings = QueueSettings {
        delivery_limit: 2,
        ..unique_settings()
    };
    let t = TestTopology::declare(settings).await;
    let s = &t.settings;
    let publisher = Publisher::connect(s).await.expect("publisher");
    publisher
        .publish(&s.routing_key, b"{\"poison\":true}", job_headers(0))
        .await
        .expect("publish");
    let connection = connect_or_fail(s).await;
    let mut consumer = Consumer::start(&connection, s, "c")
        .await
        .expect("consumer");

    let mut deliveries = 0;
    let start = Instant::now();
    while t.depth(&s.dead_letter_queue).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not dead-lettered after {deliveries} deliveries"
        );
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            deliveries += 1;
            d.reject().await.expect("reject with requeue");
        }
    }
    // "Returned more times than the limit": the first delivery plus `limit` failed returns.
    assert_eq!(deliveries, 3, "deliveries before the broker gave up");
    let dead = t.get(&s.dead_letter_queue).await;
    assert_eq!(dead.data, b"{\"poison\":true}");
    let x_death = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned());
    let Some(AMQPValue::FieldArray(entries)) = x_death else {
        panic!(
            "no x-death header on the dead letter: {:?}",
            dead.properties
        );
    };
    let reason = entries.as_slice().iter().find_map(|entry| match entry {
        AMQPValue::FieldTable(t) => t.inner().get("reason").cloned(),
        _ => None,
    });
    assert_eq!(
        reason,
        Some(AMQPValue::LongString("delivery_limit".into())),
        "x-death reason"
    );
    assert_eq!(t.depth(&s.work_queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_counts_ready_messages_and_rejects_unknown_queues() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    assert_eq!(t.depth(&s.work_queue).await, 0);
    let publisher = Publisher::connect(s).await.expect("publisher");
    for i in 0..5 {
        publisher
            .publish(
                &s.routing_key,
                format!("{{\"i\":{i}}}").as_bytes(),
                job_headers(0),
            )
            .await
            .expect("publish");
    }
    assert_eq!(t.depth(&s.work_queue).await, 5);
    publisher
        .publish_to_dlq(b"{}", job_headers(0))
        .await
        .expect("publish to dlq");
    assert_eq!(t.depth(&s.dead_letter_queue).await, 1);
    let err = queue_depth(&t.channel().await, &format!("{}.missing", s.work_queue))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_without_the_password() {
    let settings = QueueSettings {
        // Port 1 on localhost: nothing listens there.
        amqp_url: Secret::new("amqp://bob:hunter2@127.0.0.1:1/%2f"),
        reconnect_attempts: 1,
        ..unique_settings()
    };
    let err = queue::connect(&settings).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, QueueError::Connect { .. }), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
}

/// An S3 events queue of a test, deleted with its retry queues when dropped.
struct EventsQueue {
    settings: QueueSettings,
    route: QueueRoute,
}

impl EventsQueue {
    fn new(settings: &QueueSettings) -> Self {
        let name = format!("{}.events", settings.work_queue);
        EventsQueue {
            settings: settings.clone(),
            route: QueueRoute::s3_events(settings, &name),
        }
    }

    fn name(&self) -> &str {
        self.route.queue()
    }
}

impl Drop for EventsQueue {
    fn drop(&mut self) {
        sluice_shared::testing::delete_queues(&self.settings, self.route.queue_names());
    }
}

/// Publishes `body` to `queue` through the default exchange, as MinIO's AMQP target does.
async fn publish_to_queue(t: &TestTopology, queue: &str, body: &[u8]) {
    let channel = t.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_s3_event_returns_to_the_events_queue_never_to_the_work_queue() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let events = EventsQueue::new(s);
    let route = queue::declare_s3_events_queue(&t.connection, s, events.name())
        .await
        .expect("declaring the events queue");
    assert_eq!(route, events.route);
    let publisher = Arc::new(Publisher::connect(s).await.expect("publisher"));
    let mut consumer = Consumer::start_on(&t.connection, route.clone(), 1, "events", publisher)
        .await
        .expect("consumer");
    publish_to_queue(&t, events.name(), b"{\"Records\":[]}").await;

    // Handed back: a fresh copy on the events queue, delivered to its consumer again.
    let event = next_within(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(event.queue(), events.name());
    event.hand_back().await.expect("hand_back");
    let again = next_within(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(again.queue(), events.name());
    assert_eq!(again.body(), b"{\"Records\":[]}");
    assert!(!again.redelivered(), "a republished copy, not a requeue");
    assert_eq!(t.depth(&s.work_queue).await, 0);

    // Retried: parked on the events queue's own first retry queue, then back on the events queue.
    let sent = Instant::now();
    again
        .retry_later(1, "the bucket was unreachable")
        .await
        .expect("retry_later");
    let parked = &route.retry_queue(1).name;
    assert_eq!(parked, &format!("{}.retry.2s", events.name()));
    assert_eq!(t.depth(parked).await, 1);
    let work_retry = s.retry_queue_name(s.retry_delays[0]);
    assert_eq!(t.depth(&work_retry).await, 0);
    let back = next_within(&mut consumer, Duration::from_secs(20)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "came back after {:?}, before the TTL",
        sent.elapsed()
    );
    assert_eq!(back.queue(), events.name());
    assert_eq!(back.attempt(), 1);
    assert_eq!(
        header_string(back.headers(), ERROR_HEADER).as_deref(),
        Some("the bucket was unreachable")
    );
    back.ack().await.expect("ack");
    assert_eq!(
        t.depth(&s.work_queue).await,
        0,
        "no event ever reached the work queue"
    );
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_queue_that_exists_with_other_arguments_is_consumed_as_it_is() {
    let t = TestTopology::declare(unique_settings()).await;
    let s = &t.settings;
    let events = EventsQueue::new(s);
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    redeclare(&t, events.name(), classic)
        .await
        .expect("an operator's classic events queue");
    let route = queue::declare_s3_events_queue(&t.connection, s, events.name())
        .await
        .expect("the existing queue is accepted");
    for retry in route.retry_queues() {
        assert_eq!(t.depth(&retry.name).await, 0, "{} declared", retry.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_declares_the_topology_and_its_consumers_settle_on_the_work_queue() {
    let settings = unique_settings();
    // Deletes what the broker declares, pass or fail.
    let _cleanup = TestTopology {
        settings: settings.clone(),
        connection: connect_or_fail(&settings).await,
    };
    let broker = Broker::connect(&settings).await.expect("broker");
    let channel = broker.connection().create_channel().await.expect("channel");
    assert_eq!(
        queue_depth(&channel, &settings.work_queue).await.unwrap(),
        0
    );
    broker
        .publisher()
        .publish(&settings.routing_key, b"{\"job\":1}", job_headers(0))
        .await
        .expect("publish");
    let mut consumer = broker
        .consumer(broker.work_route(), 4, "broker")
        .await
        .expect("consumer");
    let job = next_within(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(job.queue(), settings.work_queue);
    job.hand_back().await.expect("hand_back");
    let again = next_within(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(again.body(), b"{\"job\":1}");
    again.ack().await.expect("ack");
    consumer.close().await.expect("close");
    broker.close().await;
}
