package mptrain

// The package against the installed library: training on recipes/tiny.toml from the
// recipe's data and from host batches, a checkpoint that loads back, recipe errors with
// their messages, batches refused before they reach the library, the log callback, Close.

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const tinyRecipe = "../../recipes/tiny.toml"

// tiny is recipes/tiny.toml cut down to train in well under a second a step.
func tiny(extra ...string) Options {
	overrides := []string{"train.train_iters=3", "scheduler.lr_warmup_iters=1", "train.global_batch_size=8",
		"model.seq_length=64", "dataset.num_workers=0"}
	return Options{RecipePath: tinyRecipe, Overrides: append(overrides, extra...), LogLevel: LogOff}
}

func hostTokens(rows, cols, seed int) []int32 {
	tokens := make([]int32, rows*cols)
	for i := range tokens {
		tokens[i] = int32((i*31 + seed*7) % 257)
	}
	return tokens
}

func mustContext(t *testing.T, opts Options) *Context {
	t.Helper()
	ctx, err := NewContext(opts)
	if err != nil {
		t.Fatalf("NewContext: %v", err)
	}
	t.Cleanup(ctx.Close)
	return ctx
}

func TestVersion(t *testing.T) {
	if Version() != "0.1.0" || VersionNumber()/100 != HeaderVersionNumber/100 {
		t.Fatalf("library %s (%d), header %d", Version(), VersionNumber(), HeaderVersionNumber)
	}
}

func TestTrainSaveResume(t *testing.T) {
	var lines []string
	opts := tiny()
	opts.LogLevel = LogInfo
	opts.Log = func(level LogLevel, message string) {
		if level < LogError || level > LogDebug {
			t.Errorf("log level %d for %q", level, message)
		}
		lines = append(lines, message)
	}
	ctx := mustContext(t, opts)
	if err := ctx.SetOverride("rng.seed=7"); err != nil {
		t.Fatal(err)
	}
	resolved, err := ctx.ConfigTOML()
	if err != nil || !strings.Contains(resolved, "train_iters = 3") || !strings.Contains(resolved, "seed = 7") {
		t.Fatalf("ConfigTOML: %v\n%s", err, resolved)
	}

	model, err := ctx.BuildModel()
	if err != nil {
		t.Fatal(err)
	}
	info, err := model.Info()
	if err != nil || info.Iteration != 0 || info.TrainIters != 3 || info.SeqLength != 64 || info.NumParameters <= 0 {
		t.Fatalf("Info: %+v, %v", info, err)
	}
	for want := int64(1); want <= 2; want++ {
		step, err := model.TrainStep(nil)
		if err != nil || step.Iteration != want || !(step.LMLoss > 0) || math.IsInf(step.LMLoss, 0) {
			t.Fatalf("step %d: %+v, %v", want, step, err)
		}
	}
	dir := t.TempDir()
	if err := model.Checkpoint(dir); err != nil {
		t.Fatal(err)
	}
	rows, cols := int(info.GlobalBatchSize), int(info.SeqLength)+1
	batch := &Batch{Tokens: hostTokens(rows, cols, 1), Rows: rows, Cols: cols}
	step3, err := model.TrainStep(batch)
	if err != nil || step3.Iteration != 3 || step3.Tokens != info.GlobalBatchSize*info.SeqLength {
		t.Fatalf("host batch step: %+v, %v", step3, err)
	}
	latest, err := os.ReadFile(filepath.Join(dir, "latest_checkpointed_iteration.txt"))
	if err != nil || strings.TrimSpace(string(latest)) != "2" {
		t.Fatalf("latest checkpoint %q, %v", latest, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "iter_0000002")); err != nil || !st.IsDir() {
		t.Fatalf("no iter_0000002: %v", err)
	}
	found := false
	for _, l := range lines {
		found = found || strings.HasPrefix(l, "mptrain: backend")
	}
	if !found {
		t.Fatalf("no backend line among the log lines %q", lines)
	}

	// Closing the model lets the context build another, which resumes and repeats step 3.
	model.Close()
	model, err = ctx.BuildModel()
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	if err := model.LoadCheckpoint(dir); err != nil {
		t.Fatal(err)
	}
	again, err := model.TrainStep(batch)
	if err != nil || again.Iteration != 3 || math.Abs(again.LMLoss-step3.LMLoss) > 1e-6*step3.LMLoss {
		t.Fatalf("resumed step 3: %+v (%v), first time %+v", again, err, step3)
	}
}

func TestBadRecipe(t *testing.T) {
	recipe := filepath.Join(t.TempDir(), "typo.toml")
	if err := os.WriteFile(recipe, []byte("[model]\nnum_layers = 2\nhiden_size = 64\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := NewContext(Options{RecipePath: recipe})
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, StatusInvalidConfig) {
		t.Fatalf("misspelt key: %v", err)
	}
	if !strings.Contains(e.Message, recipe+":3") || !strings.Contains(e.Message, "hiden_size") {
		t.Fatalf("message: %s", e.Message)
	}
	if !strings.HasPrefix(err.Error(), "invalid configuration: ") {
		t.Fatalf("Error(): %s", err)
	}

	// Valid keys whose values break a rule are caught when the model is built.
	ctx := mustContext(t, tiny("model.num_attention_heads=6"))
	_, err = ctx.BuildModel()
	if !errors.Is(err, StatusInvalidConfig) || !strings.Contains(err.Error(), "num_attention_heads") {
		t.Fatalf("6 heads: %v", err)
	}
	if err := ctx.SetOverride("train.no_such_key=1"); err == nil || !strings.Contains(err.Error(), "no_such_key") {
		t.Fatalf("unknown override key: %v", err)
	}
	_, err = NewContext(Options{RecipePath: filepath.Join(t.TempDir(), "missing.toml")})
	if !errors.Is(err, StatusIO) {
		t.Fatalf("missing file: %v", err)
	}
	// The job's place reaches the library, which checks it; Go checks what C cannot hold.
	_, err = NewContext(Options{RecipePath: tinyRecipe, Place: &Place{Rank: 1, WorldSize: 1}})
	if !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "rank") {
		t.Fatalf("rank 1 of 1: %v", err)
	}
	_, err = NewContext(Options{RecipePath: tinyRecipe, Place: &Place{Rank: -1, WorldSize: 1}})
	if !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "Place.Rank") {
		t.Fatalf("rank -1: %v", err)
	}
}

func TestBatchThatDoesNotFit(t *testing.T) {
	ctx := mustContext(t, tiny())
	model, err := ctx.BuildModel()
	if err != nil {
		t.Fatal(err)
	}
	info, _ := model.Info()
	rows, cols := int(info.GlobalBatchSize), int(info.SeqLength)+1
	tokens := hostTokens(rows, cols, 2)

	// Refused here: the slices do not hold rows x cols.
	_, err = model.TrainStep(&Batch{Tokens: tokens[1:], Rows: rows, Cols: cols})
	if !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "Tokens") {
		t.Fatalf("short tokens: %v", err)
	}
	mask := make([]float32, rows*(cols-1)-1)
	_, err = model.TrainStep(&Batch{Tokens: tokens, LossMask: mask, Rows: rows, Cols: cols})
	if err == nil || !strings.Contains(err.Error(), "LossMask") {
		t.Fatalf("short mask: %v", err)
	}
	// Refused by the library: consistent, but not the recipe's shape.
	_, err = model.TrainStep(&Batch{Tokens: tokens[:rows*(cols-1)], Rows: rows, Cols: cols - 1})
	if !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "cols") {
		t.Fatalf("wrong cols: %v", err)
	}
	if info, _ := model.Info(); info.Iteration != 0 {
		t.Fatalf("a refused batch trained: iteration %d", info.Iteration)
	}
}

func TestLogPanicReachesTheCaller(t *testing.T) {
	opts := tiny()
	opts.LogLevel = LogInfo
	armed := true
	opts.Log = func(_ LogLevel, message string) {
		if armed && strings.HasPrefix(message, "mptrain: backend") {
			armed = false
			panic("log callback saw: " + message)
		}
	}
	ctx := mustContext(t, opts)
	func() {
		defer func() {
			if p, _ := recover().(string); !strings.HasPrefix(p, "log callback saw: mptrain: backend") {
				t.Fatalf("recovered %q", p)
			}
		}()
		ctx.BuildModel()
		t.Fatal("BuildModel returned instead of panicking")
	}()
	// The model built during that call was destroyed: the context builds another.
	model, err := ctx.BuildModel()
	if err != nil {
		t.Fatal(err)
	}
	model.Close()
}

func TestClose(t *testing.T) {
	ctx := mustContext(t, tiny())
	model, err := ctx.BuildModel()
	if err != nil {
		t.Fatal(err)
	}
	ctx.Close()
	ctx.Close()
	if _, err := model.TrainStep(nil); !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("step after Close: %v", err)
	}
	model.Close()
	if err := ctx.SetOverride("train.train_iters=2"); err == nil {
		t.Fatal("a closed context took an override")
	}
}
