#!/usr/bin/env bash
# mptrain preprocess and dataset-info: document and token counts computed here with the
# shell's own tools, the .bin holding the input bytes, --append-eod, JSON lines and their
# errors, and an existing dataset kept unless --overwrite is given.
# Usage: preprocess.sh MPTRAIN SOURCE_DIR
set -u
export LC_ALL=C  # lengths in bytes
mptrain=$1
src=$2
source "$src/tests/cli/lib/common.bash"

# info PREFIX KEY: the value dataset-info prints for KEY.
info() {
  "$mptrain" dataset-info "$1" --scan >"$tmp/info" 2>"$tmp/info_err" ||
    fail "dataset-info $1 exited $?: $(cat "$tmp/info_err")"
  sed -n "s/^$2: //p" "$tmp/info"
}
expect() {  # expect WHAT GOT WANT
  [[ $2 == "$3" ]] || fail "$1: got '$2', expected '$3'"$'\n'"$(cat "$tmp/info" 2>/dev/null)"
}
largest_byte() { od -An -tu1 -v "$@" | tr -s ' ' '\n' | grep -v '^$' | sort -n | tail -1; }

# Plain text: two paragraphs, a non-ASCII character, an empty line in the middle of the file.
printf 'The first line.\nA second line, caf\xc3\xa9.\n\nAfter a blank line.\n\n\nLast paragraph, one line.\n' >"$tmp/a.txt"
printf 'Another file\nwith two lines\n' >"$tmp/b.txt"
bytes_a=$(wc -c <"$tmp/a.txt")
bytes_b=$(wc -c <"$tmp/b.txt")

# --docs file (the default): one document per file, every byte a token.
run 0 preprocess --input "$tmp/a.txt" --input "$tmp/b.txt" --output-prefix "$tmp/files"
grep -q "preprocess: 2 documents, $((bytes_a + bytes_b)) tokens, dtype uint16" "$tmp/out" ||
  fail "file summary: $(cat "$tmp/out")"
grep -qF "$tmp/files.bin" "$tmp/out" || fail "the summary does not name the output: $(cat "$tmp/out")"
expect "files: documents" "$(info "$tmp/files" documents)" 2
expect "files: sequences" "$(info "$tmp/files" sequences)" 2
expect "files: tokens" "$(info "$tmp/files" tokens)" $((bytes_a + bytes_b))
expect "files: dtype" "$(info "$tmp/files" dtype)" uint16
expect "files: bin bytes" "$(info "$tmp/files" "bin bytes")" $((2 * (bytes_a + bytes_b)))
expect "files: idx bytes" "$(info "$tmp/files" "idx bytes")" $((34 + 2 * 12 + 3 * 8))
expect "files: lengths" "$(info "$tmp/files" "sequence length")" \
  "$(printf 'min %d, mean %d.%02d, max %d' $((bytes_a < bytes_b ? bytes_a : bytes_b)) \
    $(((bytes_a + bytes_b) / 2)) $(((bytes_a + bytes_b) % 2 * 50)) $((bytes_a > bytes_b ? bytes_a : bytes_b)))"
expect "files: max token" "$(info "$tmp/files" "max token")" "$(largest_byte "$tmp/a.txt" "$tmp/b.txt")"
# The .bin is the input bytes, each widened to a little-endian uint16.
[[ $(od -An -tu2 -v "$tmp/files.bin" | tr -s ' \n' ' ') == $(cat "$tmp/a.txt" "$tmp/b.txt" | od -An -tu1 -v | tr -s ' \n' ' ') ]] ||
  fail "files.bin does not hold the input bytes"

# --append-eod: one more token (256) per document.
run 0 preprocess --input "$tmp/a.txt" --input "$tmp/b.txt" --output-prefix "$tmp/eod" --append-eod
expect "eod: tokens" "$(info "$tmp/eod" tokens)" $((bytes_a + bytes_b + 2))
expect "eod: max token" "$(info "$tmp/eod" "max token")" 256

# --docs line: every non-empty line, without its newline.
lines=$(grep -c -v '^$' "$tmp/a.txt")
line_tokens=$(tr -d '\n' <"$tmp/a.txt" | wc -c)
run 0 preprocess --input "$tmp/a.txt" --output-prefix "$tmp/lines" --docs line
expect "lines: documents" "$(info "$tmp/lines" documents)" "$lines"
expect "lines: tokens" "$(info "$tmp/lines" tokens)" "$line_tokens"
grep -q "skipped 3 empty documents" "$tmp/out" || fail "empty lines not reported: $(cat "$tmp/out")"
run 0 preprocess --input "$tmp/a.txt" --output-prefix "$tmp/lines_eod" --docs line --append-eod
expect "lines + eod: tokens" "$(info "$tmp/lines_eod" tokens)" $((line_tokens + lines))

# --docs paragraph: blank-line separated, inner newlines kept (awk's paragraph mode).
paragraphs=$(awk 'BEGIN { RS = "" } END { print NR }' "$tmp/a.txt")
paragraph_tokens=$(awk 'BEGIN { RS = "" } { n += length($0) } END { print n }' "$tmp/a.txt")
[[ $paragraphs == 3 ]] || fail "the test text should have 3 paragraphs, awk counts $paragraphs"
run 0 preprocess --input "$tmp/a.txt" --output-prefix "$tmp/paras" --docs paragraph --append-eod
expect "paragraphs: documents" "$(info "$tmp/paras" documents)" "$paragraphs"
expect "paragraphs: tokens" "$(info "$tmp/paras" tokens)" $((paragraph_tokens + paragraphs))

# JSON lines: the "text" field of each object; an empty text is skipped, other fields ignored.
{
  printf '{"text": "Hello, world.", "id": 1}\n'
  printf '\n'
  printf '{"id": 2, "text": "caf\\u00e9 \\"quoted\\"\\n"}\n'
  printf '{"text": ""}\n'
  printf '{"text": "%s"}\n' "$(printf 'x%.0s' {1..300})"
} >"$tmp/docs.jsonl"
json_tokens=$((13 + 15 + 300))  # "café" is 5 bytes, the escapes \" and \n one each
run 0 preprocess --input "$tmp/docs.jsonl" --json-key text --output-prefix "$tmp/json" --append-eod
expect "json: documents" "$(info "$tmp/json" documents)" 3
expect "json: tokens" "$(info "$tmp/json" tokens)" $((json_tokens + 3))
expect "json: lengths" "$(info "$tmp/json" "sequence length")" "min 14, mean 110.33, max 301"

# Malformed JSON lines: exit 1 naming FILE:LINE, and no dataset (not even a temporary) left.
check_bad_json() {  # check_bad_json LINE_NUMBER MESSAGE_PART CONTENT
  printf '{"text": "fine"}\n%s' "$3" >"$tmp/malformed.jsonl"
  run 1 preprocess --input "$tmp/malformed.jsonl" --json-key text --output-prefix "$tmp/bad"
  grep -qF "$tmp/malformed.jsonl:$1" "$tmp/err" || fail "no FILE:LINE ($tmp/malformed.jsonl:$1) in: $(cat "$tmp/err")"
  grep -qF "$2" "$tmp/err" || fail "no '$2' in: $(cat "$tmp/err")"
  compgen -G "$tmp/bad.*" >/dev/null && fail "a failed preprocess left files: $(ls "$tmp"/bad.*)"
  return 0
}
check_bad_json 2 'not valid JSON' $'{"text": "unterminated\n'
check_bad_json 3 'no field "text"' $'\n{"body": "x"}\n'
check_bad_json 2 'is a JSON number' $'{"text": 5}\n'
check_bad_json 2 'expected a JSON object' $'["text"]\n'

# An existing dataset is kept unless --overwrite is given.
cp "$tmp/files.bin" "$tmp/keep.bin"
cp "$tmp/files.idx" "$tmp/keep.idx"
run 1 preprocess --input "$tmp/b.txt" --output-prefix "$tmp/files"
grep -q -- "--overwrite" "$tmp/err" || fail "the refusal does not mention --overwrite: $(cat "$tmp/err")"
cmp -s "$tmp/files.bin" "$tmp/keep.bin" && cmp -s "$tmp/files.idx" "$tmp/keep.idx" ||
  fail "a refused preprocess changed the existing dataset"
run 0 preprocess --input "$tmp/b.txt" --output-prefix "$tmp/files" --overwrite
expect "overwritten: tokens" "$(info "$tmp/files" tokens)" "$bytes_b"

# Errors: a missing input or dataset is 1, a wrong command line 2.
run 1 preprocess --input "$tmp/no-such.txt" --output-prefix "$tmp/x"
grep -qF "$tmp/no-such.txt" "$tmp/err" || fail "missing input not named: $(cat "$tmp/err")"
run 1 dataset-info "$tmp/no-such"
grep -qF "$tmp/no-such.idx" "$tmp/err" || fail "missing dataset not named: $(cat "$tmp/err")"
printf 'garbage, not an index at all, longer than the header' >"$tmp/junk.idx"
: >"$tmp/junk.bin"
run 1 dataset-info "$tmp/junk"
grep -q "junk.idx: bad magic" "$tmp/err" || fail "corrupt index message: $(cat "$tmp/err")"
run 2 preprocess --output-prefix "$tmp/x"
grep -q -- "--input" "$tmp/err" || fail "missing --input message: $(cat "$tmp/err")"
run 2 preprocess --input "$tmp/a.txt"
run 2 preprocess --input "$tmp/a.txt" --output-prefix "$tmp/x" --frobnicate
grep -q "unknown option '--frobnicate'" "$tmp/err" || fail "unknown option message: $(cat "$tmp/err")"
run 2 preprocess --input "$tmp/a.txt" --output-prefix "$tmp/x" --docs sentence
run 2 dataset-info
run 2 dataset-info "$tmp/files" --input "$tmp/a.txt"
[[ -e $tmp/x.bin || -e $tmp/x.idx ]] && fail "a rejected command wrote a dataset"
# The help text documents both commands and every option.
run 0 --help
for word in "mptrain preprocess" "mptrain dataset-info" --input --output-prefix --json-key --docs paragraph \
            --append-eod --overwrite --scan; do
  grep -qF -- "$word" "$tmp/out" || fail "--help does not mention '$word'"
done
echo "preprocess.sh: ok"
