//! The smallest useful embedding of mptrain in Rust: load a recipe, override a key, train a
//! few steps on batches this program supplies, save a checkpoint.
//!
//! Usage: train_rust RECIPE.toml CHECKPOINT_DIR [section.key=value ...]
//!
//! The batches are byte-level tokens (vocabulary 257, as in recipes/tiny.toml) cut from a
//! text held here; a real host would read its own data the same way.

use std::path::Path;
use std::process::ExitCode;

use mptrain::{Batch, Context, Options};

const TEXT: &[u8] = b"It was the best of times, it was the worst of times, it was the age of wisdom, it \
was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ";

/// One step's batch: `rows` sequences of `cols` tokens, each starting further into the text.
fn fill_batch(tokens: &mut [i32], cols: usize, step: usize, vocab: i64) {
    for (i, token) in tokens.iter_mut().enumerate() {
        let (r, c) = (i / cols, i % cols);
        *token = (i64::from(TEXT[(step * 7 + r * 13 + c) % TEXT.len()]) % vocab) as i32;
    }
}

fn run(recipe: &str, checkpoint_dir: &Path, overrides: &[String]) -> mptrain::Result<()> {
    let mut ctx = Context::new(Options::from_file(recipe))?;
    // The host's choice (a short run) first, then the command line's, which may change it.
    ctx.set_override("train.train_iters=5")?;
    for assignment in overrides {
        ctx.set_override(assignment)?;
    }
    let mut model = ctx.build_model()?;
    let info = model.info()?;
    // One rank: the whole global batch, each row seq_length + 1 tokens (labels are the shift).
    let (rows, cols) = (info.global_batch_size as usize, info.seq_length as usize + 1);
    let mut tokens = vec![0i32; rows * cols];
    for step in info.iteration..info.train_iters {
        fill_batch(&mut tokens, cols, step as usize, info.vocab_size);
        let result = model.train_step(Some(&Batch::new(&tokens, rows, cols)))?;
        println!("step {}: loss {:.4}", result.iteration, result.lm_loss);
    }
    model.checkpoint(Some(checkpoint_dir))?;
    println!("checkpoint saved in {}", checkpoint_dir.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: {} RECIPE.toml CHECKPOINT_DIR [section.key=value ...]", args[0]);
        return ExitCode::from(2);
    }
    match run(&args[1], Path::new(&args[2]), &args[3..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mptrain: {}", e);
            ExitCode::FAILURE
        }
    }
}
