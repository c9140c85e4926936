//! The safe crate against the installed library: training on recipes/tiny.toml from the
//! recipe's data and from host batches, a checkpoint that loads back, recipe errors with
//! their messages, batches refused before they reach the library, and the log closure.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mptrain::{Batch, Context, LogLevel, Options, Status};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../recipes/tiny.toml");

/// recipes/tiny.toml cut down to train in well under a second a step.
const FAST: &[&str] = &[
    "train.train_iters=3",
    "scheduler.lr_warmup_iters=1",
    "train.global_batch_size=8",
    "model.seq_length=64",
    "dataset.num_workers=0",
];

fn tiny() -> Options {
    FAST.iter().fold(Options::from_file(TINY), |o, kv| o.set(*kv))
}

/// A fresh directory for one test, under cargo's scratch directory for integration tests.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn host_tokens(rows: usize, cols: usize, seed: usize) -> Vec<i32> {
    (0..rows * cols).map(|i| ((i * 31 + seed * 7) % 257) as i32).collect()
}

#[test]
fn versions_agree_with_the_header() {
    assert_eq!(mptrain::version(), "0.1.0");
    assert_eq!(mptrain::version_number() / 100, mptrain_sys::MPT_VERSION_NUMBER / 100);
}

#[test]
fn trains_saves_and_resumes() {
    let lines = Arc::new(Mutex::new(Vec::<(LogLevel, String)>::new()));
    let sink = Arc::clone(&lines);
    let mut ctx =
        Context::new(tiny().on_log(move |level, text| sink.lock().unwrap().push((level, text.to_string()))))
            .expect("tiny.toml loads");
    ctx.set_override("rng.seed=7").unwrap();
    let resolved = ctx.config_toml().unwrap();
    assert!(resolved.contains("train_iters = 3"), "resolved recipe:\n{}", resolved);
    assert!(resolved.contains("seed = 7"), "resolved recipe:\n{}", resolved);

    let dir = scratch("trains_saves_and_resumes");
    let (loss3, info) = {
        let mut model = ctx.build_model().expect("model builds");
        let info = model.info().unwrap();
        assert_eq!((info.iteration, info.train_iters, info.seq_length), (0, 3, 64));
        assert!(info.num_parameters > 0 && info.params_bytes >= 4 * info.num_parameters);

        for want in 1..=2 {
            let step = model.train_step(None).unwrap();
            assert_eq!(step.iteration, want);
            assert!(step.lm_loss.is_finite() && step.lm_loss > 0.0, "loss {}", step.lm_loss);
            assert_eq!(step.tokens, info.global_batch_size * info.seq_length);
        }
        model.checkpoint(Some(&dir)).expect("checkpoint saved");
        let (rows, cols) = (info.global_batch_size as usize, info.seq_length as usize + 1);
        let tokens = host_tokens(rows, cols, 1);
        let step = model.train_step(Some(&Batch::new(&tokens, rows, cols))).unwrap();
        assert_eq!(step.iteration, 3);
        (step.lm_loss, info)
    };
    let latest = fs::read_to_string(dir.join("latest_checkpointed_iteration.txt")).unwrap();
    assert_eq!(latest.trim(), "2");
    assert!(dir.join("iter_0000002").is_dir());
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|(level, text)| *level == LogLevel::Info && text.starts_with("mptrain: backend")),
        "log lines: {:?}",
        lines.lock().unwrap()
    );

    // A second model from the same context resumes from the checkpoint and repeats step 3.
    let mut model = ctx.build_model().unwrap();
    model.load_checkpoint(&dir).unwrap();
    assert_eq!(model.info().unwrap().iteration, 2);
    let (rows, cols) = (info.global_batch_size as usize, info.seq_length as usize + 1);
    let tokens = host_tokens(rows, cols, 1);
    let again = model.train_step(Some(&Batch::new(&tokens, rows, cols))).unwrap();
    assert_eq!(again.iteration, 3);
    assert!((again.lm_loss - loss3).abs() <= 1e-6 * loss3.abs(), "{} vs {}", again.lm_loss, loss3);
    drop(model);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_recipe_reports_its_file_line_and_key() {
    let dir = scratch("bad_recipe");
    let recipe = dir.join("typo.toml");
    fs::write(&recipe, "[model]\nnum_layers = 2\nhiden_size = 64\n").unwrap();
    let err = Context::new(Options::from_file(&recipe)).err().expect("a misspelt key is refused");
    assert_eq!(err.status(), Status::InvalidConfig);
    let where_ = format!("{}:3", recipe.display());
    assert!(err.message().contains(&where_), "message: {}", err.message());
    assert!(err.message().contains("hiden_size"), "message: {}", err.message());
    assert!(err.to_string().starts_with("invalid configuration: "), "display: {}", err);

    // Valid keys whose values break a rule are caught when the model is built.
    let mut ctx = Context::new(tiny().set("model.num_attention_heads=6").log_level(LogLevel::Off)).unwrap();
    let err = ctx.build_model().err().expect("6 heads over 4 query groups is refused");
    assert_eq!(err.status(), Status::InvalidConfig);
    assert!(err.message().contains("num_attention_heads"), "message: {}", err.message());

    let err = Context::new(Options::from_file(dir.join("missing.toml"))).err().unwrap();
    assert_eq!(err.status(), Status::Io);
    let err = ctx.set_override("train.no_such_key=1").unwrap_err();
    assert!(err.message().contains("no_such_key"), "message: {}", err.message());

    // The job's place reaches the library, which checks it.
    let err = Context::new(Options::from_file(TINY).place(1, 1, 0)).err().expect("rank 1 of 1 is refused");
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("rank"), "message: {}", err.message());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_batch_that_does_not_fit_trains_nothing() {
    let mut ctx = Context::new(tiny().log_level(LogLevel::Off)).unwrap();
    let mut model = ctx.build_model().unwrap();
    let info = model.info().unwrap();
    let (rows, cols) = (info.global_batch_size as usize, info.seq_length as usize + 1);
    let tokens = host_tokens(rows, cols, 2);

    // Refused here: the slice is shorter than rows x cols.
    let err = model.train_step(Some(&Batch::new(&tokens[1..], rows, cols))).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("tokens"), "message: {}", err.message());
    let mask = vec![1.0f32; rows * (cols - 1) - 1];
    let err = model.train_step(Some(&Batch::new(&tokens, rows, cols).with_loss_mask(&mask))).unwrap_err();
    assert!(err.message().contains("loss_mask"), "message: {}", err.message());

    // Refused by the library: consistent, but not the recipe's shape.
    let err = model.train_step(Some(&Batch::new(&tokens[..rows * (cols - 1)], rows, cols - 1))).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("cols"), "message: {}", err.message());
    assert_eq!(model.info().unwrap().iteration, 0);
}

#[test]
fn a_panicking_log_closure_panics_in_the_caller() {
    let armed = AtomicBool::new(true);
    let options = tiny().on_log(move |_, text| {
        if text.starts_with("mptrain: backend") && armed.swap(false, Ordering::Relaxed) {
            panic!("log closure saw: {}", text);
        }
    });
    let mut ctx = Context::new(options).unwrap();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| ctx.build_model().map(|_| ())))
        .expect_err("the closure's panic comes back");
    let text = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("log closure saw: mptrain: backend"), "payload: {}", text);
    // The model built during that call was destroyed while unwinding: another can be built.
    drop(ctx.build_model().expect("the context is still usable"));
}

#[test]
fn handles_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<Context>();
    is_send::<mptrain::Model<'static>>();
    let mut ctx = Context::new(tiny().log_level(LogLevel::Off)).unwrap();
    let loss = std::thread::spawn(move || {
        let mut model = ctx.build_model().unwrap();
        model.train_step(None).unwrap().lm_loss
    })
    .join()
    .unwrap();
    assert!(loss.is_finite());
}
