// The smallest useful embedding of mptrain in Go: load a recipe, override a key, train a few
// steps on batches this program supplies, save a checkpoint.
//
// Usage: train_go RECIPE.toml CHECKPOINT_DIR [section.key=value ...]
//
// The batches are byte-level tokens (vocabulary 257, as in recipes/tiny.toml) cut from a text
// held here; a real host would read its own data the same way.
package main

import (
	"fmt"
	"os"

	"mptrain"
)

const text = "It was the best of times, it was the worst of times, it was the age of wisdom, it was " +
	"the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. "

// fillBatch writes one step's batch: sequences of cols tokens, each starting further into the text.
func fillBatch(tokens []int32, cols, step int, vocab int64) {
	for i := range tokens {
		r, c := i/cols, i%cols
		tokens[i] = int32(int64(text[(step*7+r*13+c)%len(text)]) % vocab)
	}
}

func run(recipe, checkpointDir string, overrides []string) error {
	ctx, err := mptrain.NewContext(mptrain.Options{RecipePath: recipe})
	if err != nil {
		return err
	}
	defer ctx.Close()
	// The host's choice (a short run) first, then the command line's, which may change it.
	for _, assignment := range append([]string{"train.train_iters=5"}, overrides...) {
		if err := ctx.SetOverride(assignment); err != nil {
			return err
		}
	}
	model, err := ctx.BuildModel()
	if err != nil {
		return err
	}
	defer model.Close()
	info, err := model.Info()
	if err != nil {
		return err
	}
	// One rank: the whole global batch, each row seq_length + 1 tokens (labels are the shift).
	rows, cols := int(info.GlobalBatchSize), int(info.SeqLength)+1
	batch := &mptrain.Batch{Tokens: make([]int32, rows*cols), Rows: rows, Cols: cols}
	for step := info.Iteration; step < info.TrainIters; step++ {
		fillBatch(batch.Tokens, cols, int(step), info.VocabSize)
		result, err := model.TrainStep(batch)
		if err != nil {
			return err
		}
		fmt.Printf("step %d: loss %.4f\n", result.Iteration, result.LMLoss)
	}
	if err := model.Checkpoint(checkpointDir); err != nil {
		return err
	}
	fmt.Printf("checkpoint saved in %s\n", checkpointDir)
	return nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintf(os.Stderr, "usage: %s RECIPE.toml CHECKPOINT_DIR [section.key=value ...]\n", os.Args[0])
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3:]); err != nil {
		fmt.Fprintf(os.Stderr, "mptrain: %v\n", err)
		os.Exit(1)
	}
}
