package mptrain

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// Place is this process's place in a training job.
type Place struct {
	Rank, WorldSize, LocalRank int
}

// Options say what a Context is created from: exactly one of RecipePath and RecipeTOML,
// then Overrides ("section.key=value") applied in order.
type Options struct {
	RecipePath string
	RecipeTOML string // errors name it "<string>"
	Overrides  []string

	// Log receives each log line (without its newline) instead of stderr, inside the
	// library call that logs, on that call's goroutine. It must not call into the same
	// Context.
	Log      func(level LogLevel, message string)
	LogLevel LogLevel

	// Place is nil to read it from the launcher's environment (torchrun, SLURM or Open
	// MPI), else rank 0 of 1.
	Place *Place
	// MasterAddr and MasterPort locate rank 0's rendezvous store; "" and 0 mean
	// MASTER_ADDR and MASTER_PORT from the environment.
	MasterAddr string
	MasterPort int
}

// Context is a loaded recipe from which a Model is built.
type Context struct {
	mu   sync.Mutex // the library requires calls on one context to be serialised
	c    *C.mpt_context
	sink *logSink
	log  cgo.Handle // 0 without a callback
	// The live model's handle, destroyed with the context. A C pointer, not the *Model:
	// a cycle between two finalized objects would never be collected.
	model *C.mpt_model
}

// cStrings copies strings into C memory; free releases them.
type cStrings []*C.char

func (s *cStrings) add(text string) *C.char {
	p := C.CString(text)
	*s = append(*s, p)
	return p
}

func (s cStrings) free() {
	for _, p := range s {
		C.free(unsafe.Pointer(p))
	}
}

// placeValue converts one field of the job's place for C; the library checks the rest.
func placeValue(name string, v int) (C.int32_t, error) {
	if v < 0 || v > math.MaxInt32 {
		return 0, newError(StatusInvalidArgument, fmt.Sprintf("Options: %s = %d is out of range", name, v))
	}
	return C.int32_t(v), nil
}

// NewContext loads the recipe and applies the overrides. The recipe is validated as a whole
// when a model is built (or ConfigTOML is called). The error is an *Error.
func NewContext(opts Options) (*Context, error) {
	var strs cStrings
	defer strs.free()
	var o C.mpt_init_options
	C.mpt_init_options_init(&o)
	if opts.RecipePath != "" {
		o.recipe_path = strs.add(opts.RecipePath)
	}
	if opts.RecipeTOML != "" {
		o.recipe_toml = strs.add(opts.RecipeTOML)
	}
	if n := len(opts.Overrides); n > 0 {
		// C memory: Go memory passed to C may not hold pointers, not even to C strings.
		arr := unsafe.Slice((**C.char)(C.malloc(C.size_t(n)*C.size_t(unsafe.Sizeof((*C.char)(nil))))), n)
		defer C.free(unsafe.Pointer(&arr[0]))
		for i, ov := range opts.Overrides {
			arr[i] = strs.add(ov)
		}
		o.overrides = &arr[0]
		o.num_overrides = C.size_t(n)
	}
	o.log_level = opts.LogLevel.cLogLevel()
	var err error
	if p := opts.Place; p != nil { // else -1 each: from the environment
		if o.rank, err = placeValue("Place.Rank", p.Rank); err != nil {
			return nil, err
		}
		if o.world_size, err = placeValue("Place.WorldSize", p.WorldSize); err != nil {
			return nil, err
		}
		if o.local_rank, err = placeValue("Place.LocalRank", p.LocalRank); err != nil {
			return nil, err
		}
	}
	if opts.MasterAddr != "" {
		o.master_addr = strs.add(opts.MasterAddr)
	}
	if opts.MasterPort != 0 {
		if o.master_port, err = placeValue("MasterPort", opts.MasterPort); err != nil {
			return nil, err
		}
	}

	ctx := &Context{}
	if opts.Log != nil {
		ctx.sink = &logSink{fn: opts.Log}
		ctx.log = cgo.NewHandle(ctx.sink)
		C.mpt_go_set_log(&o, C.uintptr_t(ctx.log))
	}
	status := C.mpt_init(&o, &ctx.c)
	if status != C.MPT_OK {
		err := ctx.lastError(status)
		ctx.release()
		return nil, err
	}
	runtime.SetFinalizer(ctx, (*Context).Close)
	return ctx, nil
}

// lastError is the *Error of a failed call; the caller holds mu.
func (ctx *Context) lastError(status C.mpt_status) error {
	if ctx.c == nil {
		return newError(Status(status), "mpt_init returned no context")
	}
	return newError(Status(status), C.GoString(C.mpt_last_error(ctx.c)))
}

// finish turns a call's status into an error, after raising a panic the log callback
// raised during the call; the caller holds mu.
func (ctx *Context) finish(status C.mpt_status) error {
	ctx.sink.rethrow()
	if status != C.MPT_OK {
		return ctx.lastError(status)
	}
	return nil
}

// live checks that the context is still open; the caller holds mu.
func (ctx *Context) live() error {
	if ctx.c == nil {
		return newError(StatusInvalidArgument, "the context is closed")
	}
	return nil
}

// SetOverride applies one override "section.key=value" to the recipe; allowed only while
// the context has no model. A rejected override changes nothing.
func (ctx *Context) SetOverride(assignment string) error {
	ctx.mu.Lock()
	defer ctx.mu.Unlock()
	if err := ctx.live(); err != nil {
		return err
	}
	text := C.CString(assignment)
	defer C.free(unsafe.Pointer(text))
	return ctx.finish(C.mpt_set_override(ctx.c, text))
}

// ConfigTOML is the resolved recipe, every default filled in, as TOML that loads back to
// the same configuration.
func (ctx *Context) ConfigTOML() (string, error) {
	ctx.mu.Lock()
	defer ctx.mu.Unlock()
	if err := ctx.live(); err != nil {
		return "", err
	}
	var n C.size_t
	status := C.mpt_config_toml(ctx.c, nil, 0, &n)
	if status != C.MPT_ERR_INVALID_ARGUMENT || n == 0 {
		if err := ctx.finish(status); err != nil {
			return "", err
		}
		return "", newError(StatusInternal, "mpt_config_toml: the size query gave no length")
	}
	buf := make([]byte, int(n))
	if err := ctx.finish(C.mpt_config_toml(ctx.c, (*C.char)(unsafe.Pointer(&buf[0])), n, &n)); err != nil {
		return "", err
	}
	return string(buf[:int(n)-1]), nil
}

// BuildModel validates the recipe and builds this rank's model (loading checkpoint.load
// when set). One model per context at a time.
func (ctx *Context) BuildModel() (*Model, error) {
	ctx.mu.Lock()
	defer ctx.mu.Unlock()
	if err := ctx.live(); err != nil {
		return nil, err
	}
	var c *C.mpt_model
	status := C.mpt_build_model(ctx.c, &c)
	if status == C.MPT_OK && ctx.sink != nil && ctx.sink.failed {
		C.mpt_model_destroy(c) // finish panics: nobody would own it
	}
	if err := ctx.finish(status); err != nil {
		return nil, err
	}
	m := &Model{c: c, ctx: ctx}
	ctx.model = c
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// release frees the library's context, its model and the log handle; the caller holds mu
// (or is the only user).
func (ctx *Context) release() {
	ctx.model = nil // mpt_finalize destroys it
	if ctx.c != nil {
		C.mpt_finalize(ctx.c)
		ctx.c = nil
	}
	if ctx.log != 0 {
		ctx.log.Delete()
		ctx.log = 0
	}
}

// Close releases the context and its model, if still open. Closing twice is harmless.
func (ctx *Context) Close() {
	ctx.mu.Lock()
	defer ctx.mu.Unlock()
	ctx.release()
	runtime.SetFinalizer(ctx, nil)
}
