package mptrain

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Model is this rank's model, optimizer state and data stream, built from a Context whose
// errors and log lines it shares.
type Model struct {
	c   *C.mpt_model
	ctx *Context
}

// Batch is a global batch (this rank's share) supplied by the host, row-major. Tokens holds
// Rows x Cols ids; without Labels, Cols is seq_length + 1 and the labels are the tokens
// shifted by one; with them, Cols is seq_length and Labels holds Rows x Cols. LossMask
// (Rows x seq_length, optional) weights each target.
type Batch struct {
	Tokens   []int32
	Labels   []int32
	LossMask []float32
	Rows     int
	Cols     int
}

// check makes sure every slice holds what Rows and Cols promise: the library reads exactly
// that much.
func (b *Batch) check() error {
	if b.Rows <= 0 || b.Cols <= 0 {
		return newError(StatusInvalidArgument, fmt.Sprintf("Batch: rows %d and cols %d must be positive", b.Rows, b.Cols))
	}
	cells := b.Rows * b.Cols
	if cells/b.Cols != b.Rows {
		return newError(StatusInvalidArgument, fmt.Sprintf("Batch: rows %d x cols %d overflows", b.Rows, b.Cols))
	}
	length := func(name string, got, want int) error {
		if got != want {
			return newError(StatusInvalidArgument, fmt.Sprintf("Batch: %s holds %d values, rows %d x cols %d needs %d",
				name, got, b.Rows, b.Cols, want))
		}
		return nil
	}
	if err := length("Tokens", len(b.Tokens), cells); err != nil {
		return err
	}
	seqLength := b.Cols - 1
	if b.Labels != nil {
		if err := length("Labels", len(b.Labels), cells); err != nil {
			return err
		}
		seqLength = b.Cols
	}
	if b.LossMask != nil {
		return length("LossMask", len(b.LossMask), b.Rows*seqLength)
	}
	return nil
}

// StepResult is the outcome of one training step.
type StepResult struct {
	Iteration       int64   // iterations completed, this one included
	LMLoss          float64 // mean over micro-batches of the per-token mean loss
	GradNorm        float64 // global L2 norm of the gradients before clipping
	LearningRate    float64
	Tokens          int64 // tokens in the global batch
	StepTimeS       float64
	ConsumedSamples int64 // samples consumed after this step
}

func stepResult(r *C.mpt_step_result) StepResult {
	return StepResult{
		Iteration:       int64(r.iteration),
		LMLoss:          float64(r.lm_loss),
		GradNorm:        float64(r.grad_norm),
		LearningRate:    float64(r.learning_rate),
		Tokens:          int64(r.tokens),
		StepTimeS:       float64(r.step_time_s),
		ConsumedSamples: int64(r.consumed_samples),
	}
}

// ModelInfo holds the sizes of a built model on this rank (byte counts are this rank's).
type ModelInfo struct {
	NumParameters        int64
	Iteration            int64
	TrainIters           int64
	SeqLength            int64
	MicroBatchSize       int64
	GlobalBatchSize      int64
	VocabSize            int64
	ParamsBytes          int64
	GradsBytes           int64
	OptimizerBytes       int64
	ActivationsPeakBytes int64
	ExpertParamsBytes    int64
}

// lock takes the context's lock and checks that the model is still open.
func (m *Model) lock() error {
	m.ctx.mu.Lock()
	if m.c == nil || m.ctx.model != m.c {
		m.ctx.mu.Unlock()
		return newError(StatusInvalidArgument, "the model is closed")
	}
	return nil
}

func newStepResult() C.mpt_step_result {
	var r C.mpt_step_result
	r.struct_size = C.size_t(unsafe.Sizeof(r))
	return r
}

// TrainStep runs one training step on b, or on the recipe's next batch when b is nil. After
// an error other than StatusInvalidArgument the model's state is unspecified.
func (m *Model) TrainStep(b *Batch) (StepResult, error) {
	if b != nil {
		if err := b.check(); err != nil {
			return StepResult{}, err
		}
	}
	if err := m.lock(); err != nil {
		return StepResult{}, err
	}
	defer m.ctx.mu.Unlock()
	out := newStepResult()
	var status C.mpt_status
	if b == nil {
		status = C.mpt_train_step(m.c, nil, &out)
	} else {
		var labels *C.int32_t
		var mask *C.float
		if b.Labels != nil {
			labels = (*C.int32_t)(unsafe.Pointer(&b.Labels[0]))
		}
		if b.LossMask != nil {
			mask = (*C.float)(unsafe.Pointer(&b.LossMask[0]))
		}
		status = C.mpt_go_train_step(m.c, (*C.int32_t)(unsafe.Pointer(&b.Tokens[0])), labels, mask,
			C.int64_t(b.Rows), C.int64_t(b.Cols), &out)
	}
	if err := m.ctx.finish(status); err != nil {
		return StepResult{}, err
	}
	return stepResult(&out), nil
}

// Train runs the recipe's training loop up to train.train_iters, with its logging,
// evaluation and checkpoints, and returns the last step's result.
func (m *Model) Train() (StepResult, error) {
	if err := m.lock(); err != nil {
		return StepResult{}, err
	}
	defer m.ctx.mu.Unlock()
	out := newStepResult()
	if err := m.ctx.finish(C.mpt_train(m.c, &out)); err != nil {
		return StepResult{}, err
	}
	return stepResult(&out), nil
}

// Checkpoint saves the model, optimizer and data position into dir/iter_XXXXXXX ("" means
// the recipe's checkpoint.save).
func (m *Model) Checkpoint(dir string) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.ctx.mu.Unlock()
	var cdir *C.char
	if dir != "" {
		cdir = C.CString(dir)
		defer C.free(unsafe.Pointer(cdir))
	}
	return m.ctx.finish(C.mpt_checkpoint(m.c, cdir))
}

// LoadCheckpoint loads an iter_XXXXXXX directory, or a save directory's latest checkpoint.
func (m *Model) LoadCheckpoint(dir string) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.ctx.mu.Unlock()
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	return m.ctx.finish(C.mpt_load_checkpoint(m.c, cdir))
}

// Info reports the model's sizes and position.
func (m *Model) Info() (ModelInfo, error) {
	if err := m.lock(); err != nil {
		return ModelInfo{}, err
	}
	defer m.ctx.mu.Unlock()
	var i C.mpt_model_info
	i.struct_size = C.size_t(unsafe.Sizeof(i))
	if err := m.ctx.finish(C.mpt_model_get_info(m.c, &i)); err != nil {
		return ModelInfo{}, err
	}
	return ModelInfo{
		NumParameters:        int64(i.num_parameters),
		Iteration:            int64(i.iteration),
		TrainIters:           int64(i.train_iters),
		SeqLength:            int64(i.seq_length),
		MicroBatchSize:       int64(i.micro_batch_size),
		GlobalBatchSize:      int64(i.global_batch_size),
		VocabSize:            int64(i.vocab_size),
		ParamsBytes:          int64(i.params_bytes),
		GradsBytes:           int64(i.grads_bytes),
		OptimizerBytes:       int64(i.optimizer_bytes),
		ActivationsPeakBytes: int64(i.activations_peak_bytes),
		ExpertParamsBytes:    int64(i.expert_params_bytes),
	}, nil
}

// Close destroys the model; its context may then take overrides and build another.
// Closing twice, or after the context, is harmless.
func (m *Model) Close() {
	m.ctx.mu.Lock()
	defer m.ctx.mu.Unlock()
	if m.c != nil && m.ctx.model == m.c {
		C.mpt_model_destroy(m.c)
		m.ctx.model = nil
	}
	m.c = nil
	runtime.SetFinalizer(m, nil)
}
