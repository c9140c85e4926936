#!/usr/bin/env python3
"""The loss check: PyTorch trains the recipe's model from mptrain's initial weights on the
batches mptrain trained on, and its per-step losses must equal mptrain's.

    python3 bench/gpu/torch_parity.py RECIPE.toml [section.key=value ...]
        --initial DIR --batches FILE.npy --metrics FILE.jsonl [--final DIR]
        [--device cpu|cuda] [--steps N] [--rtol R] [--json FILE]

--initial: mptrain's checkpoint before the first update (`mptrain train --save-initial`), an
iter_XXXXXXX directory or a save directory (its first iteration is taken). --batches: the
token ids of each iteration (`mptrain batches ... --output FILE.npy`). --metrics: mptrain's
logger.metrics_file of the same run (lm_loss, grad_norm and lr per iteration). --final:
mptrain's checkpoint after the run; each parameter's change over the run is then compared
too (the sharpest test of the model's backward: attention's, RoPE's, the norms'). The recipe
and overrides must be the ones mptrain trained with.

The model is bench/gpu/torch_gpt.py's, eager (no torch.compile: the check is of values, not
speed), built from the recipe: Megatron's conventions written independently of mptrain's
code. The checkpoint's tensors load by their Megatron names; linear_qkv's rows are Megatron's
grouped layout ([q heads of the group, k, v] per query group), which torch_gpt.py's module
holds as [all q | all k | all v]. Training as Megatron's: AdamW with the recipe's betas, eps
and decoupled weight decay (none on biases and norms), clipping at optimizer.clip_grad, and
the recipe's learning-rate schedule (linear warmup from lr_warmup_init, then constant, linear
or cosine decay to min_lr; the lr of update k is the schedule at k updates done, as
Megatron's OptimizerParamScheduler). Micro-batches of one iteration are averaged.

Tolerances (relative, per step, on the loss): fp32 1e-5: both sides compute in fp32 and
differ only in summation order (the shrunk models agree to 2e-7 over 20 steps), so 1e-5
leaves 50x headroom yet catches any difference of formula. bf16_mixed 1e-2: each side
rounds activations and GEMM inputs to bf16 (8 significant bits: 2^-8 = 3.9e-3 relative per
rounding) in different places (PyTorch's autocast keeps the residual stream in fp32,
mptrain in bf16); the loss, a mean over every token, averages those roundings out, so 1e-2
(2.5 roundings) is met by any correct pair of implementations (mptrain's CPU bf16 against
PyTorch's CPU autocast: 1e-4 over 20 steps of the shrunk LLaMA) and exceeded by a
systematic error of a few roundings. A subtle error of formula (RoPE's direction: 2e-5 on the loss)
shows only in the fp32 checks of the gradients and parameter changes, run on the CPU. In fp32
the gradient norms (both accumulated in double) must agree within 1e-4 and each parameter's
change over the run within 1e-3 of its own norm (observed: 5e-8 and 5e-5); in bf16 both are
reported only.

Prints one line per step and a JSON summary line (also written to --json). Exit status: 0
when the check passes, 1 when it fails or the inputs are inconsistent, 2 on a usage error.
"""

import argparse
import glob
import json
import math
import os
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt  # noqa: E402  (the model and recipe reading)

SCHEDULER_KEYS = {"lr_decay_style", "lr_decay_iters", "lr_warmup_iters", "lr_warmup_fraction",
                  "lr_warmup_init", "weight_decay_incr_style", "start_weight_decay", "end_weight_decay"}
RTOL = {"fp32": 1e-5, "bf16_mixed": 1e-2}
GRAD_NORM_RTOL_FP32 = 1e-4
UPDATE_RTOL_FP32 = 1e-3


def fail(message):
    print(f"torch_parity.py: {message}", file=sys.stderr)
    sys.exit(1)


class Schedule:
    """Megatron's learning-rate schedule, as the recipe's [scheduler] and [optimizer] set it."""

    def __init__(self, recipe, train_iters):
        s = recipe.get("scheduler", {})
        unknown = set(s) - SCHEDULER_KEYS
        if unknown:
            fail(f"[scheduler] keys this check does not model: {', '.join(sorted(unknown))}")
        if s.get("weight_decay_incr_style", "constant") != "constant" or "start_weight_decay" in s \
                or "end_weight_decay" in s:
            fail("a weight-decay schedule is not modelled: keep scheduler.weight_decay_incr_style constant")
        o = recipe.get("optimizer", {})
        self.max_lr = float(o["lr"])
        self.min_lr = float(o.get("min_lr", 0.0))
        self.style = s.get("lr_decay_style", "linear")
        if self.style not in ("constant", "linear", "cosine"):
            fail(f"scheduler.lr_decay_style = {self.style!r}: constant, linear or cosine")
        self.decay_iters = int(s.get("lr_decay_iters", train_iters))
        if "lr_warmup_fraction" in s:
            self.warmup_iters = round(float(s["lr_warmup_fraction"]) * self.decay_iters)
        else:
            self.warmup_iters = int(s.get("lr_warmup_iters", 0))
        self.warmup_init = float(s.get("lr_warmup_init", 0.0))

    def lr(self, done):
        """The learning rate of the update made after `done` updates."""
        if self.warmup_iters > 0 and done <= self.warmup_iters:
            return self.warmup_init + (self.max_lr - self.warmup_init) * done / self.warmup_iters
        if self.style == "constant":
            return self.max_lr
        if done > self.decay_iters:
            return self.min_lr
        ratio = (done - self.warmup_iters) / max(1, self.decay_iters - self.warmup_iters)
        coeff = 1.0 - ratio if self.style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)


def iteration_dir(path, which):
    """An iter_XXXXXXX directory, or the first / last one of a save directory."""
    if os.path.exists(os.path.join(path, "index.json")):
        return path
    dirs = sorted(glob.glob(os.path.join(path, "iter_*")))
    dirs = [d for d in dirs if os.path.exists(os.path.join(d, "index.json"))]
    if not dirs:
        fail(f"{path}: no mptrain checkpoint (no index.json, no iter_XXXXXXX/index.json)")
    return dirs[0] if which == "first" else dirs[-1]


def read_checkpoint(path, which):
    """{global name: float32 numpy array} of the model's tensors, assembled from the shards
    index.json lists (optimizer state left out), and the checkpoint's iteration."""
    import numpy as np
    from safetensors import safe_open
    d = iteration_dir(path, which)
    with open(os.path.join(d, "index.json")) as f:
        index = json.load(f)
    tensors = {}
    for name, entry in index["tensors"].items():
        if "exp_avg" in name:
            continue
        whole = np.zeros(entry["global_shape"], dtype=np.float32)
        for shard in entry["shards"]:
            with safe_open(os.path.join(d, shard["file"]), framework="numpy") as st:
                part = st.get_tensor(shard["key"]).astype(np.float32)
            box = tuple(slice(o, o + n) for o, n in zip(shard["offset"], shard["shape"]))
            whole[box] = part.reshape(shard["shape"])
        tensors[name] = whole
    return tensors, int(index["iteration"]), d


def qkv_row_order(cfg):
    """Row k of the [all q | all k | all v] weight is row order[k] of Megatron's grouped one."""
    d, h, g = cfg.head_dim, cfg.heads, cfg.groups
    per = h // g
    width = (per + 2) * d  # one query group's rows: its q heads, then k, then v
    q = [grp * width + j * d + i for grp in range(g) for j in range(per) for i in range(d)]
    k = [grp * width + per * d + i for grp in range(g) for i in range(d)]
    v = [grp * width + (per + 1) * d + i for grp in range(g) for i in range(d)]
    return q + k + v


def module_name(megatron):
    """torch_gpt.py's parameter name for a checkpoint tensor's Megatron name."""
    if megatron.startswith("embedding."):
        return megatron[len("embedding."):]
    if megatron.startswith("decoder."):
        return megatron[len("decoder."):]
    return megatron


def load_weights(model, cfg, tensors, origin):
    """Copies every checkpoint tensor into the module; every parameter must be covered."""
    import torch
    params = dict(model.named_parameters())
    order = torch.tensor(qkv_row_order(cfg))
    seen = set()
    for name, value in tensors.items():
        target = module_name(name)
        if cfg.tied and name == "output_layer.weight":
            continue  # tied: the embedding is the output layer
        if target not in params:
            fail(f"{origin}: tensor '{name}' has no counterpart in the PyTorch model")
        p = params[target]
        t = torch.from_numpy(value)
        if name.endswith("linear_qkv.weight") or name.endswith("linear_qkv.bias"):
            t = t[order]
        if "word_embeddings" in name or name == "output_layer.weight":
            # The padded vocabulary rows may differ in count; the real ones must be there.
            if t.shape[0] < cfg.vocab or t.shape[1:] != p.shape[1:]:
                fail(f"{origin}: '{name}' has shape {list(t.shape)}, expected at least {cfg.vocab} rows of {p.shape[1]}")
            rows = min(t.shape[0], p.shape[0])
            with torch.no_grad():
                p.zero_()
                p[:rows].copy_(t[:rows])
        else:
            if tuple(t.shape) != tuple(p.shape):
                fail(f"{origin}: '{name}' has shape {list(t.shape)}, the PyTorch model's is {list(p.shape)}")
            with torch.no_grad():
                p.copy_(t)
        seen.add(target)
    missing = sorted(set(params) - seen)
    if missing:
        fail(f"{origin}: no tensor for the PyTorch model's {', '.join(missing)}")


def read_metrics(path):
    steps = {}
    with open(path) as f:
        for line in f:
            j = json.loads(line)
            if "iteration" in j and "lm_loss" in j and "event" not in j:
                steps[int(j["iteration"])] = j
    return steps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value, as given to mptrain")
    p.add_argument("--initial", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--final")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=0, help="at most this many steps (default: all in --batches)")
    p.add_argument("--rtol", type=float, help="relative tolerance per step on the loss (default by precision)")
    p.add_argument("--json", help="also write the summary line to this file")
    args = p.parse_args()

    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    for word in args.overrides:
        torch_gpt.apply_override(recipe, word)
    cfg = torch_gpt.Config(recipe, args.recipe)
    train = recipe.get("train", {})
    train_iters = int(train.get("train_iters", 0))
    schedule = Schedule(recipe, train_iters)
    if recipe.get("dataset", {}).get("eod_mask_loss", False):
        fail("dataset.eod_mask_loss is not modelled: every token counts in the loss here")

    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(args.device == "cpu")
    device = torch.device(args.device)

    batches = np.load(args.batches)
    if batches.ndim != 3 or batches.shape[2] != cfg.seq + 1:
        fail(f"{args.batches}: shape {batches.shape}, expected [iterations, global batch, {cfg.seq + 1}]")
    iterations, global_batch = batches.shape[0], batches.shape[1]
    micro = cfg.micro_batch
    if global_batch % micro:
        fail(f"{args.batches}: global batch {global_batch} is not a multiple of train.micro_batch_size {micro}")
    steps = min(iterations, args.steps) if args.steps else iterations
    if batches.max() >= cfg.vocab or batches.min() < 0:
        fail(f"{args.batches}: token ids outside [0, {cfg.vocab})")

    tensors, first_iteration, initial_dir = read_checkpoint(args.initial, "first")
    if first_iteration != 0:
        fail(f"{initial_dir}: iteration {first_iteration}, expected the initial weights (iteration 0)")
    metrics = read_metrics(args.metrics)
    missing = [i for i in range(1, steps + 1) if i not in metrics]
    if missing:
        fail(f"{args.metrics}: no lm_loss for iterations {missing[:5]}")

    with device:  # built where it trains: its own initialisation, overwritten next, is quick there
        model = torch_gpt.build_model(cfg)
    load_weights(model, cfg, tensors, initial_dir)
    initial = {n: q.detach().clone() for n, q in model.named_parameters()}
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=schedule.lr(0), betas=cfg.betas, eps=cfg.adam_eps, foreach=False)
    precision = "bf16_mixed" if cfg.bf16 else "fp32"
    rtol = args.rtol if args.rtol is not None else RTOL[precision]

    rows = []
    print(f"{'iter':>4}  {'mptrain loss':>13}  {'PyTorch loss':>13}  {'abs diff':>9}  {'rel diff':>9}  "
          f"{'grad norm rel':>13}  lr")
    for step in range(steps):
        lr = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        data = torch.from_numpy(batches[step].astype(np.int64)).to(device)
        chunks = global_batch // micro
        loss_sum = 0.0
        for c in range(chunks):
            part = data[c * micro:(c + 1) * micro]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = model(part[:, :-1], part[:, 1:])
            (loss / chunks).backward()
            loss_sum += loss.item()
        # The norm in double, then Megatron's clip: clip_grad_norm_'s float32 norm is 4e-5 off
        # (relative) at 2 M elements on the CPU, more than mptrain's double-accumulated one.
        grad_norm = math.sqrt(sum(float(q.grad.double().pow(2).sum()) for q in model.parameters()))
        coeff = cfg.clip_grad / (grad_norm + 1e-6)
        if cfg.clip_grad > 0 and coeff < 1.0:
            for q in model.parameters():
                q.grad.mul_(coeff)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ours = loss_sum / chunks
        m = metrics[step + 1]
        theirs = float(m["lm_loss"])
        row = {"iteration": step + 1, "mptrain_loss": theirs, "torch_loss": ours,
               "abs_diff": abs(theirs - ours), "rel_diff": abs(theirs - ours) / max(abs(theirs), 1e-12),
               "mptrain_grad_norm": float(m.get("grad_norm", float("nan"))), "torch_grad_norm": grad_norm,
               "mptrain_lr": float(m.get("lr", float("nan"))), "torch_lr": lr}
        row["grad_norm_rel_diff"] = abs(row["mptrain_grad_norm"] - grad_norm) / max(abs(grad_norm), 1e-12)
        rows.append(row)
        print(f"{step + 1:>4}  {theirs:>13.7f}  {ours:>13.7f}  {row['abs_diff']:>9.2e}  {row['rel_diff']:>9.2e}  "
              f"{row['grad_norm_rel_diff']:>13.2e}  {lr:.4g}", flush=True)

    problems = []
    bad = [r["iteration"] for r in rows if not (r["rel_diff"] <= rtol)]
    if bad:
        problems.append(f"losses differ by more than {rtol:g} (relative) at iterations {bad}")
    lr_bad = [r["iteration"] for r in rows if not math.isclose(r["mptrain_lr"], r["torch_lr"], rel_tol=1e-6, abs_tol=1e-12)]
    if lr_bad:
        problems.append(f"mptrain's learning rate differs from the schedule's at iterations {lr_bad}")
    if precision == "fp32":
        gn_bad = [r["iteration"] for r in rows if not (r["grad_norm_rel_diff"] <= GRAD_NORM_RTOL_FP32)]
        if gn_bad:
            problems.append(f"gradient norms differ by more than {GRAD_NORM_RTOL_FP32:g} at iterations {gn_bad}")

    updates = None
    if args.final:
        final, final_iteration, final_dir = read_checkpoint(args.final, "last")
        if final_iteration != steps:
            problems.append(f"{final_dir}: iteration {final_iteration}, but {steps} steps were compared")
        else:
            order = torch.tensor(qkv_row_order(cfg))
            params = dict(model.named_parameters())
            updates = []
            for name, value in sorted(final.items()):
                if cfg.tied and name == "output_layer.weight":
                    continue
                target = module_name(name)
                t = torch.from_numpy(value)
                if name.endswith(("linear_qkv.weight", "linear_qkv.bias")):
                    t = t[order]
                rows_used = cfg.vocab if ("word_embeddings" in name or name == "output_layer.weight") else None
                ours_now = params[target].detach().float().cpu()[:rows_used]
                start = initial[target].float().cpu()[:rows_used]
                theirs_delta = t[:rows_used] - start
                ours_delta = ours_now - start
                scale = float(theirs_delta.norm())
                rel = float((theirs_delta - ours_delta).norm()) / max(scale, 1e-30)
                updates.append({"tensor": name, "update_norm": scale, "rel_diff": rel})
            worst = max(updates, key=lambda u: u["rel_diff"])
            print(f"parameter changes over the run: worst {worst['tensor']} (relative {worst['rel_diff']:.2e} of "
                  f"its norm {worst['update_norm']:.3e}); {len(updates)} tensors")
            if precision == "fp32":
                over = [u["tensor"] for u in updates if not (u["rel_diff"] <= UPDATE_RTOL_FP32)]
                if over:
                    problems.append(f"parameter changes differ by more than {UPDATE_RTOL_FP32:g} of their norm: "
                                    f"{', '.join(over)}")

    summary = {"check": "loss_parity", "status": "fail" if problems else "pass", "precision": precision,
               "device": args.device, "steps": steps, "rtol": rtol,
               "max_abs_diff": max(r["abs_diff"] for r in rows), "max_rel_diff": max(r["rel_diff"] for r in rows),
               "max_grad_norm_rel_diff": max(r["grad_norm_rel_diff"] for r in rows),
               "worst_update": max(updates, key=lambda u: u["rel_diff"]) if updates else None,
               "problems": problems, "rows": rows, "updates": updates, "torch": torch.__version__}
    line = json.dumps(summary)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    for problem in problems:
        print(f"torch_parity.py: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
