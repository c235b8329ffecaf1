//! Fault injection between strata and a real S3 server: a small HTTP proxy on 127.0.0.1 in front
//! of the test server answers some requests with 503, resets connections, or forwards a request
//! and then drops the answer (the "unknown commit outcome" case). A publish must end fully done
//! or not done at all, and a retried request whose first attempt landed must not be mistaken for
//! a conflict.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{TimeZone, Utc};
use strata_publish::{Error, FlipKind, Lake, OpenMode, PublishOptions, RunContext, WriterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and relay the answer.
    Pass,
    /// Answer 503 without forwarding.
    ServerError,
    /// Reset the connection without forwarding.
    ResetBeforeForward,
    /// Forward it (so it takes effect), then reset the connection instead of answering.
    DropResponse,
    /// Forward it after a pause.
    Delay(u64),
}

type Rule = Box<dyn FnMut(&str, &str, u64) -> Fault + Send>;

struct State {
    rule: Rule,
    count: u64,
    log: Vec<(String, String, Fault)>,
}

/// A fault-injecting HTTP/1.1 proxy. Every connection carries one request.
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, rule: Rule) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State { rule, count: 0, log: Vec::new() }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream, shared.clone()));
            }
        });
        FaultProxy { endpoint, state, task }
    }

    pub fn set_rule(&self, rule: Rule) {
        self.state.lock().unwrap().rule = rule;
    }

    /// `(method, path, fault)` of every request so far.
    pub fn log(&self) -> Vec<(String, String, Fault)> {
        self.state.lock().unwrap().log.clone()
    }
}

/// Reads one HTTP request (head and body) from the client.
async fn read_request(client: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = buf[..head_end].to_vec();
    let mut body = buf[head_end..].to_vec();
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while body.len() < len {
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some((head, body))
}

/// Replaces any `Connection` header with `Connection: close`.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n") {
        if line.is_empty() || line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn forward(upstream: SocketAddr, head: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await.ok()?;
    up.write_all(&with_connection_close(head)).await.ok()?;
    up.write_all(body).await.ok()?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await.ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut out = with_connection_close(&response[..head_end]);
    out.extend_from_slice(&response[head_end..]);
    Some(out)
}

fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let Some((head, body)) = read_request(&mut client).await else { return };
    let first = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let mut parts = first.split(' ');
    let (method, path) =
        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let fault = {
        let mut s = state.lock().unwrap();
        s.count += 1;
        let n = s.count;
        let f = (s.rule)(&method, &path, n);
        s.log.push((method, path, f));
        f
    };
    match fault {
        Fault::ServerError => {
            let _ = client
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        Fault::ResetBeforeForward => reset(client),
        Fault::DropResponse => {
            let _ = forward(upstream, &head, &body).await;
            reset(client);
        }
        Fault::Pass | Fault::Delay(_) => {
            if let Fault::Delay(ms) = fault {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            match forward(upstream, &head, &body).await {
                Some(response) => {
                    let _ = client.write_all(&response).await;
                }
                None => reset(client),
            }
        }
    }
}

/// The S3 test server's address and a fresh lake URL on it, or `None` when S3 is not configured.
fn s3_setup() -> Option<(SocketAddr, String)> {
    let base = std::env::var("STRATA_TEST_S3_URL").ok()?;
    let endpoint = std::env::var("AWS_ENDPOINT").ok()?;
    let addr: SocketAddr =
        endpoint.trim_start_matches("http://").trim_end_matches('/').parse().ok()?;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let url = format!(
        "{}/faults-{}-{}",
        base.trim_end_matches('/'),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    Some((addr, url))
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Utf8, false),
        Field::new("marker", DataType::Int64, false),
    ]))
}

async fn publish_marker(lake: &Lake, run: &str, day: &str, marker: i64) -> Result<u64, Error> {
    let ds = lake.dataset("orders")?;
    let ctx = RunContext::new(run, Utc.timestamp_opt(1_767_225_600 + marker, 0).unwrap())?;
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from((0..10).map(|i| marker * 100 + i).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![day; 10])),
            Arc::new(Int64Array::from(vec![marker; 10])),
        ],
    )?;
    let mut w = ds.writer(
        &ctx,
        schema(),
        WriterOptions { partition_by: vec!["day".into()], ..Default::default() },
    )?;
    w.write(&batch).await?;
    let staged = w.finish().await?;
    Ok(ds.publish(staged, &PublishOptions::default(), &ctx).await?.record.version)
}

/// Checks the lake through a clean connection: the pointer log is whole and parses, and every
/// file of the current version is present and intact. Returns the current version.
async fn check_whole(url: &str) -> u64 {
    let lake = Lake::open(url, OpenMode::Existing).unwrap();
    let ds = lake.dataset("orders").unwrap();
    let history = ds.history().await.unwrap();
    for (i, f) in history.iter().enumerate() {
        assert_eq!(f.seq, i as u64 + 1);
    }
    let current = ds.current().await.unwrap();
    let report = ds.verify(None).await.unwrap();
    assert!(
        report.problems.is_empty(),
        "current version {} is damaged: {:?}",
        current.version,
        report.problems
    );
    current.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answer_to_the_flip_is_not_a_conflict() {
    let Some((upstream, url)) = s3_setup() else { return };
    let proxy = FaultProxy::start(upstream, Box::new(|_, _, _| Fault::Pass)).await;
    let lake = Lake::open_s3_with(&url, &[("aws_endpoint", &proxy.endpoint)]).unwrap();
    assert_eq!(publish_marker(&lake, "r1", "2026-01-01", 1).await.unwrap(), 1);
    // The first create of the next pointer entry reaches the server and lands, but its answer
    // is lost on the way back.
    let mut dropped = false;
    proxy.set_rule(Box::new(move |method, path, _| {
        if method == "PUT" && path.contains("/_strata/pointer/") && !dropped {
            dropped = true;
            Fault::DropResponse
        } else {
            Fault::Pass
        }
    }));
    let v = publish_marker(&lake, "r2", "2026-01-02", 2).await.expect("a landed flip is a success");
    assert_eq!(v, 2);
    let log = proxy.log();
    let entry2 = "/_strata/pointer/00000000000000000002.json";
    let puts: Vec<_> = log.iter().filter(|(m, p, _)| m == "PUT" && p.ends_with(entry2)).collect();
    assert_eq!(puts.len(), 1, "the create is not blindly re-sent: {log:?}");
    assert_eq!(puts[0].2, Fault::DropResponse, "{log:?}");
    // strata looked at what was there instead, found its own entry, and called it a success.
    let last = log.iter().rfind(|(_, p, _)| p.ends_with(entry2)).unwrap();
    assert_eq!(last.0.as_str(), "GET", "{log:?}");
    assert_eq!(check_whole(&url).await, 2);
    let history = Lake::open(&url, OpenMode::Existing)
        .unwrap()
        .dataset("orders")
        .unwrap()
        .history()
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "exactly one entry for the publish");
    assert_eq!((history[1].kind, history[1].run_id.as_str()), (FlipKind::Publish, "r2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_errors_are_retried_with_backoff() {
    let Some((upstream, url)) = s3_setup() else { return };
    // Every third request answers 503, every fifth is reset before it reaches the server.
    let proxy = FaultProxy::start(
        upstream,
        Box::new(|_, _, n| {
            if n % 3 == 0 {
                Fault::ServerError
            } else if n % 5 == 0 {
                Fault::ResetBeforeForward
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let lake = Lake::open_s3_with(&url, &[("aws_endpoint", &proxy.endpoint)]).unwrap();
    for k in 1..=4 {
        let v = publish_marker(&lake, &format!("r{k}"), &format!("2026-01-0{k}"), k).await.unwrap();
        assert_eq!(v, k as u64);
    }
    let ds = lake.dataset("orders").unwrap();
    let ctx = RunContext::new("rb", Utc.timestamp_opt(1_800_000_000, 0).unwrap()).unwrap();
    ds.rollback(2, Some("faulty network".into()), &ctx).await.unwrap();
    assert!(ds.verify(Some(4)).await.unwrap().problems.is_empty());
    let log = proxy.log();
    assert!(log.iter().filter(|l| l.2 == Fault::ServerError).count() >= 5, "faults were injected");
    assert!(log.iter().any(|l| l.2 == Fault::ResetBeforeForward));
    assert_eq!(check_whole(&url).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_under_random_faults_are_all_or_nothing() {
    let Some((upstream, url)) = s3_setup() else { return };
    let proxy = FaultProxy::start(upstream, Box::new(|_, _, _| Fault::Pass)).await;
    let lake = Lake::open_s3_with(&url, &[("aws_endpoint", &proxy.endpoint)]).unwrap();
    assert_eq!(publish_marker(&lake, "base", "2026-01-01", 0).await.unwrap(), 1);
    // A fixed-seed generator: the same faults on every run.
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    proxy.set_rule(Box::new(move |_, _, _| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        match seed % 100 {
            0..=9 => Fault::ServerError,
            10..=17 => Fault::ResetBeforeForward,
            18..=25 => Fault::DropResponse,
            26..=28 => Fault::Delay(30),
            _ => Fault::Pass,
        }
    }));
    let mut outcomes = Vec::new();
    for k in 1..=12i64 {
        let before = check_whole(&url).await;
        let result = publish_marker(&lake, &format!("r{k}"), "2026-01-02", k).await;
        let after = check_whole(&url).await;
        let history = Lake::open(&url, OpenMode::Existing)
            .unwrap()
            .dataset("orders")
            .unwrap()
            .history()
            .await
            .unwrap();
        let landed = history.iter().any(|f| f.run_id == format!("r{k}"));
        match &result {
            Ok(v) => {
                assert!(landed, "r{k} reported success but is not in the history");
                assert_eq!(after, *v, "r{k}: the published version is current");
            }
            Err(Error::UnknownCommit { .. }) => {
                // Either way the lake is whole; which way is in the history.
                if !landed {
                    assert_eq!(after, before);
                }
            }
            Err(e) => {
                assert!(!landed, "r{k} failed ({e}) but its flip landed");
                assert_eq!(after, before, "r{k} failed but the current version moved");
            }
        }
        outcomes.push((k, result.is_ok(), landed));
    }
    let faults = proxy.log().iter().filter(|l| l.2 != Fault::Pass).count();
    assert!(faults >= 10, "enough faults were injected ({faults})");
    assert!(
        outcomes.iter().filter(|o| o.1).count() >= 3,
        "most publishes get through retries: {outcomes:?}"
    );
}
