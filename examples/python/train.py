"""The smallest useful embedding of mptrain in Python: load a recipe, override a key, train a
few steps on batches this program supplies, save a checkpoint.

Usage: PYTHONPATH=bindings/python python3 examples/python/train.py RECIPE.toml CHECKPOINT_DIR [section.key=value ...]

The batches are byte-level tokens (vocabulary 257, as in recipes/tiny.toml) cut from a text
held here; a real host would read its own data the same way.
"""

import sys

import mptrain

TEXT = (b"It was the best of times, it was the worst of times, it was the age of wisdom, it was "
        b"the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ")


def batch_tokens(rows, cols, step, vocab):
    """One step's batch: `rows` sequences of `cols` tokens, each starting further into the text."""
    return [TEXT[(step * 7 + r * 13 + c) % len(TEXT)] % vocab for r in range(rows) for c in range(cols)]


def main(argv):
    if len(argv) < 3:
        print(f"usage: {argv[0]} RECIPE.toml CHECKPOINT_DIR [section.key=value ...]", file=sys.stderr)
        return 2
    recipe, checkpoint_dir, overrides = argv[1], argv[2], argv[3:]
    try:
        with mptrain.Context(recipe) as ctx:
            # The host's choice (a short run) first, then the command line's, which may change it.
            for assignment in ["train.train_iters=5", *overrides]:
                ctx.set_override(assignment)
            model = ctx.build_model()
            info = model.info()
            # One rank: the whole global batch, each row seq_length + 1 tokens (labels are the shift).
            rows, cols = info.global_batch_size, info.seq_length + 1
            for step in range(info.iteration, info.train_iters):
                tokens = batch_tokens(rows, cols, step, info.vocab_size)
                result = model.train_step(mptrain.Batch(tokens, rows, cols))
                print(f"step {result.iteration}: loss {result.lm_loss:.4f}")
            model.checkpoint(checkpoint_dir)
            print(f"checkpoint saved in {checkpoint_dir}")
    except mptrain.Error as e:
        print(f"mptrain: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
