#!/usr/bin/env python3
"""Writes the indexed dataset fixtures: PREFIX.bin/PREFIX.idx pairs in Megatron's layout
(megatron/core/datasets/indexed_dataset.py: _IndexWriter and IndexedDatasetBuilder), built
here from the published layout with the standard library only, so that they check the C++
reader and writer against an implementation that shares no code with them.

  python3 make_fixtures.py [OUTDIR]      (default: the directory of this script)

Writes one valid dataset per dtype, an empty dataset, one with sequence modes, a set of
corrupted or truncated ones, and manifest.json describing what each holds and how each
corrupted one is broken. The output is deterministic: the committed fixtures are this
script's output byte for byte.

Layout of PREFIX.idx (little-endian):
  "MMIDIDX\\0\\0", u64 version 1, u8 dtype code, u64 sequence count S, u64 document count D,
  i32[S] sequence lengths, i64[S] sequence pointers (byte offsets into PREFIX.bin),
  i64[D] document indices (0, ..., S), and optionally i8[S] sequence modes.
PREFIX.bin: the tokens of every sequence in order, in the dtype.
"""

import json
import os
import struct
import sys

MAGIC = b"MMIDIDX\x00\x00"

# name: (code, struct format of one token, size in bytes)
DTYPES = {
    "uint8": (1, "B", 1),
    "int8": (2, "b", 1),
    "int16": (3, "h", 2),
    "int32": (4, "i", 4),
    "int64": (5, "q", 8),
    "float64": (6, "d", 8),
    "float32": (7, "f", 4),
    "uint16": (8, "H", 2),
}

# Valid datasets: documents, each a list of sequences, each a list of token ids. Values
# reach the ends of each dtype's range; every one is an integer, floats included.
VALID = {
    "uint8": [[[0, 1, 255], [128]], [[]], [[7, 8], [9], [254, 3]]],
    "int8": [[[-128, 127, 0], [-1]], [[5], []], [[100, -100, 42]]],
    # The second document has no sequences at all (end_document twice in a row).
    "int16": [[[-32768, 32767]], [], [[1, -1, 0], [], [300]], [[-300]]],
    "int32": [[[-2147483648, 2147483647, 0]], [[65536, -65536], []], [[123456789]]],
    # Some of these do not fit in int32: reading them as int32 must fail.
    "int64": [
        [[-9223372036854775808, 9223372036854775807], [0]],
        [[4294967296, -1], []],
        [[2147483647, -2147483648, 2147483648]],
    ],
    "float64": [[[-3, 0, 9007199254740992]], [[65535, 1000000], []], [[-2147483648, 2147483647], [17]]],
    "float32": [[[-7, 0, 16777216]], [[50000], [], [-16777216, 3]], [[65535]]],
    "uint16": [[[0, 65535, 256], [1]], [[]], [[32768, 65534], [2, 3, 4]]],
}

# The dataset every corrupted index starts from: uint16, lengths [3, 1, 2, 1], pointers
# [0, 6, 8, 12], document indices [0, 2, 3, 4], a 14-byte .bin.
BASE = [[[1, 2, 3], [4]], [[5, 6]], [[7]]]


def sequences_of(documents):
    return [seq for doc in documents for seq in doc]


def document_indices_of(documents):
    indices = [0]
    for doc in documents:
        indices.append(indices[-1] + len(doc))
    return indices


def bin_bytes(dtype, documents):
    _, fmt, _ = DTYPES[dtype]
    tokens = [t for seq in sequences_of(documents) for t in seq]
    return struct.pack("<%d%s" % (len(tokens), fmt), *tokens)


def index_fields(dtype, documents):
    """The fields of the index as _IndexWriter.write computes them."""
    code, _, size = DTYPES[dtype]
    lengths = [len(seq) for seq in sequences_of(documents)]
    pointers, at = [], 0
    for length in lengths:
        pointers.append(at)
        at += length * size
    return {
        "magic": MAGIC,
        "version": 1,
        "code": code,
        "lengths": lengths,
        "pointers": pointers,
        "doc_indices": document_indices_of(documents),
        "modes": None,
    }


def index_bytes(fields, seq_count=None, doc_count=None):
    """Serialises the index; the counts default to the array lengths."""
    lengths, pointers, docs = fields["lengths"], fields["pointers"], fields["doc_indices"]
    out = bytearray(fields["magic"])
    out += struct.pack("<Q", fields["version"])
    out += struct.pack("<B", fields["code"])
    out += struct.pack("<Q", len(lengths) if seq_count is None else seq_count)
    out += struct.pack("<Q", len(docs) if doc_count is None else doc_count)
    out += struct.pack("<%di" % len(lengths), *lengths)
    out += struct.pack("<%dq" % len(pointers), *pointers)
    out += struct.pack("<%dq" % len(docs), *docs)
    if fields["modes"] is not None:
        out += struct.pack("<%db" % len(fields["modes"]), *fields["modes"])
    return bytes(out)


def write_pair(outdir, name, idx, data):
    with open(os.path.join(outdir, name + ".idx"), "wb") as f:
        f.write(idx)
    with open(os.path.join(outdir, name + ".bin"), "wb") as f:
        f.write(data)


def corrupted():
    """(name, description, fails, idx bytes, bin bytes, extra manifest fields) of each broken dataset."""
    base_fields = index_fields("uint16", BASE)
    base_idx = index_bytes(base_fields)
    base_bin = bin_bytes("uint16", BASE)
    out = []

    def changed(**changes):
        fields = dict(base_fields)
        for key, value in changes.items():
            fields[key] = value
        return fields

    def broken(name, what, idx, data=base_bin, fails="open", **extra):
        out.append((name, what, fails, idx, data, extra))

    broken("bad_magic", "magic is MMIDIDY", index_bytes(changed(magic=b"MMIDIDY\x00\x00")))
    broken("bad_version", "version 2", index_bytes(changed(version=2)))
    broken("bad_dtype", "dtype code 9", index_bytes(changed(code=9)))
    broken("idx_shorter_than_header", "the .idx is the first 20 bytes of the header", base_idx[:20])
    broken("seq_count_too_large", "sequence count 1000000", index_bytes(base_fields, seq_count=1000000))
    broken("seq_count_overflow", "sequence count 2^64 - 1", index_bytes(base_fields, seq_count=2**64 - 1))
    broken("doc_count_overflow", "document count 2^63", index_bytes(base_fields, doc_count=2**63))
    broken("doc_count_zero", "document count 0 and no document indices",
           index_bytes(changed(doc_indices=[]), doc_count=0))
    broken("truncated_idx", "the last 4 bytes of the .idx are cut off", base_idx[:-4])
    broken("trailing_bytes", "3 bytes follow the document indices (4 would be sequence modes)",
           base_idx + b"\x00\x00\x00")
    broken("negative_length", "sequence_lengths[1] = -1", index_bytes(changed(lengths=[3, -1, 2, 1])))
    broken("pointer_past_end", "sequence_pointers[3] = 4096",
           index_bytes(changed(pointers=[0, 6, 8, 4096])))
    broken("pointer_not_prefix_sum", "sequence_pointers[2] = 10, inside the .bin but not 8",
           index_bytes(changed(pointers=[0, 6, 10, 12])))
    broken("doc_indices_not_starting_at_zero", "document_indices = [1, 2, 3, 4]",
           index_bytes(changed(doc_indices=[1, 2, 3, 4])))
    broken("doc_indices_decreasing", "document_indices = [0, 2, 1, 4]",
           index_bytes(changed(doc_indices=[0, 2, 1, 4])))
    broken("doc_indices_not_ending_at_count", "document_indices = [0, 2, 3, 3]",
           index_bytes(changed(doc_indices=[0, 2, 3, 3])))
    broken("truncated_bin", "the last token of the .bin is cut off", base_idx, base_bin[:-2])
    broken("bin_too_long", "the .bin has one token more than the index says", base_idx, base_bin + b"\x08\x00")

    # Valid indices whose tokens are not integer ids: reading them fails, opening does not.
    docs = [[[1, 2]], [[1.5, 3]]]
    broken("float_token_fraction", "float32 token 1.5 at sequence 1, token 0",
           index_bytes(index_fields("float32", docs)), bin_bytes("float32", docs), fails="read",
           sequence=1, token=0)
    docs = [[[4, 1e300]]]
    broken("float_token_too_large", "float64 token 1e300 at sequence 0, token 1",
           index_bytes(index_fields("float64", docs)), bin_bytes("float64", docs), fails="read",
           sequence=0, token=1)
    docs = [[[4], [5, 6, float("nan")]]]
    broken("float_token_nan", "float32 NaN at sequence 1, token 2",
           index_bytes(index_fields("float32", docs)), bin_bytes("float32", docs), fails="read",
           sequence=1, token=2)
    return out


def main(argv):
    outdir = argv[1] if len(argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(outdir, exist_ok=True)
    manifest = {"valid": [], "corrupt": []}

    def valid(name, dtype, documents, modes=None):
        fields = index_fields(dtype, documents)
        fields["modes"] = modes
        write_pair(outdir, name, index_bytes(fields), bin_bytes(dtype, documents))
        manifest["valid"].append({"name": name, "dtype": dtype, "documents": documents,
                                  "sequence_modes": modes is not None})

    for dtype, documents in VALID.items():
        valid("valid_" + dtype, dtype, documents)
    valid("valid_empty", "uint16", [])
    # Multimodal data appends one int8 mode per sequence; readers skip them.
    valid("valid_sequence_modes", "int32", [[[10, 11], [12]], [[13]]], modes=[0, 1, -1])

    for name, what, fails, idx, data, extra in corrupted():
        write_pair(outdir, name, idx, data)
        entry = {"name": name, "what": what, "fails": fails}
        entry.update(extra)
        manifest["corrupt"].append(entry)

    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)
