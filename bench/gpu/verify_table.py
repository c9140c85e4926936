#!/usr/bin/env python3
"""The one table of tests/device/verify.sh: device tests, the loss checks and the benchmark
rows, from the files the stages left in the results folder.

    python3 bench/gpu/verify_table.py RESULTS_DIR [--gpu NAME] [--expect-gpu] [--peak-tflops T]

Reads RESULTS_DIR/device/device_tests.json (gtest's report), device/no_gpu.json (the same
binary run with no GPU visible: the tests that pass without one), loss/*/parity.json
(bench/gpu/torch_parity.py's summaries), loss/*/status (a stage's exit status when it
failed before a summary) and bench/gpu_bench.jsonl (bench/gpu/run.sh's lines). Prints the
table, writes it to RESULTS_DIR/verify_table.txt and the verdict to verify_summary.json.
Exit status: 0 all passed, 1 a device test failed, a loss check failed or did not run, 3 a
GPU was expected and no test that needs one ran (all skipped counts as none).
"""

import argparse
import glob
import json
import os
import sys

GIB = 1024.0 ** 3


def gtest_results(path):
    """{test name: PASS | FAIL | SKIP} from gtest's JSON report, or None when there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    out = {}
    for suite in report.get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("status") == "NOTRUN":
                continue
            result = "FAIL" if t.get("failures") else "SKIP" if t.get("result") == "SKIPPED" else "PASS"
            out[f"{suite['name']}.{t['name']}"] = result
    return out


def bench_rows(path, peak):
    """Per model, the rows at the largest micro-batch where mptrain and PyTorch both ran."""
    if not os.path.exists(path):
        return [], "no benchmark results"
    lines = []
    with open(path) as f:
        for text in f:
            if text.startswith("{"):
                try:
                    j = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if j.get("bench") == "gpu_train" and j.get("status") == "ok":
                    lines.append(j)
    rows = []
    for model in dict.fromkeys(j["model"] for j in lines):
        ok = [j for j in lines if j["model"] == model]
        sizes = {impl: {j["micro_batch"] for j in ok if j["impl"] == impl} for impl in ("mptrain", "mptrain+graphs", "torch")}
        both = sizes["mptrain"] & sizes["torch"]
        mb = max(both) if both else max(j["micro_batch"] for j in ok)
        at = {j["impl"]: j for j in ok if j["micro_batch"] == mb}  # the last line of each wins
        torch_tps = at["torch"]["tokens_per_s"] if "torch" in at else None
        for impl in ("mptrain", "mptrain+graphs", "torch"):
            if impl not in at:
                continue
            j = at[impl]
            mfu = j["flops_per_step"] / (j["step_ms_median"] / 1e3) / (peak * 1e12)
            ratio = "-" if impl == "torch" or torch_tps is None else f"{j['tokens_per_s'] / torch_tps:.2f}"
            peak_mem = j.get("peak_device_bytes")
            rows.append([model, impl, str(mb), f"{j['tokens_per_s']:,.0f}", f"{j['step_ms_median']:.1f}",
                         "-" if peak_mem is None else f"{peak_mem / GIB:.2f}", f"{100 * mfu:.1f}%", ratio])
    return rows, None if rows else "no timed benchmark run"


def table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--gpu", default="none")
    p.add_argument("--expect-gpu", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()
    r = args.results
    out, problems = [], []
    status = 0

    # Device tests.
    tests = gtest_results(os.path.join(r, "device", "device_tests.json"))
    no_gpu = gtest_results(os.path.join(r, "device", "no_gpu.json")) or {}
    passes_without_gpu = {n for n, v in no_gpu.items() if v == "PASS"}
    not_built = os.path.join(r, "device", "not_built")
    if tests is None and os.path.exists(not_built) and not args.expect_gpu:
        device_line = ["device tests", "-", "not built (no CUDA toolkit where this build was made)"]
    elif tests is None:
        device_line = ["device tests", "FAIL", "no report (the binary did not run or was stopped)"]
        problems.append("device tests: no report")
        status = 1
    else:
        count = {k: sum(1 for v in tests.values() if v == k) for k in ("PASS", "FAIL", "SKIP")}
        needing_gpu = [n for n, v in tests.items() if v in ("PASS", "FAIL") and n not in passes_without_gpu]
        detail = (f"{len(tests)} tests: {count['PASS']} passed, {count['FAIL']} failed, {count['SKIP']} skipped; "
                  f"{len(needing_gpu)} that need a GPU ran")
        verdict = "PASS"
        if count["FAIL"]:
            verdict = "FAIL"
            failed = [n for n, v in tests.items() if v == "FAIL"]
            problems.append(f"device tests failed: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}")
            status = 1
        if args.expect_gpu and not needing_gpu:
            verdict = "FAIL"
            problems.append("a GPU was expected but no device test that needs one ran (all skipped)")
            status = status or 3
        if not args.expect_gpu and verdict == "PASS":
            verdict = "PASS (no GPU: skipped)"
        device_line = ["device tests", verdict, detail]
    out.append(device_line)

    # Loss checks.
    stages = sorted(glob.glob(os.path.join(r, "loss", "*", "")))
    if not stages:
        out.append(["loss check", "FAIL", "did not run"])
        problems.append("loss check: did not run")
        status = status or 1
    for stage in stages:
        name = os.path.basename(os.path.dirname(stage))
        summary_path = os.path.join(stage, "parity.json")
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                s = json.load(f)
            worst = s.get("worst_update")
            detail = (f"{s['steps']} steps {s['precision']} on {s['device']}: max |diff| {s['max_abs_diff']:.2e}, "
                      f"max rel {s['max_rel_diff']:.2e} (tolerance {s['rtol']:g}); grad norm rel "
                      f"{s['max_grad_norm_rel_diff']:.1e}")
            if worst:
                detail += f"; worst weight change rel {worst['rel_diff']:.1e}"
            ok = s["status"] == "pass"
            out.append([f"loss check {name}", "PASS" if ok else "FAIL", detail])
            if not ok:
                problems += [f"loss check {name}: {q}" for q in s.get("problems", [])]
                status = status or 1
        else:
            why = "failed before comparing"
            status_path = os.path.join(stage, "status")
            if os.path.exists(status_path):
                with open(status_path) as f:
                    why = f.read().strip() or why
            out.append([f"loss check {name}", "FAIL", why])
            problems.append(f"loss check {name}: {why}")
            status = status or 1

    bench, bench_note = bench_rows(os.path.join(r, "bench", "gpu_bench.jsonl"), args.peak_tflops)
    if bench_note:
        out.append(["benchmarks", "-", bench_note])

    lines = [f"GPU: {args.gpu}", ""]
    lines += table(["check", "result", "detail"], out)
    if bench:
        lines += ["", f"benchmarks (bf16; MFU at {args.peak_tflops:g} TFLOP/s; ratio: tokens/s over torch.compile's "
                      "at the same micro-batch)"]
        lines += table(["model", "impl", "micro-batch", "tokens/s", "step ms", "peak GiB", "MFU", "ratio"], bench)
    lines += [""] + [f"problem: {q}" for q in problems]
    lines.append(f"verdict: {'PASS' if status == 0 else 'FAIL'} (exit status {status})")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(r, "verify_table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(r, "verify_summary.json"), "w") as f:
        json.dump({"status": status, "problems": problems, "checks": out, "benchmarks": bench}, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
