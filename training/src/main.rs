//! `fer-train`: train facial-expression models and export them for fer-server.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use clap::{Parser, Subcommand};

use fer_train::backend::TrainBackend;
use fer_train::config::Config;
use fer_train::export::{ExportRequest, Member, export};
use fer_train::model::{FerNet, forward_macs};
use fer_train::run::{RunDir, Session};
use fer_train::train::train;

#[derive(Parser)]
#[command(
    name = "fer-train",
    version,
    about = "Train facial-expression models and export them for fer-server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or resume) a run from a TOML config.
    Train {
        /// Config file (see training/configs/).
        #[arg(long, env = "FER_TRAIN_CONFIG")]
        config: PathBuf,
        /// Run directory for checkpoints, plots and the summary.
        #[arg(long, env = "FER_TRAIN_RUN")]
        run: PathBuf,
        /// Start over even when the run directory holds a checkpoint.
        #[arg(long, env = "FER_TRAIN_FRESH")]
        fresh: bool,
        /// The burn backend that runs the steps.
        #[arg(long, env = "FER_TRAIN_BACKEND", value_enum, default_value_t)]
        backend: TrainBackend,
        /// Stop this session after N steps, checkpointed; running the command again resumes.
        #[arg(long, env = "FER_TRAIN_STOP_AFTER_STEPS")]
        stop_after_steps: Option<usize>,
        /// Folder of the dataset archives, instead of the config's `data_dir` (e.g. where
        /// `fer-train prepare` wrote them).
        #[arg(long, env = "FER_TRAIN_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Turn the datasets as published (FER2013's fer2013.csv, FER+'s fer2013new.csv, folders of
    /// unlabelled face images) into the archives the trainer reads.
    Prepare {
        /// FER2013 as published: `emotion,pixels,Usage`.
        #[arg(long, env = "FER_TRAIN_FER2013_CSV")]
        fer2013_csv: Option<PathBuf>,
        /// FER+ labels as Microsoft publishes them (`fer2013new.csv`; needs --fer2013-csv).
        #[arg(long, env = "FER_TRAIN_FERPLUS_CSV", requires = "fer2013_csv")]
        ferplus_csv: Option<PathBuf>,
        /// A folder of unlabelled face images (JPEG/PNG); repeat for several sets.
        #[arg(
            long = "unlabelled",
            env = "FER_TRAIN_UNLABELLED",
            value_delimiter = ','
        )]
        unlabelled: Vec<PathBuf>,
        /// Where the archives go (give it to `train --data-dir`).
        #[arg(long, env = "FER_TRAIN_PREPARE_OUT", default_value = "data")]
        out: PathBuf,
    },
    /// Export a run's best checkpoint to models/<name>/<version>/ and check ONNX parity.
    Export {
        /// The run to export; repeat it to export an ensemble of several runs in one graph (their
        /// class probabilities averaged: one pass of each network per face).
        #[arg(long, env = "FER_TRAIN_RUN", required = true, value_delimiter = ',')]
        run: Vec<PathBuf>,
        #[arg(long, env = "FER_TRAIN_NAME")]
        name: String,
        /// Version to write (default: the next free one). An existing version is only
        /// overwritten with --replace.
        #[arg(long, env = "FER_TRAIN_VERSION")]
        version: Option<u64>,
        /// Overwrite the version given by --version if it exists.
        #[arg(long, env = "FER_TRAIN_REPLACE")]
        replace: bool,
        /// Publish even when the serving version is more accurate on the same validation set.
        #[arg(long, env = "FER_TRAIN_FORCE")]
        force: bool,
        #[arg(long, env = "FER_TRAIN_MODELS_DIR", default_value = "models")]
        models_dir: PathBuf,
        /// The command that trained the run (recorded in the manifest and model card; default:
        /// the one the run recorded when it was trained). With several runs, one per run, in order.
        #[arg(long, env = "FER_TRAIN_COMMAND")]
        command: Vec<String>,
        /// Validation images in the parity check (default: all).
        #[arg(long, env = "FER_TRAIN_PARITY_IMAGES")]
        parity_images: Option<usize>,
        /// libonnxruntime.so to use (default: the repository's .ort/lib/).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib: Option<PathBuf>,
        /// Fold test-time flip into the graph: score each face and its mirror image and average
        /// the logits (twice the compute per face; `fer-train evaluate` shows what it is worth).
        #[arg(long, env = "FER_TRAIN_TEST_TIME_FLIP")]
        test_time_flip: bool,
    },
    /// Write an INT8 variant of an exported model version (ONNX Runtime's static quantizer,
    /// calibrated on training faces) as models/<name>-int8/<version>/, scored against it.
    Quantize {
        /// The FP32 version folder, e.g. models/ferplus/2.
        #[arg(long = "from", env = "FER_TRAIN_QUANTIZE_FROM")]
        source: PathBuf,
        /// Name of the variant (default: the source's name + `-int8`).
        #[arg(long, env = "FER_TRAIN_NAME")]
        name: Option<String>,
        /// Version of the variant (default: the source's version number).
        #[arg(long, env = "FER_TRAIN_VERSION")]
        version: Option<u64>,
        #[arg(long, env = "FER_TRAIN_MODELS_DIR", default_value = "models")]
        models_dir: PathBuf,
        /// Folder of the dataset archives (calibration from train, scores on validation).
        #[arg(long, env = "FER_TRAIN_DATA_DIR", default_value = "../shared/data")]
        data_dir: PathBuf,
        /// Training faces the activations are calibrated on.
        #[arg(long, env = "FER_TRAIN_CALIBRATION_IMAGES", default_value_t = 300)]
        calibration_images: usize,
        /// ONNX Runtime's calibration method.
        #[arg(long, env = "FER_TRAIN_CALIBRATION_METHOD", default_value = "percentile",
              value_parser = ["minmax", "percentile", "entropy"])]
        method: String,
        /// Seed of the calibration sample.
        #[arg(long, env = "FER_TRAIN_SEED", default_value_t = 42)]
        seed: u64,
        /// Python with the quantizer installed (scripts/setup-quantize.sh).
        #[arg(
            long,
            env = "FER_TRAIN_PYTHON",
            default_value = ".venv-quant/bin/python"
        )]
        python: PathBuf,
        /// Refuse to publish a variant that loses more validation accuracy than this (0.005:
        /// half a point).
        #[arg(long, env = "FER_TRAIN_MAX_ACCURACY_DROP", default_value_t = fer_train::quantize::DEFAULT_MAX_ACCURACY_DROP)]
        max_accuracy_drop: f64,
        /// Publish even when the variant loses more than --max-accuracy-drop.
        #[arg(long, env = "FER_TRAIN_FORCE")]
        force: bool,
        /// Overwrite the variant's version folder if it exists.
        #[arg(long, env = "FER_TRAIN_REPLACE")]
        replace: bool,
        /// libonnxruntime.so to use (default: the repository's .ort/lib/).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib: Option<PathBuf>,
    },
    /// The accuracy-for-cost frontier: score and time every model of a points file in one run,
    /// then draw frontier.svg (accuracy against MACs and against faces/s) and frontier.md.
    Frontier {
        /// The models (version folders and their networks' configs) and published points.
        #[arg(
            long,
            env = "FER_TRAIN_FRONTIER_POINTS",
            default_value = "training/frontier/frontier.toml"
        )]
        points: PathBuf,
        /// Folder of the dataset archives (the validation sets).
        #[arg(long, env = "FER_TRAIN_DATA_DIR", default_value = "../shared/data")]
        data_dir: PathBuf,
        /// The large batch faces are timed at (the server's --max-batch-size).
        #[arg(long, env = "FER_TRAIN_FRONTIER_BATCH", default_value_t = 32)]
        batch: usize,
        /// Where frontier.svg and frontier.md are written.
        #[arg(
            long,
            env = "FER_TRAIN_FRONTIER_OUT",
            default_value = "training/frontier"
        )]
        out_dir: PathBuf,
        /// libonnxruntime.so to use (default: the repository's .ort/lib/).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib: Option<PathBuf>,
    },
    /// Score a run's best checkpoint on its validation set, as it is and with test-time flip
    /// (logits averaged over each face and its mirror image).
    Evaluate {
        #[arg(long, env = "FER_TRAIN_RUN")]
        run: PathBuf,
        /// The burn backend that runs the model.
        #[arg(long, env = "FER_TRAIN_BACKEND", value_enum, default_value_t)]
        backend: TrainBackend,
    },
    /// Draw a run's plots again from its state.json (curves.svg, confusion.svg, thresholds.svg).
    Plots {
        #[arg(long, env = "FER_TRAIN_RUN")]
        run: PathBuf,
    },
    /// Measure how the labelled and unlabelled datasets frame their faces (face detector box vs
    /// image), re-frame the unlabelled samples, and write framing.json and a contact sheet.
    Framing {
        /// The face detector `.onnx` to measure with (CenterFace or UltraFace).
        #[arg(long, env = "FER_DETECTOR")]
        detector: PathBuf,
        #[arg(long, env = "FER_TRAIN_DATA_DIR", default_value = "../shared/data")]
        data_dir: PathBuf,
        /// Images measured per dataset.
        #[arg(long, env = "FER_TRAIN_FRAMING_SAMPLE", default_value_t = 600)]
        sample: usize,
        /// Folder for framing.json and contact-sheet.png.
        #[arg(
            long,
            env = "FER_TRAIN_FRAMING_OUT",
            default_value = "training/framing"
        )]
        out: PathBuf,
    },
    /// Time training steps of a config's network (steps per second on this machine).
    BenchStep {
        #[arg(long, env = "FER_TRAIN_CONFIG")]
        config: PathBuf,
        #[arg(long, env = "FER_TRAIN_BENCH_STEPS", default_value_t = 20)]
        steps: usize,
        /// Print one line of JSON (for scripts/bench-train.sh).
        #[arg(long, env = "FER_TRAIN_BENCH_JSON")]
        json: bool,
        /// The burn backend that runs the steps.
        #[arg(long, env = "FER_TRAIN_BACKEND", value_enum, default_value_t)]
        backend: TrainBackend,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Train {
            config,
            run,
            fresh,
            backend,
            stop_after_steps,
            data_dir,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(dir) = &data_dir {
                cfg.data_dir = dir.clone();
            }
            let run_dir = RunDir(run.clone());
            std::fs::create_dir_all(&run)?;
            std::fs::write(
                run_dir.command(),
                format!(
                    "fer-train train{} --config {} --run {}{}\n",
                    match backend {
                        TrainBackend::Flex => "",
                        TrainBackend::Tch => " --backend tch",
                    },
                    config.display(),
                    run.display(),
                    data_dir
                        .map(|d| format!(" --data-dir {}", d.display()))
                        .unwrap_or_default()
                ),
            )?;
            let started = Instant::now();
            let session = Session {
                resume: !fresh,
                backend,
                stop_after_steps,
            };
            let state = train(&cfg, &run_dir, session)?;
            println!(
                "{}: {} epochs, best val macro-F1 {:.4} (epoch {}), this session {:.0} s; run in {}",
                if state.finished { "done" } else { "stopped" },
                state.epoch,
                state.best_macro_f1,
                state.best_epoch,
                started.elapsed().as_secs_f64(),
                run.display()
            );
        }
        Command::Prepare {
            fer2013_csv,
            ferplus_csv,
            unlabelled,
            out,
        } => {
            use fer_train::prepare;
            anyhow::ensure!(
                fer2013_csv.is_some() || !unlabelled.is_empty(),
                "nothing to prepare: give --fer2013-csv (and --ferplus-csv) and/or --unlabelled DIR"
            );
            std::fs::create_dir_all(&out)?;
            let mut written = Vec::new();
            if let Some(csv) = &fer2013_csv {
                let faces = prepare::read_fer2013(csv)?;
                written.push(prepare::write_fer2013(&faces, &out)?);
                if let Some(labels) = &ferplus_csv {
                    written.push(prepare::write_ferplus(&faces, labels, &out)?);
                }
            }
            if !unlabelled.is_empty() {
                written.push(prepare::write_unlabelled(&unlabelled, &out)?);
            }
            for (path, files) in &written {
                println!("{}: {files} files", path.display());
            }
            println!(
                "train on them with `fer-train train --data-dir {} ...` (or FER_TRAIN_DATA_DIR)",
                out.display()
            );
        }
        Command::Export {
            run,
            name,
            version,
            replace,
            force,
            models_dir,
            command,
            parity_images,
            ort_dylib,
            test_time_flip,
        } => {
            if !command.is_empty() && command.len() != run.len() {
                anyhow::bail!(
                    "{} --command for {} --run: give one per run, in the same order",
                    command.len(),
                    run.len()
                );
            }
            let runs: Vec<RunDir> = run.into_iter().map(RunDir).collect();
            let configs = runs
                .iter()
                .map(|r| {
                    Config::load(&r.config())
                        .with_context(|| format!("{}: the run's config.toml", r.0.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let members: Vec<Member> = runs
                .iter()
                .zip(&configs)
                .enumerate()
                .map(|(i, (run, config))| Member {
                    config,
                    run,
                    command: command.get(i).map(String::as_str),
                })
                .collect();
            let done = export(&ExportRequest {
                members: &members,
                models_dir: &models_dir,
                name: &name,
                version,
                ort_dylib: ort_dylib.as_deref(),
                parity_images,
                replace,
                force,
                test_time_flip,
            })?;
            let (new, p) = (done.figures, &done.parity);
            println!(
                "exported {}: parity on {} images, max |Δlogit| {:.2e}, argmax agreement {}/{}",
                done.dir.display(),
                p.images,
                p.max_abs_diff,
                p.argmax_agree,
                p.images
            );
            println!(
                "  {name}/{}: val accuracy {:.4}, macro-F1 {:.4} on {} images",
                new.version, new.accuracy, new.macro_f1, new.images
            );
            match done.serving {
                Some(old) => println!(
                    "  {name}/{} (serving until now): val accuracy {:.4}, macro-F1 {:.4} on the same images",
                    old.version, old.accuracy, old.macro_f1
                ),
                None => {
                    println!("  no earlier version of {name} measured on the same validation set")
                }
            }
        }
        Command::Quantize {
            source,
            name,
            version,
            models_dir,
            data_dir,
            calibration_images,
            method,
            seed,
            python,
            max_accuracy_drop,
            force,
            replace,
            ort_dylib,
        } => {
            let command = format!(
                "fer-train quantize --from {} --calibration-images {calibration_images} --method {method} --seed {seed}",
                source.display()
            );
            let done = fer_train::quantize::quantize(&fer_train::quantize::QuantizeRequest {
                source: &source,
                models_dir: &models_dir,
                name: name.as_deref(),
                version,
                data_dir: &data_dir,
                calibration_images,
                method: &method,
                seed,
                python: &python,
                ort_dylib: ort_dylib.as_deref(),
                max_accuracy_drop,
                replace,
                force,
                command: &command,
            })?;
            let c = &done.comparison;
            println!(
                "quantized {} on {} validation faces: accuracy {:.4} (FP32 {:.4}), macro-F1 {:.4} (FP32 {:.4}), max |Δprob| {:.3}, same top class on {}/{}",
                done.dir.display(),
                c.images,
                c.int8.accuracy,
                c.fp32.accuracy,
                c.int8.macro_f1,
                c.fp32.macro_f1,
                c.max_abs_dprob,
                c.argmax_agree,
                c.images
            );
        }
        Command::Frontier {
            points,
            data_dir,
            batch,
            out_dir,
            ort_dylib,
        } => {
            let measured = fer_train::frontier::frontier(&fer_train::frontier::FrontierRequest {
                points: &points,
                data_dir: &data_dir,
                ort_dylib: ort_dylib.as_deref(),
                batch,
                out_dir: &out_dir,
            })?;
            println!(
                "{} models measured; {} and {} written",
                measured.len(),
                out_dir.join("frontier.svg").display(),
                out_dir.join("frontier.md").display()
            );
        }
        Command::Evaluate { run, backend } => {
            let dir = RunDir(run);
            let cfg = Config::load(&dir.config()).context("the run's config.toml")?;
            let classes = cfg.data.classes();
            let manifest = fer_train::train::manifest_template(&cfg, &classes);
            let preprocessor = fer_contract::Preprocessor::new(&manifest, Default::default());
            let (labelled, _) = fer_train::train::load_data(&cfg, &preprocessor, &manifest)?;
            let device = backend.device()?;
            let model =
                fer_train::run::load_model(&cfg, classes.len(), &dir.best_model(), &device)?;
            let n = classes.len();
            for (name, (scores, loss)) in [
                (
                    "as is",
                    fer_train::eval::evaluate(&model, &labelled.val, &preprocessor, n, &device)?,
                ),
                (
                    "with test-time flip",
                    fer_train::eval::evaluate_with_flip(
                        &model,
                        &labelled.val,
                        &preprocessor,
                        n,
                        &device,
                    )?,
                ),
            ] {
                println!(
                    "{}: {name}: val accuracy {:.4}, macro-F1 {:.4}, loss {loss:.4} on {} images",
                    dir.0.display(),
                    scores.accuracy,
                    scores.macro_f1,
                    labelled.val.len()
                );
            }
        }
        Command::Plots { run } => {
            let dir = RunDir(run);
            let cfg = Config::load(&dir.config()).context("the run's config.toml")?;
            let state: fer_train::run::RunState = serde_json::from_slice(
                &std::fs::read(dir.state()).context("the run's state.json")?,
            )?;
            fer_train::report::plots(&dir.0, &state.history, &cfg.data.classes())?;
            println!(
                "plots of {} epochs drawn in {}",
                state.history.len(),
                dir.0.display()
            );
        }
        Command::Framing {
            detector,
            data_dir,
            sample,
            out,
        } => {
            let report = fer_train::framing::measure(&detector, &data_dir, sample, &out)?;
            println!(
                "framing measured with {} (in units of the face box's larger side):",
                report.detector
            );
            println!(
                "| dataset | images | no face | several | margin q1 / median / q3 | shift q1 / median / q3 |"
            );
            println!("|---|---|---|---|---|---|");
            for m in &report.measured {
                let q = |q: Option<fer_train::framing::Quartiles>| {
                    q.map(|q| format!("{:.3} / {:.3} / {:.3}", q.q1, q.median, q.q3))
                        .unwrap_or_else(|| "—".into())
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} |",
                    m.dataset,
                    m.images,
                    m.no_face,
                    m.several_faces,
                    q(m.margin),
                    q(m.shift)
                );
            }
            if let Some(template) = report.template {
                println!("labelled landmarks (median, share of the image's side): {template:?}");
            }
            println!(
                "labelled framing: margin {:.3}, shift {:.3}; wrote {}",
                report.labelled.margin,
                report.labelled.shift,
                out.display()
            );
        }
        Command::BenchStep {
            config,
            steps,
            json,
            backend,
        } => bench_step(&Config::load(&config)?, steps, json, backend)?,
    }
    Ok(())
}

fn bench_step(cfg: &Config, steps: usize, json: bool, backend: TrainBackend) -> anyhow::Result<()> {
    let device = backend.device()?.autodiff();
    device.seed(cfg.seed);
    let classes = cfg.data.classes().len();
    let mut model = FerNet::new(&cfg.model, 1, classes, &device);
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let b = cfg.batch_size;
    let data: Vec<f32> = (0..b * 48 * 48)
        .map(|i| ((i * 31 % 255) as f32 / 127.5) - 1.0)
        .collect();
    let targets: Vec<i64> = (0..b).map(|i| (i % classes) as i64).collect();
    let mut times = Vec::new();
    for step in 0..steps + 2 {
        let t = Instant::now();
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [b, 1, 48, 48]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [b]), &device);
        let loss = loss_fn.forward(model.forward(x), y);
        let _ = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if step >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "seconds_per_step": mean,
                "params": model.num_params(),
                "batch": b,
            })
        );
        return Ok(());
    }
    println!(
        "params {}  MACs/image {:.1} M  batch {b}: {:.3} s/step, {:.2} steps/s, {:.0} images/s",
        model.num_params(),
        forward_macs(&cfg.model, 1, 48, classes) as f64 / 1e6,
        mean,
        1.0 / mean,
        b as f64 / mean
    );
    Ok(())
}
