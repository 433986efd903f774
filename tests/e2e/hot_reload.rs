//! End-to-end: model versions change while the server serves. Traffic runs throughout; the test
//! publishes good versions, corrupt graphs, mismatched manifests and half-written files, and
//! deletes versions, and checks that no request fails and every answer came from a version that
//! was valid at the time. `FER_RELOAD_ROUNDS` sets the number of changes (default 25; hundreds by
//! hand).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{MODEL, Server, ferplus_faces, shipped_graph, write_version};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Change {
    Valid,
    CorruptGraph,
    MismatchedManifest,
    HalfWritten,
    DeleteNewest,
}

const CYCLE: [Change; 5] = [
    Change::Valid,
    Change::CorruptGraph,
    Change::MismatchedManifest,
    Change::HalfWritten,
    Change::DeleteNewest,
];

struct Answer {
    sent: Instant,
    received: Instant,
    status: u16,
    version: Option<u64>,
    body: String,
}

/// A version whose files were good from `from` until the server stopped serving it (`until`).
struct Validity {
    version: u64,
    from: Instant,
    until: Option<Instant>,
}

/// Stages a version under a dot-folder (never read) and renames it into place: the way to publish.
fn publish(root: &Path, version: u64, edit: impl FnOnce(&mut Value), graph: Option<&[u8]>) {
    let staged = write_version(&root.join(".staging"), MODEL, version, edit);
    if let Some(graph) = graph {
        std::fs::write(staged.join("model.onnx"), graph).unwrap();
    }
    std::fs::rename(&staged, root.join(MODEL).join(version.to_string())).unwrap();
}

/// `(version, state)` of every listed version of the model.
async fn listed(client: &reqwest::Client, server: &Server) -> Vec<(u64, String)> {
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == MODEL)
        .map(|m| {
            (
                m["version"].as_u64().unwrap(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn ready_versions(client: &reqwest::Client, server: &Server) -> Vec<u64> {
    listed(client, server)
        .await
        .into_iter()
        .filter(|(_, s)| s == "ready")
        .map(|(v, _)| v)
        .collect()
}

/// Polls `/v1/models` until `done` holds (20 s at most).
async fn wait_for(
    client: &reqwest::Client,
    server: &Server,
    what: &str,
    done: impl Fn(&[(u64, String)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = listed(client, server).await;
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 s for {what}; the server lists {now:?}\n{}",
            server.log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn only_ready(versions: &[(u64, String)], version: u64) -> bool {
    let ready: Vec<u64> = versions
        .iter()
        .filter(|(_, s)| s == "ready")
        .map(|(v, _)| *v)
        .collect();
    ready == [version]
}

fn has_failed(versions: &[(u64, String)], version: u64) -> bool {
    versions.iter().any(|(v, s)| *v == version && s == "failed")
}

/// Sends classify requests in a loop until `stop`, recording every answer.
fn traffic(
    server: &Server,
    png: Vec<u8>,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> tokio::task::JoinHandle<()> {
    let url = server.url("/v1/classify");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "image/png")
                .body(png.clone())
                .send()
                .await;
            let (status, body) = match response {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            let version = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["model"]["version"].as_u64());
            answers.lock().unwrap().push(Answer {
                sent,
                received: Instant::now(),
                status,
                version,
                body,
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_change_under_load_without_a_failed_request() {
    let rounds: usize = std::env::var("FER_RELOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let started = Instant::now();
    write_version(root, MODEL, 1, |_| {});
    let server = Server::start_in(
        root,
        &[
            "--reload-debounce-ms",
            "150",
            "--max-batch-size",
            "8",
            "--max-concurrent-requests",
            "0",
        ],
    );
    let client = reqwest::Client::new();
    let graph = shipped_graph();
    let mut validity = vec![Validity {
        version: 1,
        from: started,
        until: None,
    }];
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let png = ferplus_faces(9, 1).remove(0).png;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            traffic(
                &server,
                png.clone(),
                Arc::clone(&stop),
                Arc::clone(&answers),
            )
        })
        .collect();

    let mut next = 2u64;
    let mut failures_published = 0;
    for round in 0..rounds {
        let live: Vec<u64> = validity
            .iter()
            .filter(|v| v.until.is_none())
            .map(|v| v.version)
            .collect();
        let newest = *live.iter().max().unwrap();
        let change = match CYCLE[round % CYCLE.len()] {
            Change::DeleteNewest if live.len() < 2 => Change::Valid,
            change => change,
        };
        let version = next;
        match change {
            Change::Valid => {
                let from = Instant::now();
                publish(root, version, |_| {}, None);
                validity.push(Validity {
                    version,
                    from,
                    until: None,
                });
                wait_for(&client, &server, "a new version", |l| {
                    only_ready(l, version)
                })
                .await;
            }
            Change::CorruptGraph | Change::MismatchedManifest => {
                if let Change::CorruptGraph = change {
                    let mut corrupt = graph.clone();
                    for b in corrupt.iter_mut().skip(64).step_by(7) {
                        *b ^= 0x5a;
                    }
                    publish(root, version, |_| {}, Some(&corrupt));
                } else {
                    publish(
                        root,
                        version,
                        |m| {
                            m["labels"].as_array_mut().unwrap().pop();
                        },
                        None,
                    );
                }
                failures_published += 1;
                wait_for(&client, &server, "a bad version to fail", |l| {
                    has_failed(l, version) && only_ready(l, newest)
                })
                .await;
            }
            Change::HalfWritten => {
                // Written in place, not renamed: the server sees half a graph first.
                let dir = write_version(root, MODEL, version, |_| {});
                std::fs::write(dir.join("model.onnx"), &graph[..graph.len() / 2]).unwrap();
                failures_published += 1;
                wait_for(&client, &server, "a half-written version to fail", |l| {
                    has_failed(l, version) && only_ready(l, newest)
                })
                .await;
                let from = Instant::now();
                std::fs::write(dir.join("model.onnx"), &graph).unwrap();
                validity.push(Validity {
                    version,
                    from,
                    until: None,
                });
                wait_for(&client, &server, "the completed version", |l| {
                    only_ready(l, version)
                })
                .await;
            }
            Change::DeleteNewest => {
                let fallback = *live.iter().filter(|v| **v != newest).max().unwrap();
                std::fs::remove_dir_all(root.join(MODEL).join(newest.to_string())).unwrap();
                wait_for(
                    &client,
                    &server,
                    "the previous version after a delete",
                    |l| only_ready(l, fallback),
                )
                .await;
                let entry = validity.iter_mut().find(|v| v.version == newest).unwrap();
                entry.until = Some(Instant::now());
            }
        }
        if !matches!(change, Change::DeleteNewest) {
            next += 1;
        }
    }
    // Let traffic run on the final version for a moment, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert!(
        answers.len() >= rounds * 4,
        "only {} requests",
        answers.len()
    );
    for a in answers.iter() {
        assert_eq!(a.status, 200, "a request failed during reloads: {}", a.body);
        let version = a.version.expect("answers name their version");
        assert!(
            validity.iter().any(|v| v.version == version
                && v.from <= a.received
                && v.until.is_none_or(|until| a.sent <= until)),
            "version {version} answered a request sent at {:?} but was not valid then",
            a.sent - started
        );
    }
    let mut seen: Vec<u64> = answers.iter().filter_map(|a| a.version).collect();
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() >= 3, "traffic saw versions {seen:?}");

    let expected = validity
        .iter()
        .filter(|v| v.until.is_none())
        .map(|v| v.version)
        .max()
        .unwrap();
    assert_eq!(ready_versions(&client, &server).await, [expected]);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let load_failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("fer_model_loads_total{") && l.contains("outcome=\"failure\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        load_failures >= failures_published as f64,
        "{load_failures} failed loads counted, {failures_published} bad versions published"
    );
    assert!(
        server.logged("model version retired"),
        "replaced versions are freed once their requests finish"
    );
    eprintln!(
        "{rounds} changes, {} requests, 0 failed, versions served: {seen:?}",
        answers.len()
    );
}

async fn post(client: &reqwest::Client, server: &Server, path: &str) -> (u16, Value) {
    let r = client.post(server.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_the_repository_api_drive_an_unwatched_repository() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_version(root, MODEL, 1, |_| {});
    let server = Server::start_in(root, &["--repository-watch", "off"]);
    let client = reqwest::Client::new();

    // Not watched: a new version waits for SIGHUP.
    publish(root, 2, |_| {}, None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ready_versions(&client, &server).await, [1]);
    let (status, index) = post(&client, &server, "/v2/repository/index").await;
    assert_eq!(status, 200);
    let states: Vec<(String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("1".to_string(), "READY".to_string()),
            ("2".into(), "UNAVAILABLE".into())
        ]
    );
    server.signal("HUP");
    wait_for(&client, &server, "SIGHUP to load version 2", |l| {
        only_ready(l, 2)
    })
    .await;

    // Unload: requests for the model now get 404 and the server is not ready.
    let (status, _) = post(&client, &server, "/v2/repository/models/ferplus/unload").await;
    assert_eq!(status, 200);
    let png = ferplus_faces(9, 1).remove(0).png;
    let classify = |query: &'static str| {
        client
            .post(server.url(&format!("/v1/classify{query}")))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
    };
    let r = classify("").await.unwrap();
    assert_eq!(r.status(), 404);
    let readyz = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ready_versions(&client, &server).await.is_empty(),
        "an unloaded model stays unloaded across rescans"
    );

    // Load, with a policy that serves every version.
    std::fs::write(
        root.join(MODEL).join("serving.json"),
        r#"{"version_policy": "all"}"#,
    )
    .unwrap();
    let (status, body) = post(&client, &server, "/v2/repository/models/ferplus/load").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready_versions"], serde_json::json!([1, 2]));
    let r: Value = classify("?version=1").await.unwrap().json().await.unwrap();
    assert_eq!(r["model"]["version"], 1);
    let r: Value = classify("").await.unwrap().json().await.unwrap();
    assert_eq!(r["model"]["version"], 2, "the newest version by default");

    // Errors: an unknown model, a model with nothing loadable, a malformed body.
    let (status, body) = post(&client, &server, "/v2/repository/models/nope/load").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, "model_not_found".into())
    );
    write_version(root, "broken", 1, |m| {
        m["labels"].as_array_mut().unwrap().pop();
    });
    let (status, body) = post(&client, &server, "/v2/repository/models/broken/load").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "model_load_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("7 labels"),
        "{body}"
    );
    let r = client
        .post(server.url("/v2/repository/models/ferplus/load"))
        .header("content-type", "application/json")
        .body("{\"parameters\": {\"config\": \"{}\"}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(ready_versions(&client, &server).await, [1, 2]);
}
