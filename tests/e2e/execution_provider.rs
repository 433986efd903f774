//! Execution providers on a CPU-only build: the CPU path is reported, a GPU provider that is not
//! there stops the server with a clear message, and `--allow-cpu-fallback` serves on the CPU.

use crate::common::{MODEL, Server, repo};
use serde_json::Value;

async fn models(server: &Server) -> Value {
    serde_json::from_str(&crate::common::get_text(server, "/v1/models").await).unwrap()
}

async fn metrics(server: &Server) -> String {
    crate::common::get_text(server, "/metrics").await
}

fn provider_of(models: &Value) -> &str {
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == MODEL && m["state"] == "ready")
        .and_then(|m| m["execution_provider"].as_str())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cpu_provider_is_reported_in_models_and_metrics() {
    let server = Server::start(&[]);
    assert_eq!(provider_of(&models(&server).await), "cpu");
    let text = metrics(&server).await;
    assert!(
        text.contains(&format!(
            "fer_execution_provider{{model=\"{MODEL}\",provider=\"cpu\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "fer_execution_provider{{model=\"{MODEL}\",provider=\"cuda\"}} 0"
    )));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn an_unavailable_gpu_provider_stops_the_server_with_a_clear_message() {
    for provider in ["cuda", "tensorrt"] {
        let out = crate::common::serve_command(
            &repo().join("models"),
            &["--execution-provider", provider],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "execution provider {provider} requested but unavailable"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("--features"), "{stderr}");
        assert!(stderr.contains("--allow-cpu-fallback"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_fallback_serves_only_when_allowed_and_says_so() {
    let server = Server::start(&["--execution-provider", "tensorrt", "--allow-cpu-fallback"]);
    assert_eq!(provider_of(&models(&server).await), "cpu");
    assert!(server.logged("running on the CPU (--allow-cpu-fallback)"));
    let text = metrics(&server).await;
    assert!(text.contains(&format!(
        "fer_execution_provider{{model=\"{MODEL}\",provider=\"tensorrt\"}} 0"
    )));
    let face = crate::common::ferplus_faces(9, 1).remove(0);
    assert_eq!(crate::common::classify_png(&server, face.png).await, 200);
}
