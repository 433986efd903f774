//! CI's end-to-end smoke training: a few hundred real FER+ faces (and, for the semi-supervised
//! modes, a few hundred real unlabelled faces), a few steps of every mode, then the export with its
//! ONNX Runtime parity check.

use std::path::{Path, PathBuf};

use fer_contract::{MANIFEST_FILE, Manifest};
use fer_train::augment::AugmentConfig;
use fer_train::backend::TrainBackend;
use fer_train::config::{
    Config, LossConfig, Mode, OptimizerConfig, PseudoLabels, SoftClassWeights, SslConfig,
};
use fer_train::data::Source;
use fer_train::export::{ExportRequest, Member, export};
use fer_train::framing::ReframeConfig;
use fer_train::model::ModelConfig;
use fer_train::run::{RunDir, RunState, Session};
use fer_train::thresholds::Anchor;
use fer_train::train::train;

fn smoke_config(mode: Mode) -> Config {
    Config {
        data: Source::Ferplus,
        data_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        labelled_fraction: 1.0,
        limit_train: Some(384),
        limit_val: Some(128),
        seed: 7,
        epochs: 3,
        batch_size: 32,
        max_steps: None,
        optimizer: OptimizerConfig {
            learning_rate: 0.003,
            weight_decay: 0.0,
            warmup_epochs: 0.0,
        },
        loss: LossConfig::default(),
        model: ModelConfig {
            widths: vec![8, 16, 16, 32],
            convs_per_stage: 1,
            dropout: 0.0,
        },
        augment: AugmentConfig::default(),
        class_balanced: false,
        mode,
        ema_decay: mode.is_semi_supervised().then_some(0.99),
        ssl: SslConfig {
            limit_unlabelled: Some(192),
            mu: 1,
            ..SslConfig::default()
        },
        checkpoint_every: 5,
        eval_every: 1,
    }
}

#[test]
fn every_mode_trains_with_falling_loss_and_exports_with_parity() {
    for mode in [
        Mode::Supervised,
        Mode::Fixmatch,
        Mode::Flexmatch,
        Mode::Freematch,
        Mode::Dtm,
    ] {
        train_and_export(smoke_config(mode), TrainBackend::Flex);
    }
}

/// FER+'s vote distributions as targets, and DTM anchored on labelled data with its unlabelled
/// faces re-framed by the face detector as they load, learning soft pseudo-labels beside the
/// vote distributions (ablation (b)'s FER+ recipe).
#[test]
fn soft_targets_and_dtm_on_labelled_data_with_reframed_faces_train_and_export() {
    let mut soft = smoke_config(Mode::Supervised);
    soft.loss.soft_targets = true;
    // Evaluated every second epoch and at the last: epochs 2 and 3 of 3; the best is one of them.
    soft.eval_every = 2;
    let state = train_and_export(soft, TrainBackend::Flex);
    let evaluated: Vec<bool> = state.history.iter().map(|h| h.val.is_some()).collect();
    assert_eq!(evaluated, [false, true, true]);
    assert!(state.history[0].val_loss.is_none());
    assert!([2, 3].contains(&state.best_epoch), "{}", state.best_epoch);

    let mut dtm = smoke_config(Mode::Dtm);
    dtm.ssl.dtm.anchor = Anchor::Labelled;
    dtm.loss.soft_targets = true;
    // The labelled half with per-face, square-root class weights (`ferplus-soft-w48-cwface.toml`).
    dtm.loss.class_weights = true;
    dtm.loss.class_weight_power = 0.5;
    dtm.loss.soft_class_weights = SoftClassWeights::Face;
    dtm.ssl.pseudo_labels = PseudoLabels::Soft;
    dtm.ssl.reframe = Some(ReframeConfig {
        detector: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/models/ultraface/version-RFB-320.onnx"),
        margin: -0.006,
        shift: -0.018,
    });
    let state = train_and_export(dtm, TrainBackend::Flex);
    let thresholds = &state.history[2]
        .ssl
        .as_ref()
        .expect("ssl figures")
        .thresholds;
    // At the end of training the stage threshold is 0.95; a class the teacher gets right on
    // labelled images is scaled below it by its confidence there.
    assert!(
        thresholds.iter().any(|t| *t < 0.95 - 1e-4),
        "{thresholds:?}"
    );
}

/// The libtorch backend (`cargo test -p fer-train --features tch`, after scripts/setup-libtorch.sh)
/// trains the same way, and its checkpoints export with the same parity.
#[cfg(feature = "tch")]
#[test]
fn libtorch_backend_trains_and_exports_with_parity() {
    for mode in [Mode::Supervised, Mode::Dtm] {
        train_and_export(smoke_config(mode), TrainBackend::Tch);
    }
}

fn train_and_export(config: Config, backend: TrainBackend) -> RunState {
    let mode = config.mode;
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir(dir.path().join("run"));
    let session = Session {
        backend,
        ..Session::default()
    };
    let state = train(&config, &run, session).unwrap();
    assert_eq!(state.history.len(), 3);
    let first = state.history[0].train_loss;
    let last = state.history[2].train_loss;
    assert!(last < first, "{mode:?}: loss {first} → {last} did not fall");
    assert!(state.finished);
    if mode.is_semi_supervised() {
        let ssl = state.history[2]
            .ssl
            .as_ref()
            .expect("semi-supervised figures");
        assert_eq!(ssl.thresholds.len(), 8);
        assert!((0.0..=1.0).contains(&ssl.mask_rate), "{ssl:?}");
        for file in ["teacher.bpk", "policy.json", "thresholds.svg"] {
            assert!(run.0.join(file).is_file(), "{mode:?}: {file} missing");
        }
    }
    for file in [
        "best.bpk",
        "last.bpk",
        "state.json",
        "summary.json",
        "curves.svg",
        "confusion.svg",
    ] {
        assert!(run.0.join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.0.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["mode"], mode.name());
    if mode.is_semi_supervised() {
        assert_eq!(summary["ssl"]["mu"], config.ssl.mu, "{summary}");
        assert!(summary["ssl"]["dtm"]["anchor"].is_string(), "{summary}");
    } else {
        assert!(summary["ssl"].is_null(), "{summary}");
    }

    // Resuming a finished run does nothing and keeps its history.
    let again = train(&config, &run, session).unwrap();
    assert_eq!(again.history.len(), 3);

    let models = dir.path().join("models");
    let member = [Member {
        config: &config,
        run: &run,
        command: Some("cargo test -p fer-train --test smoke"),
    }];
    let request = |parity_images| ExportRequest {
        members: &member,
        models_dir: &models,
        name: "smoke",
        version: Some(2),
        ort_dylib: None,
        parity_images,
        replace: true,
        force: true,
        test_time_flip: false,
    };
    let done = export(&request(None)).unwrap();
    let (version_dir, parity) = (done.dir.clone(), done.parity.clone());
    assert_eq!(parity.images, 128);
    assert!(parity.passed(), "{parity:?}");
    assert_eq!(done.serving, None, "nothing served before");
    let manifest = Manifest::load(&version_dir.join(MANIFEST_FILE)).unwrap();
    assert_eq!((manifest.name.as_str(), manifest.version), ("smoke", 2));
    assert_eq!(manifest.labels.len(), 8);
    assert!(manifest.provenance.metrics.contains_key("val_macro_f1"));
    assert!(version_dir.join("model.onnx").is_file());
    // Staged, then renamed into place: nothing is left beside the repository's models.
    let staged: Vec<_> = std::fs::read_dir(models.join(".staging"))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    if mode == Mode::Supervised {
        // A second export of the same version replaces the first one whole (with --replace).
        std::fs::write(version_dir.join("stale.txt"), "from the first export").unwrap();
        let again = export(&request(Some(16))).unwrap();
        assert_eq!(again.dir, version_dir);
        assert_eq!(again.parity.images, 16);
        assert!(!version_dir.join("stale.txt").exists());
        assert!(version_dir.join("model.onnx").is_file());
        assert_eq!(
            std::fs::read_dir(models.join(".staging")).unwrap().count(),
            0
        );
        export_never_overwrites_or_publishes_a_worse_model(&request(Some(16)), &models);
        export_folds_test_time_flip_into_the_graph(&request(None));
    }
    let card = std::fs::read_to_string(version_dir.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("cargo test -p fer-train --test smoke"));
    assert!(card.contains(backend.describe()), "{card}");
    state
}

/// Export's safety rules, on a trained run whose version 2 is published: without `--replace` an
/// existing version is refused; without a version the next free one is written; a version less
/// accurate than the serving one on the same validation set is refused without `--force`; the
/// command comes from the run when none is given.
fn export_never_overwrites_or_publishes_a_worse_model(base: &ExportRequest, models: &Path) {
    let refused = export(&ExportRequest {
        replace: false,
        ..*base
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("--replace"), "{refused}");
    let recorded = [Member {
        command: None,
        ..base.members[0]
    }];
    let missing = export(&ExportRequest {
        version: None,
        members: &recorded,
        ..*base
    })
    .unwrap_err()
    .to_string();
    assert!(missing.contains("--command"), "{missing}");
    std::fs::write(
        base.members[0].run.command(),
        "fer-train train --config c.toml --run r\n",
    )
    .unwrap();
    // No version: the next free one, compared with the serving version 2 (the same model).
    let next = export(&ExportRequest {
        version: None,
        members: &recorded,
        force: false,
        ..*base
    })
    .unwrap();
    assert_eq!(next.dir, models.join("smoke/3"));
    let serving = next
        .serving
        .expect("version 2 was measured on the same images");
    assert_eq!(
        (serving.version, serving.accuracy),
        (2, next.figures.accuracy)
    );
    let card = std::fs::read_to_string(next.dir.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("fer-train train --config c.toml --run r"),
        "{card}"
    );
    // Make the serving version (3) look better: a new export is refused, and nothing is written.
    let path = next.dir.join(MANIFEST_FILE);
    let mut manifest = Manifest::load(&path).unwrap();
    manifest
        .provenance
        .metrics
        .insert("val_accuracy".into(), 0.99);
    manifest.save(&path).unwrap();
    let worse = ExportRequest {
        version: None,
        force: false,
        ..*base
    };
    let refused = export(&worse).unwrap_err().to_string();
    assert!(
        refused.contains("not published") && refused.contains("--force"),
        "{refused}"
    );
    assert!(!models.join("smoke/4").exists());
    assert_eq!(
        std::fs::read_dir(models.join(".staging")).unwrap().count(),
        0
    );
    let forced = export(&ExportRequest {
        force: true,
        ..worse
    })
    .unwrap();
    assert_eq!(forced.dir, models.join("smoke/4"));
}

/// `--test-time-flip`: the graph averages each face's logits with its mirror image's, which
/// parity checks against burn's logits on pixels mirrored in memory; the manifest's figures are
/// the folded graph's, with the plain model's beside them, and the card says what it costs.
fn export_folds_test_time_flip_into_the_graph(base: &ExportRequest) {
    let flipped = export(&ExportRequest {
        version: Some(9),
        test_time_flip: true,
        ..*base
    })
    .unwrap();
    assert!(flipped.parity.passed(), "{:?}", flipped.parity);
    assert_eq!(flipped.parity.images, 128);
    let manifest = Manifest::load(&flipped.dir.join(MANIFEST_FILE)).unwrap();
    let metrics = &manifest.provenance.metrics;
    assert!(
        metrics.contains_key("val_accuracy_without_flip"),
        "{metrics:?}"
    );
    assert_eq!(metrics["val_accuracy"], flipped.figures.accuracy);
    assert_eq!(metrics["forward_passes"], 2.0);
    assert!(manifest.provenance.notes.contains("test-time flip"));
    let card = std::fs::read_to_string(flipped.dir.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("mirror image") && card.contains("twice"),
        "{card}"
    );
    // The run's summary and pictures are kept beside the graph.
    for file in ["summary.json", "curves.svg", "confusion.svg"] {
        assert!(flipped.dir.join("training").join(file).is_file(), "{file}");
    }
    // The graph's own confusion matrix, titled with its figures, beside the card.
    let confusion = std::fs::read_to_string(flipped.dir.join("confusion.svg")).unwrap();
    let title = format!(
        "smoke/9 (test-time flip): validation confusion matrix (accuracy {:.4}, macro-F1 {:.4})",
        flipped.figures.accuracy, flipped.figures.macro_f1
    );
    assert!(confusion.contains(&title), "{title} not in the picture");
    assert!(card.contains("`confusion.svg`"), "{card}");
    // The plain export of the same run records no flip.
    let plain = Manifest::load(&base.models_dir.join("smoke/2").join(MANIFEST_FILE)).unwrap();
    assert!(
        !plain
            .provenance
            .metrics
            .contains_key("val_accuracy_without_flip")
    );
    assert!(!plain.provenance.metrics.contains_key("forward_passes"));
    // Its figures are the run's, whose matrix is under training/: none drawn beside the card.
    assert!(!base.models_dir.join("smoke/2/confusion.svg").exists());
}

/// `fer-train export --run A --run B`: two runs in one graph that outputs the log of their mean
/// class probabilities, checked for parity against the members' logits combined in memory; the
/// manifest counts the passes and records each member alone, the card both commands; runs on
/// different data, or none, are refused.
#[test]
fn two_runs_export_as_one_ensemble_graph() {
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<Config> = [7, 8]
        .into_iter()
        .map(|seed| Config {
            seed,
            ..smoke_config(Mode::Supervised)
        })
        .collect();
    let runs: Vec<RunDir> = configs
        .iter()
        .map(|c| {
            let run = RunDir(dir.path().join(format!("run-{}", c.seed)));
            train(c, &run, Session::default()).unwrap();
            run
        })
        .collect();
    // The first command names its run folder, the second none (the card then gives the folder).
    let commands = ["train seed 7 --run runs/seven", "train seed 8"];
    let members: Vec<Member> = (0..2)
        .map(|i| Member {
            config: &configs[i],
            run: &runs[i],
            command: Some(commands[i]),
        })
        .collect();
    let models = dir.path().join("models");
    let request = ExportRequest {
        members: &members,
        models_dir: &models,
        name: "duo",
        version: None,
        ort_dylib: None,
        parity_images: Some(32),
        replace: false,
        force: false,
        test_time_flip: true,
    };
    let done = export(&request).unwrap();
    assert!(done.parity.passed(), "{:?}", done.parity);
    assert_eq!(done.parity.images, 32);
    assert_eq!(done.dir, models.join("duo/1"));
    let manifest = Manifest::load(&done.dir.join(MANIFEST_FILE)).unwrap();
    let metrics = &manifest.provenance.metrics;
    assert_eq!(metrics["forward_passes"], 4.0, "{metrics:?}");
    assert_eq!(metrics["val_accuracy"], done.figures.accuracy);
    assert_eq!(metrics["val_images"], 128.0);
    for key in [
        "val_accuracy_member_1",
        "val_macro_f1_member_2",
        "best_epoch_member_2",
    ] {
        assert!(metrics.contains_key(key), "{key}: {metrics:?}");
    }
    assert!(!metrics.contains_key("epochs"), "{metrics:?}");
    assert_eq!(manifest.provenance.seed, None);
    assert_eq!(
        manifest.provenance.command,
        "train seed 7 --run runs/seven\ntrain seed 8"
    );
    assert!(
        manifest.provenance.notes.contains("seeds 7, 8"),
        "{}",
        manifest.provenance.notes
    );
    let card = std::fs::read_to_string(done.dir.join("MODEL_CARD.md")).unwrap();
    for needle in [
        "An ensemble of 2 networks",
        "### Member 2",
        "train seed 8",
        "4 passes",
        &format!(
            "fer-train export --name duo --run runs/seven --run {} --test-time-flip",
            runs[1].0.display()
        ),
    ] {
        assert!(card.contains(needle), "{needle} not in {card}");
    }
    // Each member's summary and pictures are kept beside the graph, and the graph's own matrix.
    for file in ["member-1/summary.json", "member-2/curves.svg"] {
        assert!(done.dir.join("training").join(file).is_file(), "{file}");
    }
    let confusion = std::fs::read_to_string(done.dir.join("confusion.svg")).unwrap();
    assert!(
        confusion.contains("duo/1 (ensemble, test-time flip)"),
        "the ensemble's matrix"
    );

    let fer2013 = Config {
        data: Source::Fer2013,
        ..configs[1].clone()
    };
    let mixed = [
        members[0],
        Member {
            config: &fer2013,
            ..members[1]
        },
    ];
    let refused = export(&ExportRequest {
        members: &mixed,
        ..request
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("same data"), "{refused}");
    let none = export(&ExportRequest {
        members: &[],
        ..request
    })
    .unwrap_err()
    .to_string();
    assert!(none.contains("at least one run"), "{none}");
    assert!(!models.join("duo/2").exists());
}

/// A semi-supervised run stopped mid-epoch (off the checkpoint interval) and resumed ends where the
/// same run without a stop ends: the student, the optimiser, the EMA teacher, the threshold policy's
/// state (FlexMatch's per-image classes, DTM's EMAs), the epoch's partial sums and the
/// step-determined draws all come back. (The smoke network has no dropout, whose masks a resumed
/// session draws afresh.)
///
/// Both runs go through a one-thread rayon pool: burn's flex backend sums in parallel, and rayon
/// splits a sum by what other threads are doing, so under load (the other tests, a training run)
/// the last bits of a gradient differ, and AdamW turns such noise on near-zero gradients into
/// whole learning-rate steps. One thread makes every sum's order fixed.
#[test]
fn a_semi_supervised_run_stopped_mid_epoch_resumes_to_the_same_result() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(resume_matches_an_uninterrupted_run);
}

fn resume_matches_an_uninterrupted_run() {
    for mode in [Mode::Flexmatch, Mode::Dtm] {
        let config = smoke_config(mode);
        let dir = tempfile::tempdir().unwrap();
        let whole = train(
            &config,
            &RunDir(dir.path().join("whole")),
            Session::default(),
        )
        .unwrap();

        let split = RunDir(dir.path().join("split"));
        let stopped = train(
            &config,
            &split,
            Session {
                stop_after_steps: Some(7),
                ..Session::default()
            },
        )
        .unwrap();
        assert!(!stopped.finished);
        assert_eq!(
            (stopped.epoch, stopped.step, stopped.step_in_epoch),
            (0, 7, 7)
        );
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(split.state()).unwrap()).unwrap();
        assert_eq!(saved["step"], 7, "the stop is checkpointed");
        let resumed = train(&config, &split, Session::default()).unwrap();

        assert!(resumed.finished);
        assert_eq!(resumed.step, whole.step);
        assert_eq!(resumed.history.len(), whole.history.len());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
        for (a, b) in resumed.history.iter().zip(&whole.history) {
            let at = format!("{mode:?} epoch {}", a.epoch);
            assert!(
                close(a.train_loss, b.train_loss),
                "{at}: loss {} vs {}",
                a.train_loss,
                b.train_loss
            );
            let (va, vb) = (a.val.as_ref().unwrap(), b.val.as_ref().unwrap());
            assert!(close(va.macro_f1, vb.macro_f1), "{at}: {va:?} vs {vb:?}");
            assert!(close(va.accuracy, vb.accuracy), "{at}");
            let (sa, sb) = (a.ssl.as_ref().unwrap(), b.ssl.as_ref().unwrap());
            assert!(
                close(sa.unsup_loss, sb.unsup_loss),
                "{at}: {sa:?} vs {sb:?}"
            );
            assert!(close(sa.mask_rate, sb.mask_rate), "{at}: {sa:?} vs {sb:?}");
            for (ta, tb) in sa.thresholds.iter().zip(&sb.thresholds) {
                assert!(
                    close(f64::from(*ta), f64::from(*tb)),
                    "{at}: {sa:?} vs {sb:?}"
                );
            }
        }
        if mode == Mode::Flexmatch {
            // Pseudo-labels were accepted, so the unlabelled path is part of what had to resume.
            assert!(
                whole
                    .history
                    .iter()
                    .any(|h| h.ssl.as_ref().unwrap().mask_rate > 0.0)
            );
        }
    }
}
