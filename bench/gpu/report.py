#!/usr/bin/env python3
"""The comparison table of bench/gpu/run.sh, from the JSON lines that bench_gpu_train and
torch_gpt.py print (one file, any order; other lines are skipped).

    python3 bench/gpu/report.py RESULTS.jsonl [--check] [--require-torch] [--require-oom]
                                [--require-graphs] [--markdown FILE]

For each model: every timed run of every implementation present (mptrain, mptrain+graphs,
torch; micro-batch, tokens/s, median step, peak device memory, allocated memory, MFU, CUDA
graph nodes), the sizes that did not fit, and at the largest micro-batch each pair ran: each
mptrain variant's tokens/s against PyTorch's, and mptrain+graphs against eager mptrain. All
must describe the same model: equal parameter counts and FLOPs per step at the same
micro-batch (a mismatch is printed as an error). --check exits 1 on any error, on a model
without an mptrain run, or (with --require-torch) without a PyTorch run, or with a loss not
finite or a first loss far from ln(vocabulary), or (with --require-oom) without an
out-of-memory line for mptrain and PyTorch where they ran, or (with --require-graphs) without
an mptrain+graphs run or with one whose graph_nodes is null or 0.
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
    nodes = j.get("graph_nodes")
    return [j["model"], j["impl"], str(j["micro_batch"]), f"{j['tokens_per_s']:,.0f}", f"{j['step_ms_median']:.1f}",
            gib(j.get("peak_device_bytes")), gib(j.get("allocator_peak_bytes") or j.get("accounted_bytes")), f"{100 * j['mfu']:.1f}%",
            f"{100 * j['mfu_palm']:.1f}%", f"{j['loss_first']:.3f} -> {j['loss_last']:.3f}", str(j["timed_steps"]),
            "-" if nodes is None else str(nodes)]


HEADER = ["model", "impl", "micro-batch", "tokens/s", "step ms", "peak GiB", "alloc GiB", "MFU", "MFU (PaLM)",
          "loss first -> last", "steps", "graph nodes"]

# The implementations in the order they are shown; any other name found follows them.
KNOWN_IMPLS = ("mptrain", "mptrain+graphs", "torch")


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


def ratio_note(model, b, a, a_name, r, r_name):
    """a / r at micro-batch b: tokens/s, and peak device memory where both measured it."""
    mem = (f", peak device memory {a['peak_device_bytes'] / r['peak_device_bytes']:.2f}x"
           if a.get("peak_device_bytes") and r.get("peak_device_bytes") else "")
    where = (f" (on different devices: {a['device']} vs {r['device']}; not a speed comparison)"
             if a.get("device") != r.get("device") else "")
    return (f"{model}: {a_name} / {r_name} at micro-batch {b}: tokens/s "
            f"{a['tokens_per_s'] / r['tokens_per_s']:.3f}x{mem}{where}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--check", action="store_true")
    p.add_argument("--require-torch", action="store_true")
    p.add_argument("--require-oom", action="store_true", help="the smoke test's out-of-memory fallback ran")
    p.add_argument("--require-graphs", action="store_true", help="an mptrain+graphs run finished and recorded graphs")
    p.add_argument("--markdown", help="also write the table and ratios as Markdown to this file")
    args = p.parse_args()

    lines = load(args.results)
    errors = []
    models = list(dict.fromkeys(j["model"] for j in lines))
    impls = list(KNOWN_IMPLS) + [i for i in dict.fromkeys(j["impl"] for j in lines) if i not in KNOWN_IMPLS]
    variants = [i for i in impls if i.startswith("mptrain")]  # mptrain, eager or not
    rows, notes = [], []
    for model in models:
        mine = [j for j in lines if j["model"] == model]
        ok = {impl: {j["micro_batch"]: j for j in mine if j["impl"] == impl and j["status"] == "ok"}
              for impl in impls}
        for impl in impls:
            for b in sorted(ok[impl], reverse=True):
                rows.append(row(ok[impl][b]))
            oom = sorted({j["micro_batch"] for j in mine if j["impl"] == impl and j["status"] == "out_of_memory"},
                         reverse=True)
            if oom:
                notes.append(f"{model} {impl}: out of memory at micro-batch {', '.join(map(str, oom))}")

        # The same model everywhere: at full size (--describe) and in every timed run, each
        # against the first implementation that ran the same micro-batch.
        described = {j["impl"]: j for j in mine if j["status"] == "describe"}
        pairs = [("mptrain", described.get("mptrain"), "torch", described.get("torch"))]
        sizes = sorted({b for impl in impls for b in ok[impl]})
        for b in sizes:
            ran = [impl for impl in impls if b in ok[impl]]
            pairs += [(ran[0], ok[ran[0]][b], impl, ok[impl][b]) for impl in ran[1:]]
        for a_name, a, b_name, b in pairs:
            if not a or not b:
                continue
            for key in ("params", "matmul_params", "tokens_per_step", "flops_per_step"):
                if not same(a[key], b[key]):
                    errors.append(f"{model} (micro-batch {a['micro_batch']}): {key} differs: "
                                  f"{a_name} {a[key]} vs {b_name} {b[key]}")
        if described.get("mptrain") and described.get("torch"):
            notes.append(f"{model}: {described['mptrain']['params']:,} parameters on both sides, "
                         f"{described['mptrain']['flops_per_step'] / 1e12:.2f} TFLOP per step at micro-batch "
                         f"{described['mptrain']['micro_batch']}")

        # Ratios at the largest micro-batch both ran: each mptrain variant against PyTorch, and
        # each non-eager variant against eager mptrain.
        for impl in variants:
            common = sorted(set(ok[impl]) & set(ok["torch"]))
            if common:
                b = common[-1]
                notes.append(ratio_note(model, b, ok[impl][b], impl, ok["torch"][b], "PyTorch"))
        for impl in variants[1:]:
            common = sorted(set(ok[impl]) & set(ok["mptrain"]))
            if common:
                b = common[-1]
                notes.append(ratio_note(model, b, ok[impl][b], impl, ok["mptrain"][b], "mptrain"))
        for impl in impls:
            for b, j in sorted(ok[impl].items(), reverse=True):
                if "graph_nodes" not in j:
                    continue
                if j["graph_nodes"] is None:
                    notes.append(f"{model} {impl} (micro-batch {b}): no CUDA graph was recorded; it trained without")
                elif j.get("graph_recorded_at") and j["graph_recorded_at"] > j["warmup_steps"]:
                    warm = j["warmup_steps"]
                    notes.append(f"{model} {impl} (micro-batch {b}): graphs recorded at step {j['graph_recorded_at']}, "
                                 f"after {warm} warm-up step{'' if warm == 1 else 's'}: one timed step includes "
                                 "the recording")

        if args.check:
            if not ok["mptrain"]:
                errors.append(f"{model}: no mptrain run finished")
            if args.require_torch and not ok["torch"]:
                errors.append(f"{model}: no PyTorch run finished")
            if args.require_graphs and not ok["mptrain+graphs"]:
                errors.append(f"{model}: no mptrain+graphs run finished")
            for impl in ("mptrain", "torch"):
                oom = [j for j in mine if j["impl"] == impl and j["status"] == "out_of_memory"]
                if args.require_oom and ok[impl] and not oom:
                    errors.append(f"{model} {impl}: no out-of-memory line before the run that fitted")
            if args.require_graphs:
                for b, j in ok["mptrain+graphs"].items():
                    nodes = j.get("graph_nodes", 1)
                    if nodes is None or nodes <= 0:
                        errors.append(f"{model} mptrain+graphs (micro-batch {b}): graph_nodes is "
                                      f"{json.dumps(nodes)}: no graph was recorded")
        for impl in impls:
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
            "torch.cuda.max_memory_allocated; graph nodes: the CUDA graphs' nodes (forward + backward)")
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
