// The mptrain command line as data: which command, which recipe, which overrides and
// options. Parsing is pure (no I/O) so that every usage error is one exception.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mpt::cli {

enum class Command { kTrain, kConfig, kHelp, kVersion, kPreprocess, kDatasetInfo, kCkptInfo, kBatches };

// What one document of a plain-text input is (`preprocess --docs`).
enum class DocumentUnit { kFile, kLine, kParagraph };

// `mptrain preprocess`: text or JSON lines to a Megatron indexed dataset.
struct PreprocessOptions {
  std::vector<std::string> inputs;   // --input FILE, repeatable, in order
  std::string output_prefix;         // --output-prefix PREFIX: PREFIX.bin and PREFIX.idx
  std::string json_key;              // --json-key KEY: inputs are JSON lines; empty: plain text
  bool append_eod = false;           // --append-eod: end each document with the EOD token
  DocumentUnit docs = DocumentUnit::kFile;  // --docs file|line|paragraph (plain text only)
  bool overwrite = false;            // --overwrite: replace an existing PREFIX.bin/.idx
};

// `mptrain batches`: the token ids of training iterations, as training reads them.
struct BatchesOptions {
  std::string output;      // --output FILE: a .npy array of int32 [iterations, global batch, seq + 1]
  int64_t iterations = 0;  // --iterations N
  int64_t start = 0;       // --start I: iterations already done before the first one written
};

struct Invocation {
  Command command = Command::kTrain;
  std::string recipe_path;
  std::vector<std::string> overrides;  // "section.key=value", in order
  std::optional<int> threads;          // --threads N
  bool quiet = false;                  // --quiet: warnings and errors only
  int nproc_per_node = 1;              // --nproc-per-node N: launch N local ranks
  std::string master_addr;             // --master-addr A (with --nproc-per-node); empty: 127.0.0.1
  int master_port = 0;                 // --master-port P (with --nproc-per-node); 0: a free port
  // argv[1..] without --nproc-per-node, --master-addr and --master-port: the command line
  // each launched rank runs.
  std::vector<std::string> rank_arguments;
  PreprocessOptions preprocess;        // kPreprocess
  std::string dataset_prefix;          // kDatasetInfo: the dataset's PREFIX
  bool scan = false;                   // kDatasetInfo --scan: read every token
  std::string checkpoint_dir;          // kCkptInfo: a save directory or an iter_XXXXXXX directory
  bool list_tensors = false;           // kCkptInfo --tensors: one line per tensor
  bool save_initial = false;           // kTrain --save-initial: save the model before the first step
  BatchesOptions batches;              // kBatches
};

// A command line that cannot be understood; the program exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// argv[0] is the program name. Throws UsageError.
Invocation parse_command_line(int argc, const char* const* argv);

// The text of `mptrain --help`.
std::string usage_text();

}  // namespace mpt::cli
