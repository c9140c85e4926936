"""The ctypes module against the installed library: training on recipes/tiny.toml from the
recipe's data and from host batches, a checkpoint that loads back, recipe errors with their
messages, batches refused before they reach the library, the log callback, close().

Run: python3 bindings/python/test_mptrain.py (with the library findable, see mptrain.py)."""

import array
import math
import os
import tempfile
import threading
import unittest

import mptrain

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "recipes", "tiny.toml")
# recipes/tiny.toml cut down to train in well under a second a step.
FAST = ["train.train_iters=3", "scheduler.lr_warmup_iters=1", "train.global_batch_size=8", "model.seq_length=64",
        "dataset.num_workers=0"]


def tiny(*extra, **kwargs):
    kwargs.setdefault("log_level", mptrain.LogLevel.OFF)
    return mptrain.Context(TINY, overrides=FAST + list(extra), **kwargs)


def host_tokens(rows, cols, seed):
    return [(i * 31 + seed * 7) % 257 for i in range(rows * cols)]


class Training(unittest.TestCase):
    def test_version(self):
        self.assertEqual(mptrain.version(), "0.1.0")
        self.assertEqual(mptrain.version_number() // 100, mptrain.HEADER_VERSION_NUMBER // 100)

    def test_trains_saves_and_resumes(self):
        lines = []
        with tiny(log=lambda level, text: lines.append((level, text)),
                  log_level=mptrain.LogLevel.INFO) as ctx, tempfile.TemporaryDirectory() as tmp:
            ctx.set_override("rng.seed=7")
            resolved = ctx.config_toml()
            self.assertIn("train_iters = 3", resolved)
            self.assertIn("seed = 7", resolved)

            model = ctx.build_model()
            info = model.info()
            self.assertEqual((info.iteration, info.train_iters, info.seq_length), (0, 3, 64))
            self.assertGreater(info.num_parameters, 0)
            for want in (1, 2):
                step = model.train_step()
                self.assertEqual(step.iteration, want)
                self.assertTrue(math.isfinite(step.lm_loss) and step.lm_loss > 0, step)
                self.assertEqual(step.tokens, info.global_batch_size * info.seq_length)
            model.checkpoint(tmp)
            rows, cols = info.global_batch_size, info.seq_length + 1
            batch = mptrain.Batch(host_tokens(rows, cols, 1), rows, cols)
            step3 = model.train_step(batch)
            self.assertEqual(step3.iteration, 3)
            with open(os.path.join(tmp, "latest_checkpointed_iteration.txt")) as f:
                self.assertEqual(f.read().strip(), "2")
            self.assertTrue(os.path.isdir(os.path.join(tmp, "iter_0000002")))
            self.assertTrue(any(level == mptrain.LogLevel.INFO and text.startswith("mptrain: backend")
                                for level, text in lines), lines)

            # Closing the model lets the context build another, which resumes and repeats
            # step 3; the same tokens as an int32 buffer make the same batch.
            model.close()
            with ctx.build_model() as model:
                model.load_checkpoint(tmp)
                self.assertEqual(model.info().iteration, 2)
                again = model.train_step(mptrain.Batch(array.array("i", host_tokens(rows, cols, 1)), rows, cols))
                self.assertEqual(again.iteration, 3)
                self.assertAlmostEqual(again.lm_loss, step3.lm_loss, delta=1e-6 * step3.lm_loss)

    def test_bad_recipe_reports_file_line_and_key(self):
        with tempfile.TemporaryDirectory() as tmp:
            recipe = os.path.join(tmp, "typo.toml")
            with open(recipe, "w") as f:
                f.write("[model]\nnum_layers = 2\nhiden_size = 64\n")
            with self.assertRaises(mptrain.Error) as caught:
                mptrain.Context(recipe)
            e = caught.exception
            self.assertEqual(e.status, mptrain.Status.INVALID_CONFIG)
            self.assertIn(recipe + ":3", e.message)
            self.assertIn("hiden_size", e.message)
            self.assertTrue(str(e).startswith("invalid configuration: "), str(e))

            with self.assertRaises(mptrain.Error) as caught:
                mptrain.Context(os.path.join(tmp, "missing.toml"))
            self.assertEqual(caught.exception.status, mptrain.Status.IO)

        # Valid keys whose values break a rule are caught when the model is built.
        with tiny("model.num_attention_heads=6") as ctx:
            with self.assertRaises(mptrain.Error) as caught:
                ctx.build_model()
            self.assertEqual(caught.exception.status, mptrain.Status.INVALID_CONFIG)
            self.assertIn("num_attention_heads", caught.exception.message)
            with self.assertRaises(mptrain.Error) as caught:
                ctx.set_override("train.no_such_key=1")
            self.assertIn("no_such_key", caught.exception.message)

    def test_batch_that_does_not_fit_trains_nothing(self):
        with tiny() as ctx:
            model = ctx.build_model()
            info = model.info()
            rows, cols = info.global_batch_size, info.seq_length + 1
            tokens = host_tokens(rows, cols, 2)
            # Refused here: the values do not fill rows x cols.
            with self.assertRaises(mptrain.Error) as caught:
                mptrain.Batch(tokens[1:], rows, cols)
            self.assertEqual(caught.exception.status, mptrain.Status.INVALID_ARGUMENT)
            self.assertIn("tokens", caught.exception.message)
            with self.assertRaises(mptrain.Error) as caught:
                mptrain.Batch(tokens, rows, cols, loss_mask=[1.0] * (rows * (cols - 1) - 1))
            self.assertIn("loss_mask", caught.exception.message)
            # An int32 buffer is not taken for float32 weights: its values are converted.
            mptrain.Batch(tokens, rows, cols, loss_mask=array.array("i", [1] * (rows * (cols - 1))))
            # Refused by the library: consistent, but not the recipe's shape.
            with self.assertRaises(mptrain.Error) as caught:
                model.train_step(mptrain.Batch(tokens[:rows * (cols - 1)], rows, cols - 1))
            self.assertEqual(caught.exception.status, mptrain.Status.INVALID_ARGUMENT)
            self.assertIn("cols", caught.exception.message)
            self.assertEqual(model.info().iteration, 0)

    def test_log_callback_exception_reaches_the_caller(self):
        armed = [True]

        def log(_level, text):
            if armed[0] and text.startswith("mptrain: backend"):
                armed[0] = False
                raise RuntimeError("log callback saw: " + text)

        with tiny(log=log, log_level=mptrain.LogLevel.INFO) as ctx:
            with self.assertRaisesRegex(RuntimeError, "log callback saw: mptrain: backend"):
                ctx.build_model()
            # The model built during that call was destroyed: the context builds another.
            ctx.build_model().close()

    def test_close_and_threads(self):
        ctx = tiny()
        model = ctx.build_model()
        losses = []
        worker = threading.Thread(target=lambda: losses.append(model.train_step().lm_loss))
        worker.start()
        worker.join()
        self.assertTrue(losses and math.isfinite(losses[0]), losses)
        ctx.close()
        ctx.close()
        with self.assertRaises(mptrain.Error) as caught:
            model.train_step()
        self.assertIn("closed", caught.exception.message)
        model.close()
        with self.assertRaises(mptrain.Error):
            ctx.set_override("train.train_iters=2")


if __name__ == "__main__":
    unittest.main()
