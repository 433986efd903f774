//! `fer-server score-video VIDEO`: decode a video with the system's ffmpeg, sample frames, score
//! them over the gRPC `fer.v1.Fer/StreamFrames` stream (or in this process with `--local`), and
//! write a per-frame timeline (JSON, CSV) and a plot of label probabilities over time (SVG), with
//! optional temporal smoothing per face track.

pub mod cuts;
pub mod frames;
pub mod timeline;
pub mod track;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use self::cuts::CutDetector;
use self::frames::{FrameReader, to_bmp};
use self::timeline::{FaceRecord, FrameRecord, Timeline};
use self::track::{Rect, Smoothing, Tracker};
use crate::config::ScoreVideoArgs;
use crate::grpc::proto::fer::v1 as pb;

/// A face as scored: box, detection score, `(label, probability)` for every label.
type ScoredFace = (Rect, f32, Vec<(String, f32)>);

/// One frame's faces as scored.
struct Scored {
    index: u64,
    time: f64,
    model: Option<(String, u64)>,
    faces: Vec<ScoredFace>,
    error: Option<String>,
}

type Frame = (u64, f64, Vec<u8>);

pub fn run(args: &ScoreVideoArgs) -> anyhow::Result<()> {
    let smoothing: Smoothing = args.smooth.parse().map_err(anyhow::Error::msg)?;
    let mut reader = FrameReader::open(&args.video, args.fps)?;
    let (width, height) = (reader.width, reader.height);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let fps = args.fps;
    // ffmpeg is read on its own thread; frames go to the scorer as uncompressed BMPs. The thread
    // also finds the cuts between shots (the frames that start one), where tracks end.
    let reading = std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
        let mut index = 0u64;
        let (mut detector, mut cuts) = (CutDetector::default(), Vec::new());
        while let Some(frame) = reader.next_frame()? {
            if detector.is_cut(&frame) {
                cuts.push(index);
            }
            let bmp = to_bmp(&frame)?;
            if tx.blocking_send((index, index as f64 / fps, bmp)).is_err() {
                break;
            }
            index += 1;
        }
        reader.finish()?;
        Ok(cuts)
    });
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos} frames  {per_sec}  {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if args.quiet {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let scored: Vec<Scored> = runtime.block_on(async {
        let mut stream: std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<Scored>> + Send>> =
            if args.local {
                Box::pin(local::score(args, rx).await?)
            } else {
                Box::pin(remote(args, rx).await?)
            };
        let mut all = Vec::new();
        let no_detector = crate::error::Error::DetectorNotConfigured.to_string();
        while let Some(item) = stream.next().await {
            let s = item?;
            if s.error.as_deref() == Some(no_detector.as_str()) {
                // Every frame would fail the same way: stop before decoding the rest.
                bail!(
                    "{} has no face detector, so it cannot find faces in frames: start it with \
                     --detector, score locally with --local --detector, or pass --no-detect if each \
                     frame is already a face crop",
                    args.server
                );
            }
            progress.inc(1);
            progress.set_message(format!("{} faces", s.faces.len()));
            all.push(s);
        }
        anyhow::Ok(all)
    })?;
    progress.finish_and_clear();
    let cuts = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the frame reader panicked"))??;
    let elapsed = started.elapsed();

    let timeline = build_timeline(args, smoothing, scored, &cuts);
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            // `<video>.timeline/` beside the video: talk.mp4 → talk.mp4.timeline/.
            let mut name = args.video.file_name().unwrap_or_default().to_os_string();
            name.push(".timeline");
            args.video.with_file_name(name)
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    timeline.write_json(&out.join("timeline.json"))?;
    timeline.write_csv(&out.join("timeline.csv"))?;
    timeline.write_svg(&out.join("timeline.svg"))?;
    let frames = timeline.frames.len();
    let faces: usize = timeline.frames.iter().map(|f| f.faces.len()).sum();
    let failed = timeline.frames.iter().filter(|f| f.error.is_some()).count();
    println!(
        "{frames} frames of {width}×{height} at {fps} fps, {faces} faces, {failed} frames failed, {:.1} frames/s; wrote {}/timeline.{{json,csv,svg}}",
        frames as f64 / elapsed.as_secs_f64().max(1e-9),
        out.display()
    );
    if frames > 0 && failed == frames {
        bail!(
            "every frame failed: {}",
            timeline.frames[0].error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

fn build_timeline(
    args: &ScoreVideoArgs,
    smoothing: Smoothing,
    scored: Vec<Scored>,
    cuts: &[u64],
) -> Timeline {
    let mut labels: Vec<String> = scored
        .iter()
        .flat_map(|s| s.faces.iter())
        .next()
        .map(|(_, _, scores)| scores.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default();
    labels.sort();
    let (model, version) = scored
        .iter()
        .find_map(|s| s.model.clone())
        .unwrap_or_default();
    let mut tracker = Tracker::new(smoothing);
    let cut_times: Vec<f64> = cuts.iter().map(|i| *i as f64 / args.fps).collect();
    let frames = scored
        .into_iter()
        .map(|s| {
            if cuts.contains(&s.index) {
                tracker.cut();
            }
            let faces: Vec<(Rect, Vec<f32>)> = s
                .faces
                .iter()
                .map(|(rect, _, scores)| {
                    let p = labels
                        .iter()
                        .map(|l| scores.iter().find(|(k, _)| k == l).map_or(0.0, |(_, v)| *v))
                        .collect();
                    (*rect, p)
                })
                .collect();
            let tracked = tracker.update(s.index, &faces);
            FrameRecord {
                index: s.index,
                time: s.time,
                faces: s
                    .faces
                    .iter()
                    .zip(tracked)
                    .map(|((rect, score, _), (track, probabilities))| {
                        let best = probabilities
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(i, _)| i);
                        FaceRecord {
                            track,
                            x: rect.x,
                            y: rect.y,
                            width: rect.width,
                            height: rect.height,
                            score: *score,
                            label: labels.get(best).cloned().unwrap_or_default(),
                            probabilities,
                        }
                    })
                    .collect(),
                error: s.error,
            }
        })
        .collect();
    Timeline {
        video: args.video.display().to_string(),
        model,
        version,
        labels,
        fps: args.fps,
        smoothing: args.smooth.clone(),
        detect: !args.no_detect,
        cuts: cut_times,
        frames,
    }
}

fn scores_of(p: Option<&pb::Prediction>) -> Vec<(String, f32)> {
    p.map(|p| {
        p.scores
            .iter()
            .map(|s| (s.label.clone(), s.probability))
            .collect()
    })
    .unwrap_or_default()
}

/// Frames over the gRPC stream.
async fn remote(
    args: &ScoreVideoArgs,
    frames: mpsc::Receiver<Frame>,
) -> anyhow::Result<impl Stream<Item = anyhow::Result<Scored>> + use<>> {
    let channel = tonic::transport::Endpoint::from_shared(args.server.clone())?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    let key = args.api_key.clone();
    let mut client = pb::fer_client::FerClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            if let Some(key) = &key {
                let value = format!("Bearer {key}")
                    .parse()
                    .map_err(|_| tonic::Status::invalid_argument("the API key is not ASCII"))?;
                request.metadata_mut().insert("authorization", value);
            }
            Ok(request)
        },
    )
    .max_decoding_message_size(64 << 20)
    .max_encoding_message_size(64 << 20);
    let detect = !args.no_detect;
    let model = args.model_name.clone().unwrap_or_default();
    let outbound = ReceiverStream::new(frames).map(move |(index, timestamp, image)| pb::Frame {
        index,
        timestamp,
        image,
        model: model.clone(),
        top_k: None,
        detect,
    });
    let inbound = client
        .stream_frames(outbound)
        .await
        .context("opening the frame stream")?
        .into_inner();
    Ok(inbound.map(move |result| {
        let r = result.context("the frame stream broke")?;
        let faces = if detect {
            r.faces
                .iter()
                .map(|f| {
                    let rect = Rect {
                        x: f.x,
                        y: f.y,
                        width: f.width,
                        height: f.height,
                    };
                    (rect, f.score, scores_of(f.prediction.as_ref()))
                })
                .collect()
        } else {
            r.prediction
                .as_ref()
                .map(|p| vec![(whole_frame(), 1.0, scores_of(Some(p)))])
                .unwrap_or_default()
        };
        Ok(Scored {
            index: r.index,
            time: r.timestamp,
            model: (!r.model.is_empty()).then(|| (r.model.clone(), r.version)),
            faces,
            error: (!r.error.is_empty()).then_some(r.error),
        })
    }))
}

/// The box of a frame that is itself the face (its size is not needed for tracking).
fn whole_frame() -> Rect {
    Rect {
        x: 0.0,
        y: 0.0,
        width: 1.0,
        height: 1.0,
    }
}

/// Frames scored in this process: the same registry, detector and batched classification as the
/// server, without a server.
mod local {
    use super::*;
    use crate::core::analyze::{self, DetectorPool};
    use crate::core::classify;
    use crate::core::registry::{ModelRegistry, RegistryOptions};
    use crate::metrics::Metrics;

    pub async fn score(
        args: &ScoreVideoArgs,
        frames: mpsc::Receiver<Frame>,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<Scored>> + use<>> {
        let (_, environment) = fer_contract::onnx::runtime(args.model.ort_dylib.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let options = RegistryOptions {
            models_dir: args.model.models_dir.clone(),
            max_batch_size: 16,
            max_queue_delay: Duration::from_millis(2),
            queue_capacity: 1024,
            workers: 1,
            session: args.model.session_options(1),
            decode_limits: args.model.decode_limits(),
            version_policy: Default::default(),
            settle: Duration::ZERO,
        };
        let registry = ModelRegistry::new(options, environment, Arc::clone(&metrics));
        registry.reconcile_all()?;
        let name = args
            .model_name
            .clone()
            .unwrap_or_else(|| args.model.default_model.clone());
        let model = registry.resolve(&name, None)?;
        let detectors = if args.no_detect {
            None
        } else {
            let path = args
                .detector
                .detector
                .path()?
                .context("--local scoring of whole frames needs a face detector (or --no-detect for face crops)")?;
            let settings = args.detector.settings(args.model.intra_threads(1));
            Some(Arc::new(DetectorPool::load(
                environment,
                &path,
                settings,
                args.model.decode_limits(),
            )?))
        };
        let identity = Some((model.manifest.name.clone(), model.manifest.version));
        Ok(ReceiverStream::new(frames)
            .map(move |(index, time, image)| {
                let (model, detectors, metrics, identity) = (
                    Arc::clone(&model),
                    detectors.clone(),
                    Arc::clone(&metrics),
                    identity.clone(),
                );
                async move {
                    let image = Bytes::from(image);
                    let result = match &detectors {
                        Some(pool) => {
                            let options = pool.defaults;
                            analyze::analyze(pool, &model, vec![image], options, None, &metrics)
                                .await
                                .map(|mut a| {
                                    a.pop()
                                        .map(|a| a.faces)
                                        .unwrap_or_default()
                                        .into_iter()
                                        .map(|f| {
                                            let d = f.detection;
                                            let rect = Rect {
                                                x: d.x0,
                                                y: d.y0,
                                                width: d.x1 - d.x0,
                                                height: d.y1 - d.y0,
                                            };
                                            (rect, d.score, f.prediction.scores)
                                        })
                                        .collect()
                                })
                        }
                        None => async {
                            let pixels =
                                classify::decode_all(&model, vec![image], &metrics).await?;
                            classify::classify(&model, pixels, None, &metrics).await
                        }
                        .await
                        .map(|mut p| {
                            p.pop()
                                .map(|p| vec![(whole_frame(), 1.0, p.scores)])
                                .unwrap_or_default()
                        }),
                    };
                    Ok(match result {
                        Ok(faces) => Scored {
                            index,
                            time,
                            model: identity,
                            faces,
                            error: None,
                        },
                        Err(e) => Scored {
                            index,
                            time,
                            model: identity,
                            faces: Vec::new(),
                            error: Some(e.to_string()),
                        },
                    })
                }
            })
            .buffered(16))
    }
}
