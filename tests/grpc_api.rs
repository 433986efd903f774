//! End-to-end over gRPC: the real server, the generated tonic clients, real FER+ faces.
//! `fer.v1.Fer/StreamFrames` with 120 frames (order, completeness, batching across the stream, a
//! bad frame that does not end the stream), `Classify`, the Open Inference Protocol's ModelInfer
//! with `raw_input_contents`, error codes, and `grpc.health.v1`.

mod common;

use common::{Server, ferplus_faces};
use fer_server::grpc::proto::fer::v1 as fer;
use fer_server::grpc::proto::fer::v1::fer_client::FerClient;
use fer_server::grpc::proto::inference as kserve;
use fer_server::grpc::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

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
        assert_eq!((r.model.as_str(), r.version), ("ferplus", 1));
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
    let mut raw = Vec::new();
    for face in &faces {
        raw.extend_from_slice(&(face.png.len() as u32).to_le_bytes());
        raw.extend_from_slice(&face.png);
    }
    let classification = kserve::InferParameter {
        parameter_choice: Some(kserve::infer_parameter::ParameterChoice::Int64Param(2)),
    };
    let infer = kserve::ModelInferRequest {
        model_name: "ferplus".into(),
        inputs: vec![kserve::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![3],
            ..Default::default()
        }],
        outputs: vec![kserve::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: [("classification".to_string(), classification)].into(),
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
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
