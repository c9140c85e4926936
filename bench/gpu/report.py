#!/usr/bin/env python3
"""The comparison table of bench/gpu/run.sh, from the JSON lines that bench_gpu_train and
torch_gpt.py print (one file, any order; other lines are skipped).

    python3 bench/gpu/report.py RESULTS.jsonl [--check] [--require-torch] [--markdown FILE]

For each model: every timed run (implementation, micro-batch, tokens/s, median step, peak
device memory, allocated memory, MFU), the sizes that did not fit, and mptrain/PyTorch ratios
at the largest micro-batch both ran. The two implementations must describe the same model:
equal parameter counts and FLOPs per step at the same micro-batch (a mismatch is printed as
an error). --check exits 1 on any error, on a model without an mptrain run, or (with
--require-torch) without a PyTorch run, or with a first loss far from ln(vocabulary), or
(with --require-oom) without an out-of-memory line for each implementation that ran.
"""

import argparse
import json
import math
import sys

GIB = 1024.0 ** 3


def load(path):
    lines = []
    with open(path) as f:
        for text in f:
            text = text.strip()
            if not text.startswith("{"):
                continue
            try:
                j = json.loads(text)
            except json.JSONDecodeError:
                continue
            if j.get("bench") == "gpu_train":
                lines.append(j)
    return lines


def gib(v):
    return "-" if v is None else f"{v / GIB:.2f}"


def row(j):
    return [j["model"], j["impl"], str(j["micro_batch"]), f"{j['tokens_per_s']:,.0f}", f"{j['step_ms_median']:.1f}",
            gib(j.get("peak_device_bytes")), gib(j.get("allocator_peak_bytes") or j.get("accounted_bytes")), f"{100 * j['mfu']:.1f}%",
            f"{100 * j['mfu_palm']:.1f}%", f"{j['loss_first']:.3f} -> {j['loss_last']:.3f}", str(j["timed_steps"])]


HEADER = ["model", "impl", "micro-batch", "tokens/s", "step ms", "peak GiB", "alloc GiB", "MFU", "MFU (PaLM)",
          "loss first -> last", "steps"]


def text_table(rows):
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    fmt = lambda r: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def markdown_table(rows):
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def same(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--check", action="store_true")
    p.add_argument("--require-torch", action="store_true")
    p.add_argument("--require-oom", action="store_true", help="the smoke test's out-of-memory fallback ran")
    p.add_argument("--markdown", help="also write the table and ratios as Markdown to this file")
    args = p.parse_args()

    lines = load(args.results)
    errors = []
    models = list(dict.fromkeys(j["model"] for j in lines))
    rows, notes = [], []
    for model in models:
        mine = [j for j in lines if j["model"] == model]
        ok = {impl: {j["micro_batch"]: j for j in mine if j["impl"] == impl and j["status"] == "ok"}
              for impl in ("mptrain", "torch")}
        for impl in ("mptrain", "torch"):
            for b in sorted(ok[impl], reverse=True):
                rows.append(row(ok[impl][b]))
            oom = sorted({j["micro_batch"] for j in mine if j["impl"] == impl and j["status"] == "out_of_memory"},
                         reverse=True)
            if oom:
                notes.append(f"{model} {impl}: out of memory at micro-batch {', '.join(map(str, oom))}")

        # The same model on both sides: at full size (--describe) and in every timed run.
        described = {j["impl"]: j for j in mine if j["status"] == "describe"}
        pairs = [(described.get("mptrain"), described.get("torch"))]
        pairs += [(ok["mptrain"][b], ok["torch"][b]) for b in ok["mptrain"] if b in ok["torch"]]
        for a, b in pairs:
            if not a or not b:
                continue
            for key in ("params", "matmul_params", "tokens_per_step", "flops_per_step"):
                if not same(a[key], b[key]):
                    errors.append(f"{model} (micro-batch {a['micro_batch']}): {key} differs: "
                                  f"mptrain {a[key]} vs torch {b[key]}")
        if described.get("mptrain") and described.get("torch"):
            notes.append(f"{model}: {described['mptrain']['params']:,} parameters on both sides, "
                         f"{described['mptrain']['flops_per_step'] / 1e12:.2f} TFLOP per step at micro-batch "
                         f"{described['mptrain']['micro_batch']}")

        common = sorted(set(ok["mptrain"]) & set(ok["torch"]))
        if common:
            b = common[-1]
            m, t = ok["mptrain"][b], ok["torch"][b]
            mem = (f", peak device memory {m['peak_device_bytes'] / t['peak_device_bytes']:.2f}x"
                   if m.get("peak_device_bytes") and t.get("peak_device_bytes") else "")
            notes.append(f"{model}: mptrain / PyTorch at micro-batch {b}: tokens/s "
                         f"{m['tokens_per_s'] / t['tokens_per_s']:.3f}x{mem}")
        if args.check:
            if not ok["mptrain"]:
                errors.append(f"{model}: no mptrain run finished")
            if args.require_torch and not ok["torch"]:
                errors.append(f"{model}: no PyTorch run finished")
            for impl in ("mptrain", "torch"):
                oom = [j for j in mine if j["impl"] == impl and j["status"] == "out_of_memory"]
                if args.require_oom and ok[impl] and not oom:
                    errors.append(f"{model} {impl}: no out-of-memory line before the run that fitted")
        for impl in ("mptrain", "torch"):
            for j in ok[impl].values():
                vocab = j.get("vocab_size")
                losses = (j["loss_first"], j["loss_last"])
                if not all(math.isfinite(v) for v in losses):
                    errors.append(f"{model} {impl}: loss is not finite: {losses}")
                elif vocab and abs(j["loss_first"] - math.log(vocab)) > 1.5:
                    errors.append(f"{model} {impl}: first loss {j['loss_first']:.3f} is far from "
                                  f"ln({vocab}) = {math.log(vocab):.3f} (random tokens, fresh weights)")
    devices = sorted({j["device"] for j in lines if j.get("status") == "ok"})
    peaks = sorted({j["peak_tflops"] for j in lines if j.get("status") == "ok"})
    head = (f"device: {'; '.join(devices) or '-'}; MFU against {', '.join(f'{p:g}' for p in peaks) or '-'} "
            "TFLOP/s (dense bf16 peak); peak GiB: device memory in use (cudaMemGetInfo) above the start, "
            "alloc GiB: the caching allocator's peak (mptrain's; its account on the CPU) / "
            "torch.cuda.max_memory_allocated")
    print(head)
    print(text_table(rows) if rows else "(no timed run)")
    for n in notes:
        print(n)
    for e in errors:
        print(f"error: {e}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(head + "\n\n" + (markdown_table(rows) if rows else "(no timed run)") + "\n\n")
            f.write("".join(f"- {n}\n" for n in notes))
            f.write("".join(f"- error: {e}\n" for e in errors))
    return 1 if args.check and errors else 0


if __name__ == "__main__":
    sys.exit(main())
