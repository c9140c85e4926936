#!/usr/bin/env python3
"""Writes reference.json: GPT dataset indices, blends and splits computed the way
Megatron-LM computes them (megatron/core/datasets: gpt_dataset.py, helpers.cpp,
blended_dataset.py, blended_megatron_dataset_builder.py, blended_megatron_dataset_config.py),
restated here with numpy so that the C++ tests compare against an independent
implementation. Run: python3 make_reference.py  (needs numpy; writes beside this file)."""

import json
import math
import os

import numpy

ADD_EXTRA_TOKEN = 1
SURPLUS = 0.005


# --- numpy's generator, as Megatron draws from it --------------------------------------------

def rng_reference():
    cases = []
    for seed in (1234, 42):
        for n in (10, 1000):
            a = numpy.arange(n, dtype=numpy.int64)
            numpy.random.RandomState(seed).shuffle(a)
            cases.append({"kind": "shuffle", "seed": seed, "n": n, "expected": a.tolist()})
    # Legacy randint(0, m + 1) draws exactly as random_interval(m) does (masked rejection,
    # 32-bit draws up to 2^32 - 1, 64-bit draws above), so it exposes interval() for bounds
    # that no shuffle reaches. One generator serves a mixed run of bounds.
    bounds = [0, 1, 6, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 12345, 2**62 + 5, 2**63 - 1, 2**64 - 1, 1000]
    for seed in (1234, 42):
        rs = numpy.random.RandomState(seed)
        draws = []
        for m in bounds:
            for _ in range(3):
                draws.append(int(rs.randint(0, m + 1, dtype=numpy.uint64)))
        cases.append({"kind": "interval", "seed": seed, "bounds": [str(b) for b in bounds], "draws_per_bound": 3,
                      "expected": [str(d) for d in draws]})
    # Self-check of that equivalence on the 32-bit path: a Fisher-Yates by randint equals shuffle.
    for seed in (1234, 42):
        a = numpy.arange(1000)
        numpy.random.RandomState(seed).shuffle(a)
        b = list(range(1000))
        rs = numpy.random.RandomState(seed)
        for i in range(999, 0, -1):
            j = int(rs.randint(0, i + 1, dtype=numpy.int64))
            b[i], b[j] = b[j], b[i]
        assert a.tolist() == b, "randint/shuffle equivalence does not hold"
    return cases


# --- GPT dataset indices (gpt_dataset.py, helpers.cpp::build_sample_idx) -----------------------

def num_epochs_for(tokens_per_epoch, num_samples, seq_length):
    epochs, tokens = 1, tokens_per_epoch
    if num_samples is None:
        return epochs
    requested = num_samples * seq_length + ADD_EXTRA_TOKEN
    while tokens < requested:
        epochs += 1
        tokens += tokens_per_epoch
    return epochs


def document_index(documents, num_epochs, rs, separate_final_epoch):
    if not separate_final_epoch or num_epochs == 1:
        index = numpy.mgrid[0:num_epochs, 0:len(documents)][1]
        index[:] = documents
        index = index.reshape(-1).astype(numpy.int32)
        rs.shuffle(index)
        return index
    first = document_index(documents, num_epochs - 1, rs, False)
    last = document_index(documents, 1, rs, False)
    return numpy.concatenate((first, last))


def sample_index(sizes, doc_index, seq_length, num_epochs, tokens_per_epoch):
    num_samples = (num_epochs * tokens_per_epoch - ADD_EXTRA_TOKEN) // seq_length
    out = numpy.zeros((num_samples + 1, 2), dtype=numpy.int64)
    pos, offset = 0, 0
    for j in range(1, num_samples + 1):
        remaining = seq_length + ADD_EXTRA_TOKEN
        while remaining != 0:
            length = int(sizes[doc_index[pos]]) - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - ADD_EXTRA_TOKEN
                remaining = 0
            else:
                if pos == len(doc_index) - 1:
                    assert j == num_samples
                    offset = int(sizes[doc_index[pos]]) - ADD_EXTRA_TOKEN
                    break
                pos += 1
                offset = 0
        out[j] = (pos, offset)
    return out


def shuffle_index(num_samples, total_size, rs):
    dtype = numpy.uint32 if total_size < numpy.iinfo(numpy.uint32).max - 1 else numpy.int64
    first = numpy.arange(0, num_samples, dtype=dtype)
    rs.shuffle(first)
    if num_samples == total_size:
        return first
    last = numpy.arange(num_samples, total_size, dtype=dtype)
    rs.shuffle(last)
    return numpy.concatenate((first, last))


def gpt_indices(sizes, begin, end, seq_length, num_samples, seed):
    sizes = numpy.asarray(sizes, dtype=numpy.int32)
    documents = numpy.arange(begin, end, dtype=numpy.int32)
    tokens_per_epoch = int(numpy.sum(sizes[documents]))
    epochs = num_epochs_for(tokens_per_epoch, num_samples, seq_length)
    separate = False
    if epochs > 1:
        sans_final = ((epochs - 1) * tokens_per_epoch - ADD_EXTRA_TOKEN) // seq_length
        from_final = num_samples - sans_final
        per_epoch = (tokens_per_epoch - ADD_EXTRA_TOKEN) // seq_length
        assert 0 <= from_final <= per_epoch + 1
        separate = from_final < int(0.80 * per_epoch)
    rs = numpy.random.RandomState(seed)
    doc = document_index(documents, epochs, rs, separate)
    smp = sample_index(sizes, doc, seq_length, epochs, tokens_per_epoch)
    n = smp.shape[0] - 1
    shf = shuffle_index(sans_final if separate else n, n, rs)
    return {"document_index": doc, "sample_index": smp, "shuffle_index": shf, "num_epochs": epochs,
            "tokens_per_epoch": tokens_per_epoch, "separate_final_epoch": separate}


def gpt_sample(sizes, tokens_of, idx, i, seq_length):
    """_query_document_sample_shuffle_indices: the tokens of sample i."""
    s = int(idx["shuffle_index"][i])
    (p0, o0), (p1, o1) = idx["sample_index"][s], idx["sample_index"][s + 1]
    doc = idx["document_index"]
    if p0 == p1:
        parts = [tokens_of(int(doc[p0]))[o0:o1 + ADD_EXTRA_TOKEN]]
    else:
        parts = [tokens_of(int(doc[p0]))[o0:]]
        parts += [tokens_of(int(doc[p])) for p in range(p0 + 1, p1)]
        parts += [tokens_of(int(doc[p1]))[:o1 + ADD_EXTRA_TOKEN]]
    out = [t for part in parts for t in part]
    assert len(out) == seq_length + ADD_EXTRA_TOKEN
    return out


def lengths_from(seed, n, low, high):
    return numpy.random.RandomState(seed).randint(low, high + 1, size=n).tolist()


def gpt_cases():
    base = lengths_from(7, 40, 0, 30)
    zeros_ones = [0, 1, 1, 0, 0, 1, 5, 0, 1, 1, 0, 2, 0, 1, 0, 0, 3, 1, 1, 0, 1, 0, 7, 1]
    # With 16-token samples: two epochs of `base` give two_epochs samples, one gives per_epoch.
    two_epochs = (2 * sum(base) - ADD_EXTRA_TOKEN) // 16
    per_epoch = (sum(base) - ADD_EXTRA_TOKEN) // 16
    specs = [
        ("one_epoch", base, 0, 40, 16, None, 1234),
        ("one_epoch_zero_samples", base, 0, 40, 16, 0, 1234),
        ("epochs_separate_final", base, 0, 40, 16, two_epochs + 3, 1234),
        ("epochs_joined_final", base, 0, 40, 16, two_epochs + int(0.9 * per_epoch), 1234),
        ("epochs_separate_final_seed42", base, 0, 40, 16, two_epochs + 3, 42),
        ("subrange", lengths_from(11, 50, 1, 20), 10, 35, 8, 60, 1234),
        ("zero_and_one_lengths", zeros_ones, 0, len(zeros_ones), 3, 25, 1234),
        ("lengths_equal_seq", [8] * 12, 0, 12, 8, 30, 42),
        ("lengths_equal_seq_plus_one", [9] * 12, 0, 12, 8, 30, 42),
        ("ends_on_document_ends", [4, 5, 4, 4, 5, 1, 3, 9], 0, 8, 4, 40, 1234),
        ("many_epochs", [3, 0, 5, 2], 0, 4, 2, 200, 1234),
    ]
    cases = []
    for name, lengths, begin, end, seq, num_samples, seed in specs:
        idx = gpt_indices(lengths, begin, end, seq, num_samples, seed)
        cases.append({
            "name": name, "lengths": list(map(int, lengths)), "begin": begin, "end": end, "seq_length": seq,
            "num_samples": num_samples, "seed": seed,
            "num_epochs": idx["num_epochs"], "tokens_per_epoch": idx["tokens_per_epoch"],
            "separate_final_epoch": bool(idx["separate_final_epoch"]),
            "document_index": idx["document_index"].tolist(),
            "sample_index": idx["sample_index"].reshape(-1).tolist(),
            "shuffle_index": idx["shuffle_index"].astype(numpy.int64).tolist(),
        })
    by_name = {c["name"]: c for c in cases}
    assert by_name["epochs_separate_final"]["separate_final_epoch"]
    assert by_name["epochs_separate_final"]["num_epochs"] == 3
    assert not by_name["epochs_joined_final"]["separate_final_epoch"]
    assert by_name["epochs_joined_final"]["num_epochs"] == 3
    assert by_name["zero_and_one_lengths"]["num_epochs"] > 1
    assert by_name["many_epochs"]["separate_final_epoch"] or by_name["many_epochs"]["num_epochs"] > 10
    return cases


# --- blending (blended_dataset.py, helpers.cpp::build_blending_indices) --------------------------

def normalize(weights):
    w = numpy.array(weights, dtype=numpy.float64)
    return (w / numpy.sum(w)).tolist()


def blending_indices(weights, size):
    dataset_index = numpy.zeros(size, dtype=numpy.int16)
    dataset_sample_index = numpy.zeros(size, dtype=numpy.int64)
    counts = [0] * len(weights)
    for s in range(size):
        target = max(float(s), 1.0)
        errors = [weights[i] * target - counts[i] for i in range(len(weights))]
        best = 0
        for i in range(1, len(weights)):
            if errors[i] > errors[best]:
                best = i
        dataset_index[s] = best
        dataset_sample_index[s] = counts[best]
        counts[best] += 1
    return dataset_index, dataset_sample_index


def sizes_per_dataset(normalized_weights, size, surplus=0.0):
    return [int(math.ceil(math.ceil(size * w) * (1 + surplus))) for w in normalized_weights]


def blend_cases():
    cases = []
    for name, raw, size in [("two", [30, 70], 200), ("three", [1, 2, 3.5], 150),
                            ("twelve", [0.3, 1, 2, 0.7, 5, 0.01, 3, 3, 1.5, 0.2, 9, 4.4], 300),
                            ("thirds", [1, 1, 1], 100),
                            ("twelve_pairwise", [0.1] * 12, 120)]:
        w = normalize(raw)
        di, dsi = blending_indices(w, size)
        cases.append({"name": name, "raw_weights": raw, "size": size, "normalized": w,
                      "dataset_index": di.tolist(), "dataset_sample_index": dsi.tolist()})
    # numpy.sum adds twelve weights pairwise, not left to right: the quotients differ.
    sequential = 0.0
    for x in [0.1] * 12:
        sequential += x
    assert float(numpy.sum(numpy.array([0.1] * 12))) != sequential
    sizes = []
    for raw, size, surplus in [([30, 70], 1000, SURPLUS), ([30, 70], 1000, 0.0), ([1, 2, 3.5], 997, SURPLUS),
                               ([1, 2, 3.5], 997, 0.0), ([1, 1, 1], 10, SURPLUS), ([0.5, 0.5], 3, 0.0)]:
        w = normalize(raw)
        sizes.append({"normalized": w, "size": size, "surplus": surplus, "expected": sizes_per_dataset(w, size, surplus)})
    return cases, sizes


# --- splits (parse_and_normalize_split, convert_split_vector_to_split_matrix) -----------------

def split_ranges(split, n):
    import re
    vector = list(map(float, re.findall(r"[.0-9]+", split)))
    vector = normalize(vector + [0.0] * (3 - len(vector)))
    bookends = [0]
    for w in vector:
        bookends.append(bookends[-1] + w)
    out = []
    for i in range(3):
        if bookends[i + 1] <= bookends[i]:
            out.append(None)
        else:
            out.append([int(round(bookends[i] * float(n))), int(round(bookends[i + 1] * float(n)))])
    return out


def split_cases():
    cases = []
    for split, n in [("969,30,1", 1000), ("969,30,1", 17), ("969,30,1", 1), ("1,1,1", 10), ("100,0,0", 7),
                     ("90,10,0", 25), ("1,1", 5), ("1,1", 7), ("1,3", 10), ("1,1,2", 2), ("1,1,2", 6),
                     ("0,1,0", 9), ("98,2", 50), ("33,33,34", 1001)]:
        cases.append({"split": split, "n": n, "expected": split_ranges(split, n)})
    return cases


# --- the builder end to end (blended_megatron_dataset_builder.py) -----------------------------

def token(dataset, seq, k):
    return (dataset * 100003 + seq * 1009 + k * 7) % 60000


def builder_cases():
    datasets = [lengths_from(21, 60, 0, 25), lengths_from(22, 45, 1, 40), lengths_from(23, 80, 0, 12)]
    specs = [
        ("single", [0], None, "90,8,2", 8, 1234, [120, 15, 0]),
        ("weighted_two", [0, 1], [30, 70], "90,8,2", 8, 1234, [200, 20, 0]),
        ("weighted_three", [0, 1, 2], [1, 2, 3.5], "80,15,5", 6, 42, [150, 30, 7]),
        ("unweighted_two", [0, 2], None, "90,10,0", 8, 1234, [70, 10, 0]),
    ]
    cases = []
    for name, members, raw, split, seq, seed, num_samples in specs:
        splits = []
        for s in range(3):
            n = num_samples[s]
            if n == 0:
                splits.append(None)
                continue
            sources = []
            for m in members:
                lengths = datasets[m]
                begin, end = split_ranges(split, len(lengths))[s]
                sources.append((m, lengths, begin, end))

            def sample_fn(src, want):
                m, lengths, begin, end = src
                idx = gpt_indices(lengths, begin, end, seq, want, seed)
                tokens_of = lambda q, m=m, lengths=lengths: [token(m, q, k) for k in range(lengths[q])]
                count = idx["sample_index"].shape[0] - 1
                return count, (lambda i: gpt_sample(lengths, tokens_of, idx, i, seq))

            if len(members) == 1 and raw is None:
                count, get = sample_fn(sources[0], n)
                samples = [get(i) for i in range(count)]
            elif raw is not None:
                w = normalize(raw)
                target = sizes_per_dataset(w, n)
                build_for = sizes_per_dataset(w, n, SURPLUS)
                getters = [sample_fn(src, build_for[i])[1] for i, src in enumerate(sources)]
                di, dsi = blending_indices(normalize(w), sum(target))
                samples = [getters[di[i]](int(dsi[i])) for i in range(len(di))]
            else:
                built = [sample_fn(src, None) for src in sources]
                counts = [c for c, _ in built]
                assert n <= sum(counts)
                di, dsi = blending_indices(normalize(counts), n)
                samples = [built[di[i]][1](int(dsi[i])) for i in range(len(di))]
            splits.append(samples)
        cases.append({"name": name, "members": members, "weights": raw, "split": split, "seq_length": seq,
                      "seed": seed, "num_samples": num_samples, "samples": splits})
    return {"datasets": datasets, "token": "(dataset * 100003 + sequence * 1009 + position * 7) % 60000",
            "cases": cases}


# --- .npy files as numpy.save writes them ----------------------------------------------------

def npy_cases():
    import io
    cases = []
    for descr, shape, values in [("<i8", [3, 2], [0, 0, 3, 7, 9, 1]), ("<i2", [3], [1, -2, 3]),
                                 ("<i4", [1000], list(range(1000))), ("<u4", [0], []),
                                 ("<i4", [123456, 2], None)]:
        if values is None:  # a header only: its shape is too large to store
            header = io.BytesIO()
            numpy.lib.format.write_array_header_1_0(
                header, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
            cases.append({"descr": descr, "shape": shape, "header_hex": header.getvalue().hex()})
            continue
        buf = io.BytesIO()
        numpy.save(buf, numpy.array(values, dtype=numpy.dtype(descr)).reshape(shape))
        data = buf.getvalue()
        offset = len(data) - len(values) * numpy.dtype(descr).itemsize
        cases.append({"descr": descr, "shape": shape, "values": values, "header_hex": data[:offset].hex(),
                      "file_bytes": len(data)})
    return cases


def main():
    blends, sizes = blend_cases()
    reference = {
        "numpy_version": numpy.__version__,
        "rng": rng_reference(),
        "gpt": gpt_cases(),
        "blend": blends,
        "blend_sizes": sizes,
        "split": split_cases(),
        "builder": builder_cases(),
        "npy": npy_cases(),
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.json")
    with open(path, "w") as f:
        json.dump(reference, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
