#!/usr/bin/env python3
"""The benchmark's models in plain PyTorch, trained the way PyTorch users train them, timed
the way build/bench_gpu_train times mptrain, printing the same JSON line fields.

    python3 bench/gpu/torch_gpt.py RECIPE.toml [section.key=value ...] [--name NAME]
        [--micro-batch N[,N...]] [--warmup W] [--steps S] [--time-budget SECONDS]
        [--peak-tflops TFLOPS] [--device cuda|cpu] [--tiny] [--no-compile]
        [--describe] [--print-tiny-overrides]

The model is read from the same recipe file mptrain reads ([model] keys, with mptrain's
defaults; a key or value this file does not build is an error, never ignored), so both sides
train the same architecture: RMSNorm or LayerNorm, RoPE (rotate-half) or learned positions,
grouped-query attention through F.scaled_dot_product_attention(is_causal=True), SwiGLU or
GELU, biases on or off, output layer tied or not, the vocabulary padded as mptrain pads it
(make_vocab_size_divisible_by) with the padded logits left out of the softmax.

Training: fp32 parameters (the master weights), bf16 autocast for the forward and backward
when the recipe asks for bf16_mixed, the loss in fp32, AdamW (fused on CUDA) with the
recipe's lr, betas, eps and weight decay (not on biases and norms, as Megatron), gradient
clipping to optimizer.clip_grad, the model wrapped in torch.compile (static shapes). The
learning rate stays at optimizer.lr (no schedule: it costs nothing measurable). One micro-batch
per step, tokens drawn uniformly at random on the device (mptrain's mock data).

Timing as bench_gpu_train: W untimed steps (the first compiles), then S steps each timed on
the host with the device synchronised; the median step gives tokens/s and MFU.
--time-budget (seconds from the start) shortens the warm-up (to 1 step at least) and lowers S
(to 1 at least) so the run ends in time; the line says how many steps of each ran. FLOPs per step
are counted from the built modules' own weight shapes with the formula in
bench/bench_gpu_train.cc (6 N T + 6 L S A T; PaLM's 6 N T + 12 L S A T as mfu_palm).
Memory: peak_device_bytes is the growth of the device's used memory (cudaMemGetInfo) from
before the model was built, sampled after each step, as for mptrain; accounted_bytes is
torch.cuda.max_memory_allocated and peak_reserved_bytes torch.cuda.max_memory_reserved.

--micro-batch tries each size in turn and times the first that fits ("out_of_memory" lines
for the others). --tiny shrinks the model (2 layers, hidden 64, sequences of 64) for a CPU
smoke test; --print-tiny-overrides prints that shrink as section.key=value words for
bench_gpu_train. --describe prints the model's figures without training (built on the meta
device: no memory, no GPU). Exit status: 0, 1 on an error, 2 on a usage error, 3 when no size
fits.
"""

import argparse
import gc
import json
import math
import statistics
import sys
import time
import tomllib

START = time.monotonic()

# mptrain's defaults for the [model] keys this file builds (src/config/recipe.h).
MODEL_DEFAULTS = {
    "num_layers": None,
    "hidden_size": None,
    "ffn_hidden_size": None,  # None: 4 * hidden_size
    "num_attention_heads": None,
    "num_query_groups": None,  # None: num_attention_heads
    "kv_channels": None,  # None: hidden_size / num_attention_heads
    "seq_length": 1024,
    "vocab_size": None,
    "make_vocab_size_divisible_by": 128,
    "normalization": "LayerNorm",
    "layernorm_epsilon": 1e-5,
    "activation_func": "gelu",
    "gated_linear_unit": False,
    "add_bias_linear": True,
    "position_embedding_type": "learned_absolute",
    "rotary_base": 10000.0,
    "share_embeddings_and_output_weights": True,
    "init_method_std": 0.02,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
}
# The one value of each key this file builds, where mptrain offers more.
MODEL_REQUIRED = {"hidden_dropout": 0.0, "attention_dropout": 0.0}
OPTIMIZER_DEFAULTS = {"optimizer": "adam", "lr": None, "weight_decay": 0.01, "adam_beta1": 0.9,
                      "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 1.0}
OPTIMIZER_IGNORED = {"min_lr", "use_distributed_optimizer", "overlap_param_gather"}


def tiny_overrides(recipe):
    """The CPU smoke test's shrink of a recipe, as section.key=value words."""
    m = recipe.get("model", {})
    gated = m.get("gated_linear_unit", MODEL_DEFAULTS["gated_linear_unit"])
    words = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
             "model.kv_channels=16", f"model.ffn_hidden_size={176 if gated else 256}",
             "model.seq_length=64"]
    if "num_query_groups" in m:
        words.append("model.num_query_groups=2")
    return words


def apply_override(recipe, word):
    """section.key=value (or key=value at top level), the value parsed as TOML as mptrain does
    (a bare word that is not TOML is a string)."""
    if "=" not in word:
        raise SystemExit(f"torch_gpt.py: expected section.key=value, got '{word}'")
    path, text = word.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    keys = path.split(".")
    table = recipe
    for k in keys[:-1]:
        table = table.setdefault(k, {})
    table[keys[-1]] = value


class Config:
    """The model and optimizer settings resolved from a recipe, as mptrain resolves them."""

    def __init__(self, recipe, origin):
        model = recipe.get("model", {})
        unknown = set(model) - set(MODEL_DEFAULTS)
        if unknown:
            raise SystemExit(f"torch_gpt.py: {origin}: [model] keys this model does not build: "
                             f"{', '.join(sorted(unknown))}")
        m = {**MODEL_DEFAULTS, **model}
        for key, want in MODEL_REQUIRED.items():
            if m[key] != want:
                raise SystemExit(f"torch_gpt.py: {origin}: model.{key} = {m[key]}: only {want} is built")
        for key in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size"):
            if m[key] is None:
                raise SystemExit(f"torch_gpt.py: {origin}: model.{key} must be set")
        self.layers = int(m["num_layers"])
        self.hidden = int(m["hidden_size"])
        self.heads = int(m["num_attention_heads"])
        self.groups = int(m["num_query_groups"] or self.heads)
        self.head_dim = int(m["kv_channels"] or self.hidden // self.heads)
        self.ffn = int(m["ffn_hidden_size"] or 4 * self.hidden)
        self.seq = int(m["seq_length"])
        self.vocab = int(m["vocab_size"])
        multiple = int(m["make_vocab_size_divisible_by"])
        self.padded_vocab = -(-self.vocab // multiple) * multiple
        self.rmsnorm = {"RMSNorm": True, "LayerNorm": False}.get(m["normalization"])
        if self.rmsnorm is None:
            raise SystemExit(f"torch_gpt.py: {origin}: model.normalization = {m['normalization']!r}: "
                             "expected RMSNorm or LayerNorm")
        self.eps = float(m["layernorm_epsilon"])
        self.activation = m["activation_func"]
        if self.activation not in ("gelu", "silu"):
            raise SystemExit(f"torch_gpt.py: {origin}: model.activation_func = {self.activation!r}: "
                             "gelu and silu are built")
        self.gated = bool(m["gated_linear_unit"])
        self.bias = bool(m["add_bias_linear"])
        self.rope = {"rope": True, "learned_absolute": False}.get(m["position_embedding_type"])
        if self.rope is None:
            raise SystemExit(f"torch_gpt.py: {origin}: model.position_embedding_type = "
                             f"{m['position_embedding_type']!r}: expected rope or learned_absolute")
        self.rotary_base = float(m["rotary_base"])
        self.tied = bool(m["share_embeddings_and_output_weights"])
        self.init_std = float(m["init_method_std"])
        if self.heads % self.groups:
            raise SystemExit(f"torch_gpt.py: {origin}: num_attention_heads {self.heads} is not a "
                             f"multiple of num_query_groups {self.groups}")

        train = recipe.get("train", {})
        self.micro_batch = int(train.get("micro_batch_size", 1))
        opt = recipe.get("optimizer", {})
        unknown = set(opt) - set(OPTIMIZER_DEFAULTS) - OPTIMIZER_IGNORED
        if unknown:
            raise SystemExit(f"torch_gpt.py: {origin}: [optimizer] keys not built here: "
                             f"{', '.join(sorted(unknown))}")
        o = {**OPTIMIZER_DEFAULTS, **opt}
        if o["optimizer"] != "adam" or o["lr"] is None:
            raise SystemExit(f"torch_gpt.py: {origin}: needs optimizer.optimizer = \"adam\" and optimizer.lr")
        self.lr = float(o["lr"])
        self.betas = (float(o["adam_beta1"]), float(o["adam_beta2"]))
        self.adam_eps = float(o["adam_eps"])
        self.weight_decay = float(o["weight_decay"])
        self.clip_grad = float(o["clip_grad"])
        preset = recipe.get("mixed_precision", "fp32")
        if isinstance(preset, dict):
            preset = "bf16_mixed" if preset.get("bf16") else "fp32"
        if model.get("bf16"):
            preset = "bf16_mixed"
        if preset not in ("fp32", "bf16_mixed"):
            raise SystemExit(f"torch_gpt.py: {origin}: mixed_precision = {preset!r}: fp32 or bf16_mixed")
        self.bf16 = preset == "bf16_mixed"
        self.seed = int(recipe.get("rng", {}).get("seed", 1234))


def build_model(cfg):
    """The GPT module for cfg (imports torch here so that --print-tiny-overrides needs none)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (y * self.weight).to(x.dtype)

    def norm():
        return RMSNorm(cfg.hidden, cfg.eps) if cfg.rmsnorm else nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def rotate_half(x):
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.head_dim
            self.linear_qkv = nn.Linear(cfg.hidden, (cfg.heads + 2 * cfg.groups) * d, bias=cfg.bias)
            self.linear_proj = nn.Linear(cfg.heads * d, cfg.hidden, bias=cfg.bias)

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            d, h, g = cfg.head_dim, cfg.heads, cfg.groups
            q, k, v = self.linear_qkv(x).split([h * d, g * d, g * d], dim=-1)
            q = q.view(b, s, h, d).transpose(1, 2)
            k = k.view(b, s, g, d).transpose(1, 2)
            v = v.view(b, s, g, d).transpose(1, 2)
            if cos is not None:
                cos, sin = cos.to(q.dtype), sin.to(q.dtype)
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
            if g != h:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.linear_proj(out.transpose(1, 2).reshape(b, s, h * d))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            width = 2 * cfg.ffn if cfg.gated else cfg.ffn
            self.linear_fc1 = nn.Linear(cfg.hidden, width, bias=cfg.bias)
            self.linear_fc2 = nn.Linear(cfg.ffn, cfg.hidden, bias=cfg.bias)

        def forward(self, x):
            y = self.linear_fc1(x)
            if cfg.gated:
                gate, up = y.chunk(2, dim=-1)
                y = (F.silu(gate) if cfg.activation == "silu" else F.gelu(gate)) * up
            else:
                y = F.silu(y) if cfg.activation == "silu" else F.gelu(y)
            return self.linear_fc2(y)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = norm()
            self.self_attention = Attention()
            self.pre_mlp_layernorm = norm()
            self.mlp = MLP()

        def forward(self, x, cos, sin):
            x = x + self.self_attention(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.pre_mlp_layernorm(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg.padded_vocab, cfg.hidden)
            self.position_embeddings = None if cfg.rope else nn.Embedding(cfg.seq, cfg.hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg.layers))
            self.final_layernorm = norm()
            self.output_layer = None if cfg.tied else nn.Linear(cfg.hidden, cfg.padded_vocab, bias=False)
            if cfg.rope:
                inv = 1.0 / cfg.rotary_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
                angles = torch.outer(torch.arange(cfg.seq, dtype=torch.float32), inv)
                angles = torch.cat((angles, angles), dim=-1)
                self.register_buffer("cos", angles.cos(), persistent=False)
                self.register_buffer("sin", angles.sin(), persistent=False)
            self.reset_parameters()

        def reset_parameters(self):
            # Megatron's: normal(0, std); the layers' output projections std / sqrt(2 L).
            scaled = cfg.init_std / math.sqrt(2.0 * cfg.layers)
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
                elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                    nn.init.normal_(p, 0.0, scaled)
                else:
                    nn.init.normal_(p, 0.0, cfg.init_std)

        def output_weight(self):
            return self.word_embeddings.weight if cfg.tied else self.output_layer.weight

        def forward(self, tokens, labels):
            x = self.word_embeddings(tokens)
            cos, sin = (self.cos, self.sin) if cfg.rope else (None, None)
            if not cfg.rope:
                x = x + self.position_embeddings.weight[: tokens.shape[1]]
            for layer in self.layers:
                x = layer(x, cos, sin)
            logits = F.linear(self.final_layernorm(x), self.output_weight())
            # Padded vocabulary entries are not in the softmax (as in mptrain).
            logits = logits[..., : cfg.vocab].float()
            return F.cross_entropy(logits.reshape(-1, cfg.vocab), labels.reshape(-1))

    return GPT()


def model_figures(model, cfg, micro_batch):
    """The fields both implementations print: parameters, and FLOPs from the modules' shapes."""
    params = sum(p.numel() for p in model.parameters())
    matmul = sum(m.weight.numel() for layer in model.layers
                 for m in (layer.self_attention.linear_qkv, layer.self_attention.linear_proj,
                           layer.mlp.linear_fc1, layer.mlp.linear_fc2))
    matmul += model.output_weight().numel()
    tokens = micro_batch * cfg.seq
    attention = cfg.layers * cfg.seq * cfg.heads * cfg.head_dim * tokens
    return {"micro_batch": micro_batch, "seq_length": cfg.seq, "vocab_size": cfg.vocab, "params": params,
            "matmul_params": matmul,
            "tokens_per_step": tokens, "flops_per_step": 6.0 * matmul * tokens + 6.0 * attention,
            "flops_per_step_palm": 6.0 * matmul * tokens + 12.0 * attention,
            "precision": "bf16_mixed" if cfg.bf16 else "fp32"}


def print_line(fields):
    print(json.dumps(fields), flush=True)


def is_out_of_memory(err):
    """A device allocation that failed, raised as such or wrapped (by the compiler); on the CPU,
    the allocator's "can't allocate memory"."""
    import torch
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def make_optimizer(model, cfg, device):
    import torch
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device
        return torch.optim.AdamW(groups, foreach=True, **kwargs), "foreach"


def time_run(args, cfg, micro_batch, device):
    """Builds, compiles and trains one micro-batch size; prints its line."""
    import torch
    gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def used():
        if not gpu:
            return 0
        free, total = torch.cuda.mem_get_info(device)
        return total - free

    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    used_before = used()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    figures = model_figures(model, cfg, micro_batch)
    optimizer, optimizer_kind = make_optimizer(model, cfg, device)
    forward = torch.compile(model, dynamic=False) if args.compile else model
    used_peak = used()

    def step():
        data = torch.randint(0, cfg.vocab, (micro_batch, cfg.seq + 1), device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = forward(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def budget_left():
        return args.time_budget - (time.monotonic() - START)

    first_loss = None
    step_s = 0.0  # the last warm-up step's time
    warmup = 0
    while warmup < args.warmup:
        t0 = time.perf_counter()
        loss = step()
        sync()
        step_s = max(time.perf_counter() - t0, 1e-6)
        warmup += 1
        if first_loss is None:
            first_loss = loss.item()
        used_peak = max(used_peak, used())
        # Under a budget, the warm-up gives way to at least 3 timed steps.
        if args.time_budget and budget_left() < (args.warmup - warmup + 3) * step_s:
            break
    steps = args.steps
    if args.time_budget:
        steps = max(1, min(args.steps, int(budget_left() / step_s)))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        used_peak = max(used_peak, used())
    last_loss = loss.item()

    median = statistics.median(times)
    peak = args.peak_tflops * 1e12
    line = {"bench": "gpu_train", "impl": "torch", "model": args.name, **figures, "status": "ok",
            "device": torch.cuda.get_device_name(device) if gpu else "cpu",
            "warmup_steps": warmup, "timed_steps": steps,
            "step_ms_median": median * 1e3, "step_ms_mean": statistics.fmean(times) * 1e3,
            "step_ms_min": min(times) * 1e3, "tokens_per_s": figures["tokens_per_step"] / median,
            "peak_tflops": args.peak_tflops, "mfu": figures["flops_per_step"] / median / peak,
            "mfu_palm": figures["flops_per_step_palm"] / median / peak,
            "peak_device_bytes": used_peak - used_before if gpu else None,
            "accounted_bytes": torch.cuda.max_memory_allocated(device) if gpu else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if gpu else None,
            "loss_first": first_loss, "loss_last": last_loss,
            "torch": torch.__version__, "compiled": args.compile, "optimizer": f"AdamW ({optimizer_kind})"}
    print_line(line)


def release(device):
    import torch
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--name")
    p.add_argument("--micro-batch", help="N[,N...]: tried in turn, the first that fits is timed")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds from the start")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="shrink the model for a CPU smoke test")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--describe", action="store_true", help="print the model's figures, train nothing")
    p.add_argument("--print-tiny-overrides", action="store_true")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    if args.name is None:
        args.name = args.recipe.rsplit("/", 1)[-1].removesuffix(".toml")
    try:
        sizes = [int(b) for b in args.micro_batch.split(",")] if args.micro_batch else []
    except ValueError:
        p.error(f"--micro-batch: expected N[,N...], got '{args.micro_batch}'")
    if any(b < 1 for b in sizes):
        p.error("--micro-batch: sizes must be at least 1")

    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    if args.print_tiny_overrides:
        print(" ".join(tiny_overrides(recipe)))
        return 0
    for word in (tiny_overrides(recipe) if args.tiny else []) + args.overrides:
        apply_override(recipe, word)
    cfg = Config(recipe, args.recipe)

    import torch
    if args.describe:
        with torch.device("meta"):
            model = build_model(cfg)
        mb = sizes[0] if sizes else cfg.micro_batch
        print_line({"bench": "gpu_train", "impl": "torch", "model": args.name,
                    **model_figures(model, cfg, mb), "status": "describe"})
        return 0

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch_gpt.py: --device cuda but torch sees no CUDA GPU")
        torch.cuda.set_device(device)
    for b in sizes or [cfg.micro_batch]:
        failure = None
        try:
            time_run(args, cfg, b, device)
            return 0
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried; the rest re-raised
            if not is_out_of_memory(err):
                raise
            failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        # Outside the handler: the traceback no longer holds the failed step's tensors.
        release(device)
        print_line({"bench": "gpu_train", "impl": "torch", "model": args.name, "micro_batch": b,
                    "seq_length": cfg.seq, "status": "out_of_memory", "error": failure})
        if args.time_budget and time.monotonic() - START > args.time_budget:
            print("torch_gpt.py: time budget spent; smaller sizes not tried", file=sys.stderr)
            break
    return 3


if __name__ == "__main__":
    sys.exit(main())
