#!/usr/bin/env bash
# Go against the installed prefix: go test of bindings/go (cgo finds the library with
# `#cgo pkg-config: mptrain`; a module with no requirements), then the Go example.
# Usage: go.sh WORK SOURCE_DIR
work=$1
src=$2
source "$src/tests/packaging/lib.bash"
need go golang-go
# Everything go writes stays under WORK; nothing is fetched.
export GOCACHE=$work/go-cache GOPATH=$work/go-path GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=1

(cd "$src/bindings/go" && go test -count=1 -v ./...) >"$work/go-test.log" 2>&1 ||
  fail "go test of bindings/go: $(tail -40 "$work/go-test.log")"
(cd "$src/examples/go" && go build -o "$work/train_go" .) >"$work/go-example.log" 2>&1 ||
  fail "go build of examples/go: $(cat "$work/go-example.log")"
uses_installed_library "$work/train_go"
check_example go "$work/train_go"
echo "go.sh: ok ($(grep -c -- '^--- PASS' "$work/go-test.log") tests, $(go version))"
