// Package mptrain trains GPT- and LLaMA-style transformer language models with mptrain,
// through its C ABI (include/mptrain.h, the specification). The installed library is found
// with pkg-config: set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for a prefix the system does
// not search (and LD_LIBRARY_PATH=PREFIX/lib to run).
//
//	ctx, err := mptrain.NewContext(mptrain.Options{RecipePath: "recipes/tiny.toml",
//		Overrides: []string{"train.train_iters=3"}})
//	if err != nil { ... }           // err is an *mptrain.Error: status and message
//	defer ctx.Close()
//	model, err := ctx.BuildModel()
//	...
//	step, err := model.TrainStep(&mptrain.Batch{Tokens: tokens, Rows: rows, Cols: cols})
//	err = model.Checkpoint("runs/ckpt")
//
// A Context and its Model may be used from several goroutines: their calls are serialised,
// as the library requires. Close releases them; a finalizer does so for one left
// unreachable.
package mptrain

/*
#cgo pkg-config: mptrain
#include <mptrain.h>
*/
import "C"

// Version is the library's version, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.mpt_version()) }

// VersionNumber is the library's version as MAJOR*10000 + MINOR*100 + PATCH.
func VersionNumber() int { return int(C.mpt_version_number()) }

// HeaderVersionNumber is the version of the header this package was compiled with.
const HeaderVersionNumber = C.MPT_VERSION_NUMBER
