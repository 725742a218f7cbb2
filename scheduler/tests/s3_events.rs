//! `sluice serve` consuming S3 event notifications from a queue (SLUICE_S3_EVENTS_QUEUE) on the real
//! RabbitMQ: created objects become index jobs, removed ones delete jobs, an unparsable event ends
//! in the DLQ with its reason, and every event is acked (the queue is empty afterwards).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection};
use sluice_loadtests::fleet::Fleet;
use sluice_shared::job::{DeleteTarget, Job, JobSpec};
use sluice_shared::queue::{self, QueueRoute, QueueSettings};

/// Deletes the events queue and its retry queues at the end (the fleet only knows its own
/// topology).
struct EventsQueue {
    settings: QueueSettings,
    name: String,
}

impl Drop for EventsQueue {
    fn drop(&mut self) {
        let route = QueueRoute::s3_events(&self.settings, &self.name);
        sluice_shared::testing::delete_queues(&self.settings, route.queue_names());
    }
}

async fn connect(settings: &QueueSettings) -> Connection {
    queue::connect(settings).await.unwrap_or_else(|e| {
        panic!("RabbitMQ is not reachable ({e}); start it with `rabbitmq-server -detached` or run scripts/test.sh")
    })
}

/// Ready messages in `queue`, or `None` while it does not exist (a fresh channel per call: a
/// passive declare of a missing queue closes its channel).
async fn depth(conn: &Connection, queue: &str) -> Option<u32> {
    let channel = conn.create_channel().await.unwrap();
    let depth = queue::queue_depth(&channel, queue).await.ok();
    let _ = channel.close(200, "bye".into()).await;
    depth
}

async fn wait_until<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn aws_event(event_name: &str, key: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2025-03-01T12:00:00.000Z",
        "eventName": event_name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "handbook", "arn": "arn:aws:s3:::handbook"},
            "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                       "sequencer": "0055AED6DCD90281E5"}
        }
    }]})
    .to_string()
}

fn spawn_serve(fleet: &mut Fleet, events_queue: &str) -> (Child, tempfile::NamedTempFile) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fleet
        .env
        .insert("SLUICE_API_LISTEN".into(), format!("127.0.0.1:{port}"));
    fleet
        .env
        .insert("SLUICE_S3_EVENTS_QUEUE".into(), events_queue.to_string());
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = fleet
        .sluice()
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("spawn sluice serve");
    (child, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_events_become_jobs_and_garbage_goes_to_the_dlq() {
    let mut fleet = Fleet::new().await;
    let settings = fleet.settings.fleet.queue.clone();
    let events_queue = format!("{}.s3events", fleet.env["SLUICE_QUEUE_PREFIX"]);
    let _cleanup = EventsQueue {
        settings: settings.clone(),
        name: events_queue.clone(),
    };
    let conn = connect(&settings).await;
    let (mut serve, log) = spawn_serve(&mut fleet, &events_queue);
    let stderr = || std::fs::read_to_string(log.path()).unwrap_or_default();

    // serve declares the events queue when its consumer starts.
    wait_until(Duration::from_secs(60), "the events queue", async || {
        if let Some(status) = serve.try_wait().unwrap() {
            panic!("sluice serve exited ({status}):\n{}", stderr());
        }
        depth(&conn, &events_queue).await
    })
    .await;

    // Published the way MinIO's AMQP target does with the default exchange: routed by queue name.
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let minio_removed = serde_json::json!({
        "EventName": "s3:ObjectRemoved:Delete",
        "Key": "handbook/old/notes.md",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3",
            "eventTime": "2025-03-01T12:00:01.000Z",
            "eventName": "s3:ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "handbook"}, "object": {"key": "old%2Fnotes.md", "sequencer": "17A"}}
        }]
    })
    .to_string();
    let events = [
        aws_event("ObjectCreated:Put", "policies/refund+policy.pdf"),
        "this is not an S3 event".to_string(),
        r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2025-03-01T12:00:00Z","Bucket":"handbook"}"#
            .to_string(),
        minio_removed,
    ];
    for event in &events {
        channel
            .basic_publish(
                "".into(),
                events_queue.as_str().into(),
                BasicPublishOptions::default(),
                event.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // No worker runs: the jobs stay on the work queue for us to read.
    let mut jobs: Vec<Job> = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "two jobs on the work queue",
        async || {
            while let Some(message) = channel
                .basic_get(
                    settings.work_queue.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap()
            {
                jobs.push(Job::parse(&message.delivery.data).expect("a valid v1 job"));
                message
                    .delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
            }
            (jobs.len() >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    match &jobs[0].spec {
        JobSpec::Index(index) => {
            assert_eq!(index.source, "s3://handbook/policies/refund policy.pdf");
            assert_eq!(index.effective_doc_id(), index.source);
        }
        other => panic!("ObjectCreated should be an index job, got {other:?}"),
    }
    match &jobs[1].spec {
        JobSpec::Delete(delete) => assert_eq!(
            delete.target,
            DeleteTarget::DocId("s3://handbook/old/notes.md".into())
        ),
        other => panic!("ObjectRemoved should be a delete job, got {other:?}"),
    }

    let dead = wait_until(
        Duration::from_secs(30),
        "the garbage event in the DLQ",
        async || {
            let dead = fleet.drain_dlq().await;
            (!dead.is_empty()).then_some(dead)
        },
    )
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "malformed_json", "{dead:?}");
    assert!(dead[0].1.contains("malformed JSON"), "{dead:?}");

    // SIGTERM: exit 0. Anything it had not acked would now be back on the queue.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM:\n{}",
            stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", stderr());
    assert_eq!(
        depth(&conn, &events_queue).await,
        Some(0),
        "every event acked"
    );
    assert_eq!(
        depth(&conn, &settings.work_queue).await,
        Some(0),
        "no further jobs"
    );
    conn.close(200, "done".into()).await.unwrap();
    fleet.finish().await;
}
