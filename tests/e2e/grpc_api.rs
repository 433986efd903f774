//! End-to-end over gRPC: the real server, the generated tonic clients, real FER+ faces.
//! `fer.v1.Fer/StreamFrames` with 120 frames (order, completeness, batching across the stream, a
//! bad frame that does not end the stream), `Classify`, the Open Inference Protocol's ModelInfer
//! with `raw_input_contents`, error codes, and `grpc.health.v1`.

use crate::common::{Server, ferplus_faces, model_infer_of_images, serving_version};
use fer_server::grpc::proto::fer::v1 as fer;
use fer_server::grpc::proto::fer::v1::fer_client::FerClient;
use fer_server::grpc::proto::inference as kserve;
use fer_server::grpc::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

/// ModelInfer on encoded images (BYTES in `raw_input_contents`), asking for the `k` best labels.
fn top_k_of_images(images: &[&[u8]], k: i64) -> kserve::ModelInferRequest {
    let classification = kserve::InferParameter {
        parameter_choice: Some(kserve::infer_parameter::ParameterChoice::Int64Param(k)),
    };
    kserve::ModelInferRequest {
        outputs: vec![kserve::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: [("classification".to_string(), classification)].into(),
        }],
        ..model_infer_of_images("ferplus", images)
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_frames_answers_every_frame_in_order_batched_across_the_stream() {
    let server = Server::start(&["--max-queue-delay-ms", "2"]);
    let faces = ferplus_faces(9, 40);
    let mut client = FerClient::connect(server.grpc.clone()).await.unwrap();
    let frames: Vec<fer::Frame> = (0..120u64)
        .map(|i| fer::Frame {
            index: i,
            timestamp: i as f64 / 25.0,
            image: if i == 50 {
                b"not an image".to_vec()
            } else {
                faces[i as usize % faces.len()].png.clone()
            },
            model: String::new(),
            top_k: Some(3),
            detect: false,
        })
        .collect();
    let response = client
        .stream_frames(tokio_stream::iter(frames))
        .await
        .unwrap();
    let mut stream = response.into_inner();
    let mut results = Vec::new();
    while let Some(result) = stream.message().await.unwrap() {
        results.push(result);
    }
    assert_eq!(results.len(), 120, "every frame answered");
    let mut correct = 0;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.index, i as u64, "in order");
        assert!((r.timestamp - i as f64 / 25.0).abs() < 1e-9);
        if i == 50 {
            assert!(r.error.contains("image 0"), "{}", r.error);
            assert!(r.prediction.is_none());
            continue;
        }
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(
            (r.model.as_str(), r.version),
            ("ferplus", serving_version("ferplus"))
        );
        let p = r.prediction.as_ref().unwrap();
        assert_eq!(p.scores.len(), 3, "top_k");
        assert_eq!(p.scores[0].label, p.label);
        correct += usize::from(p.label == faces[i % faces.len()].label);
    }
    assert!(correct as f64 / 119.0 >= 0.8, "{correct}/119 correct");

    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let images = metric(&metrics, "fer_batch_size_sum{model=\"ferplus\"}");
    let batches = metric(&metrics, "fer_batch_size_count{model=\"ferplus\"}");
    assert_eq!(images, 119.0, "the bad frame never reached the model");
    assert!(
        batches < images,
        "frames of one stream share batches: {images} images in {batches} batches"
    );
    assert_eq!(
        metric(
            &metrics,
            "fer_grpc_requests_total{code=\"Ok\",method=\"StreamFrames.frame\"}"
        ),
        119.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn classify_and_model_infer_over_grpc_with_status_codes() {
    let server = Server::start(&["--max-images", "8"]);
    let faces = ferplus_faces(9, 3);
    let mut client = FerClient::connect(server.grpc.clone()).await.unwrap();
    let request = |images: Vec<Vec<u8>>, model: &str| fer::ClassifyRequest {
        model: model.into(),
        version: 0,
        images,
        top_k: None,
    };
    let response = client
        .classify(request(faces.iter().map(|f| f.png.clone()).collect(), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 3);
    assert_eq!(response.results[0].scores.len(), 8);
    let code = |r: Result<tonic::Response<fer::ClassifyResponse>, tonic::Status>| {
        r.map(|_| ()).unwrap_err().code()
    };
    use tonic::Code;
    assert_eq!(
        code(
            client
                .classify(request(vec![faces[0].png.clone()], "nope"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(client.classify(request(vec![], "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.classify(request(vec![b"junk".to_vec()], "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .classify(request(vec![faces[0].png.clone(); 9], ""))
                .await
        ),
        Code::InvalidArgument
    );

    // The Open Inference Protocol: encoded images as BYTES in raw_input_contents, top-2 labels.
    let mut kserve_client = GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    assert!(
        kserve_client
            .server_ready(kserve::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let pngs: Vec<&[u8]> = faces.iter().map(|f| f.png.as_slice()).collect();
    let infer = top_k_of_images(&pngs, 2);
    let response = kserve_client
        .model_infer(infer.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].datatype, "BYTES");
    assert_eq!(response.outputs[0].shape, [3, 2]);
    let strings = &response.raw_output_contents[0];
    let first_len = u32::from_le_bytes(strings[..4].try_into().unwrap()) as usize;
    let first = std::str::from_utf8(&strings[4..4 + first_len]).unwrap();
    let label = first.rsplit(':').next().unwrap();
    assert_eq!(label, client_labels(&mut client, &faces[0].png).await);

    let mut wrong = infer;
    wrong.inputs[0].shape = vec![3, 2];
    let status = kserve_client.model_infer(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("shape"), "{}", status.message());

    // grpc.health.v1 says SERVING while the default model serves.
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "inference.GRPCInferenceService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

async fn client_labels(client: &mut FerClient<tonic::transport::Channel>, png: &[u8]) -> String {
    client
        .classify(fer::ClassifyRequest {
            model: String::new(),
            version: 0,
            images: vec![png.to_vec()],
            top_k: Some(1),
        })
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .label
        .clone()
}

/// The same rules as HTTP: a key on everything but health (checked before the message is read),
/// RESOURCE_EXHAUSTED for a message over the body limit (HTTP's 413), INVALID_ARGUMENT for a
/// top_k of 0 (HTTP's 400).
#[tokio::test(flavor = "multi_thread")]
async fn keys_size_limits_and_top_k_mean_what_they_mean_over_http() {
    use tonic::Code;
    use tonic::metadata::MetadataValue;
    let server = Server::start(&["--api-key", "sesame", "--body-limit", "1000000"]);
    let face = ferplus_faces(9, 1).remove(0).png;
    let keyed = |mut request: tonic::Request<fer::ClassifyRequest>| {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::from_static("Bearer sesame"));
        request
    };
    let classify = |images: Vec<Vec<u8>>, top_k: Option<u32>| fer::ClassifyRequest {
        model: String::new(),
        version: 0,
        images,
        top_k,
    };
    let mut client = FerClient::connect(server.grpc.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let mut kserve_client = GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();

    // Health is open; metadata, like HTTP's GET /v2, needs the key.
    assert!(
        kserve_client
            .server_live(kserve::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let metadata = kserve_client
        .server_metadata(kserve::ServerMetadataRequest {})
        .await;
    assert_eq!(metadata.unwrap_err().code(), Code::Unauthenticated);

    // A message over the limit from a client without a key is refused as unauthenticated: its
    // header is enough, the message is not read.
    let huge = vec![vec![0u8; 4_000_000]];
    let status = client
        .classify(classify(huge.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // With the key, the same message is over the limit: RESOURCE_EXHAUSTED, as the 413 over HTTP.
    let status = client
        .classify(keyed(tonic::Request::new(classify(huge, None))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let status = client
        .classify(keyed(tonic::Request::new(classify(
            vec![face.clone()],
            Some(0),
        ))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let answer = client
        .classify(keyed(tonic::Request::new(classify(vec![face], Some(2)))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results[0].scores.len(), 2);
}

/// The HTTP error of a request: status and message.
async fn http_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or_default()
        .to_string();
    (status, message)
}

/// One core entry point per use case: the same request over HTTP and over gRPC gets the same
/// answer, and the same error with the same message.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_gets_the_same_answer_over_http_and_grpc() {
    let server = Server::start(&["--max-images", "2"]);
    let face = ferplus_faces(9, 1).remove(0).png;
    let http = reqwest::Client::new();
    let mut fer_client = FerClient::connect(server.grpc.clone()).await.unwrap();
    let mut kserve_client = GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let classify_http = |query: &str, images: Vec<Vec<u8>>| {
        let form = images
            .into_iter()
            .fold(reqwest::multipart::Form::new(), |f, png| {
                f.part(
                    "image",
                    reqwest::multipart::Part::bytes(png).file_name("f.png"),
                )
            });
        http.post(server.url(&format!("/v1/classify{query}")))
            .multipart(form)
            .send()
    };
    let classify_grpc =
        |model: &str, images: Vec<Vec<u8>>, top_k: Option<u32>| fer::ClassifyRequest {
            model: model.into(),
            version: 0,
            images,
            top_k,
        };

    // Classify: the same labels and probabilities.
    let body: serde_json::Value = classify_http("?top_k=2", vec![face.clone()])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grpc = fer_client
        .classify(classify_grpc("", vec![face.clone()], Some(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (grpc.model.as_str(), grpc.version),
        ("ferplus", serving_version("ferplus"))
    );
    assert_eq!(body["model"]["name"], "ferplus");
    let (h, g) = (&body["results"][0], &grpc.results[0]);
    assert_eq!(h["label"], g.label.as_str());
    assert_eq!(g.scores.len(), 2);
    assert_eq!(h["scores"].as_object().unwrap().len(), 2);
    for score in &g.scores {
        let over_http = h["scores"][&score.label].as_f64().unwrap();
        assert!((over_http - f64::from(score.probability)).abs() < 1e-5);
    }

    // The same errors, with the same messages.
    let cases: Vec<(&str, &str, fer::ClassifyRequest, u16, tonic::Code)> = vec![
        (
            "unknown model",
            "?model=nope",
            classify_grpc("nope", vec![face.clone()], None),
            404,
            tonic::Code::NotFound,
        ),
        (
            "top_k 0",
            "?top_k=0",
            classify_grpc("", vec![face.clone()], Some(0)),
            400,
            tonic::Code::InvalidArgument,
        ),
        (
            "too many images",
            "",
            classify_grpc("", vec![face.clone(); 3], None),
            422,
            tonic::Code::InvalidArgument,
        ),
        (
            "not an image",
            "",
            classify_grpc("", vec![b"junk".to_vec()], None),
            415,
            tonic::Code::InvalidArgument,
        ),
    ];
    for (name, query, request, status, code) in cases {
        let images = request.images.clone();
        let (http_status, http_message) =
            http_error(classify_http(query, images).await.unwrap()).await;
        let grpc_status = fer_client.classify(request).await.unwrap_err();
        assert_eq!((http_status, grpc_status.code()), (status, code), "{name}");
        assert_eq!(http_message, grpc_status.message(), "{name}");
    }

    // The Open Inference Protocol: REST JSON and gRPC raw contents, top-2 strings.
    let rest: serde_json::Value = http
        .post(server.url("/v2/models/ferplus/infer"))
        .json(&serde_json::json!({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &face)]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let infer = top_k_of_images(&[&face], 2);
    let grpc = kserve_client
        .model_infer(infer.clone())
        .await
        .unwrap()
        .into_inner();
    let mut strings = Vec::new();
    let mut at = 0;
    let bytes = &grpc.raw_output_contents[0];
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(bytes[at + 4..at + 4 + len].to_vec()).unwrap());
        at += 4 + len;
    }
    let rest_strings: Vec<String> = rest["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let label = |s: &String| s.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        rest_strings.iter().map(label).collect::<Vec<_>>(),
        strings.iter().map(label).collect::<Vec<_>>()
    );
    assert_eq!(
        label(&strings[0]),
        grpc_label(
            &fer_client
                .classify(classify_grpc("", vec![face.clone()], Some(1)))
                .await
                .unwrap()
                .into_inner()
        )
    );

    // And the same protocol errors.
    let mut wrong = infer;
    wrong.inputs[0].shape = vec![2];
    let grpc_status = kserve_client.model_infer(wrong).await.unwrap_err();
    let (http_status, http_message) = http_error(
        http.post(server.url("/v2/models/ferplus/infer"))
            .json(&serde_json::json!({
                "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                            "data": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &face)]}]
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (http_status, grpc_status.code()),
        (400, tonic::Code::InvalidArgument)
    );
    assert_eq!(http_message, grpc_status.message());

    // Analysis of a photo: `/v1/analyze` and a frame of `StreamFrames` with `detect`.
    let photo =
        std::fs::read(crate::common::repo().join("../shared/images/group-photos/2.jpg")).unwrap();
    let analyzed: serde_json::Value = http
        .post(server.url("/v1/analyze?top_k=1"))
        .header("content-type", "image/jpeg")
        .body(photo.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let frame = fer::Frame {
        index: 0,
        timestamp: 0.0,
        image: photo,
        model: String::new(),
        top_k: Some(1),
        detect: true,
    };
    let mut stream = fer_client
        .stream_frames(tokio_stream::iter(vec![frame]))
        .await
        .unwrap()
        .into_inner();
    let result = stream.message().await.unwrap().unwrap();
    assert!(result.error.is_empty(), "{}", result.error);
    let http_faces = analyzed["results"][0]["faces"].as_array().unwrap();
    assert!(!http_faces.is_empty());
    assert_eq!(http_faces.len(), result.faces.len());
    for (h, g) in http_faces.iter().zip(&result.faces) {
        let p = g.prediction.as_ref().unwrap();
        assert_eq!(h["label"], p.label.as_str());
        assert!((h["box"]["x"].as_f64().unwrap() - f64::from(g.x)).abs() < 1e-3);
        assert!((h["confidence"].as_f64().unwrap() - f64::from(p.confidence)).abs() < 1e-5);
    }
}

fn grpc_label(response: &fer::ClassifyResponse) -> String {
    response.results[0].label.clone()
}
