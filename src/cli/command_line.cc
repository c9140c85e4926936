#include "cli/command_line.h"

#include <cerrno>
#include <cstdlib>
#include <string_view>

namespace mpt::cli {
namespace {

// A positive integer option value, e.g. --threads 8.
int parse_count(const std::string& option, const std::string& text, int max) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0' || v < 1 || v > max)
    throw UsageError(option + " expects an integer in 1.." + std::to_string(max) + ", got '" +
                     text + "'");
  return static_cast<int>(v);
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

DocumentUnit parse_document_unit(const std::string& text) {
  if (text == "file") return DocumentUnit::kFile;
  if (text == "line") return DocumentUnit::kLine;
  if (text == "paragraph") return DocumentUnit::kParagraph;
  throw UsageError("--docs expects file, line or paragraph, got '" + text + "'");
}

// A non-negative integer option value, e.g. --start 0.
int64_t parse_index(const std::string& option, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0' || v < 0)
    throw UsageError(option + " expects an integer >= 0, got '" + text + "'");
  return static_cast<int64_t>(v);
}

// A value that names something (a file, a prefix, a key) cannot be empty.
std::string non_empty(const std::string& option, const std::string& value) {
  if (value.empty()) throw UsageError(option + " needs a non-empty value");
  return value;
}

}  // namespace

Invocation parse_command_line(int argc, const char* const* argv) {
  Invocation inv;
  std::vector<std::string> positionals;
  bool help = false, version = false, options_done = false;
  // Options of one data command, by name, to reject them under any other command.
  std::vector<std::string> preprocess_options, dataset_info_options, ckpt_info_options, batches_options,
      train_options;
  bool docs_given = false;

  std::vector<std::string> launch_options;  // given, by name, for the checks below
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      positionals.push_back(arg);
      inv.rank_arguments.push_back(arg);
      continue;
    }
    const int first_index = i;
    // Options taking a value accept both "--name value" and "--name=value".
    auto value_of = [&](const std::string& name) -> std::optional<std::string> {
      if (arg == name) {
        if (i + 1 >= argc) throw UsageError(name + " needs a value");
        return std::string(argv[++i]);
      }
      if (starts_with(arg, name + "=")) return arg.substr(name.size() + 1);
      return std::nullopt;
    };
    if (arg == "--") {
      options_done = true;
    } else if (arg == "-h" || arg == "--help") {
      help = true;
    } else if (arg == "--version") {
      version = true;
    } else if (arg == "-q" || arg == "--quiet") {
      inv.quiet = true;
    } else if (auto v = value_of("--threads")) {
      inv.threads = parse_count("--threads", *v, 4096);
    } else if (auto n = value_of("--nproc-per-node")) {
      inv.nproc_per_node = parse_count("--nproc-per-node", *n, 1024);
      continue;  // a launch option: not passed on to the ranks
    } else if (auto port = value_of("--master-port")) {
      inv.master_port = parse_count("--master-port", *port, 65535);
      launch_options.push_back("--master-port");
      continue;
    } else if (auto addr = value_of("--master-addr")) {
      inv.master_addr = non_empty("--master-addr", *addr);
      launch_options.push_back("--master-addr");
      continue;
    } else if (auto in = value_of("--input")) {
      inv.preprocess.inputs.push_back(non_empty("--input", *in));
      preprocess_options.push_back("--input");
    } else if (auto out = value_of("--output-prefix")) {
      inv.preprocess.output_prefix = non_empty("--output-prefix", *out);
      preprocess_options.push_back("--output-prefix");
    } else if (auto key = value_of("--json-key")) {
      inv.preprocess.json_key = non_empty("--json-key", *key);
      preprocess_options.push_back("--json-key");
    } else if (auto docs = value_of("--docs")) {
      inv.preprocess.docs = parse_document_unit(*docs);
      docs_given = true;
      preprocess_options.push_back("--docs");
    } else if (arg == "--append-eod") {
      inv.preprocess.append_eod = true;
      preprocess_options.push_back(arg);
    } else if (arg == "--overwrite") {
      inv.preprocess.overwrite = true;
      preprocess_options.push_back(arg);
    } else if (arg == "--scan") {
      inv.scan = true;
      dataset_info_options.push_back(arg);
    } else if (arg == "--tensors") {
      inv.list_tensors = true;
      ckpt_info_options.push_back(arg);
    } else if (arg == "--save-initial") {
      inv.save_initial = true;
      train_options.push_back(arg);
    } else if (auto file = value_of("--output")) {
      inv.batches.output = non_empty("--output", *file);
      batches_options.push_back("--output");
    } else if (auto n = value_of("--iterations")) {
      inv.batches.iterations = parse_count("--iterations", *n, 1 << 30);
      batches_options.push_back("--iterations");
    } else if (auto start = value_of("--start")) {
      inv.batches.start = parse_index("--start", *start);
      batches_options.push_back("--start");
    } else {
      throw UsageError("unknown option '" + arg + "'");
    }
    for (int j = first_index; j <= i; ++j) inv.rank_arguments.push_back(argv[j]);
  }

  if (help) {
    inv.command = Command::kHelp;
    return inv;
  }
  if (version) {
    inv.command = Command::kVersion;
    return inv;
  }
  if (!launch_options.empty() && inv.nproc_per_node < 2)
    throw UsageError(launch_options.front() +
                     " sets the rendezvous of ranks started by --nproc-per-node N (N > 1); "
                     "under torchrun, srun or mpirun set MASTER_ADDR and MASTER_PORT instead");

  const std::string first = positionals.empty() ? "" : positionals[0];
  auto reject_options = [](const std::vector<std::string>& given, const char* owner, const std::string& command) {
    if (!given.empty())
      throw UsageError(given.front() + " is an option of '" + owner + "', not of '" + command + "'");
  };
  const bool single_process_command =
      first == "preprocess" || first == "dataset-info" || first == "ckpt-info" || first == "batches";
  // The command the options are given to, for the messages: a recipe alone means train.
  const std::string named = first == "config" || single_process_command ? first : "train";
  if (named != "batches") reject_options(batches_options, "batches", named);
  if (named != "train") reject_options(train_options, "train", named);
  if (single_process_command && inv.nproc_per_node > 1)
    throw UsageError("--nproc-per-node starts ranks for 'train' and 'config', not for '" + first + "'");
  if (first == "preprocess") {
    reject_options(dataset_info_options, "dataset-info", first);
    reject_options(ckpt_info_options, "ckpt-info", first);
    if (positionals.size() > 1)
      throw UsageError("preprocess takes no arguments besides its options, got '" + positionals[1] +
                       "' (name each input with --input FILE)");
    if (inv.preprocess.inputs.empty()) throw UsageError("preprocess needs at least one --input FILE");
    if (inv.preprocess.output_prefix.empty()) throw UsageError("preprocess needs --output-prefix PREFIX");
    if (docs_given && !inv.preprocess.json_key.empty())
      throw UsageError("--docs applies to plain text; with --json-key each JSON line is one document");
    inv.command = Command::kPreprocess;
    return inv;
  }
  if (first == "dataset-info") {
    reject_options(preprocess_options, "preprocess", first);
    reject_options(ckpt_info_options, "ckpt-info", first);
    if (positionals.size() < 2) throw UsageError("dataset-info needs the dataset PREFIX (of PREFIX.bin and PREFIX.idx)");
    if (positionals.size() > 2)
      throw UsageError("dataset-info takes one PREFIX, got also '" + positionals[2] + "'");
    inv.command = Command::kDatasetInfo;
    inv.dataset_prefix = positionals[1];
    return inv;
  }
  if (first == "ckpt-info") {
    reject_options(preprocess_options, "preprocess", first);
    reject_options(dataset_info_options, "dataset-info", first);
    if (positionals.size() < 2)
      throw UsageError("ckpt-info needs the checkpoint DIR (a save directory or an iter_XXXXXXX directory)");
    if (positionals.size() > 2) throw UsageError("ckpt-info takes one DIR, got also '" + positionals[2] + "'");
    inv.command = Command::kCkptInfo;
    inv.checkpoint_dir = non_empty("ckpt-info DIR", positionals[1]);
    return inv;
  }
  const std::string command = first == "config" || first == "batches" ? first : "train";
  reject_options(preprocess_options, "preprocess", command);
  reject_options(dataset_info_options, "dataset-info", command);
  reject_options(ckpt_info_options, "ckpt-info", command);

  size_t next = 0;
  if (!positionals.empty()) {
    const std::string& word = positionals[0];
    if (word == "help") {
      inv.command = Command::kHelp;
      return inv;
    }
    if (word == "version") {
      inv.command = Command::kVersion;
      return inv;
    }
    if (word == "train" || word == "config" || word == "batches") {
      inv.command = word == "train" ? Command::kTrain : word == "config" ? Command::kConfig : Command::kBatches;
      next = 1;
    }
  }
  if (inv.command == Command::kBatches) {
    if (inv.batches.output.empty()) throw UsageError("batches needs --output FILE (a .npy file to write)");
    if (inv.batches.iterations == 0) throw UsageError("batches needs --iterations N");
  }
  if (next >= positionals.size()) throw UsageError("missing the recipe file (RECIPE.toml)");
  inv.recipe_path = positionals[next++];
  for (; next < positionals.size(); ++next) {
    const std::string& a = positionals[next];
    if (a.find('=') == std::string::npos || a.front() == '=')
      throw UsageError("expected an override section.key=value after the recipe, got '" + a + "'");
    inv.overrides.push_back(a);
  }
  return inv;
}

std::string usage_text() {
  return R"(Usage:
  mptrain [OPTIONS] RECIPE.toml [section.key=value ...]
  mptrain [OPTIONS] train [--save-initial] RECIPE.toml [section.key=value ...]
  mptrain [OPTIONS] config RECIPE.toml [section.key=value ...]
  mptrain batches RECIPE.toml [section.key=value ...] --iterations N --output FILE.npy
                  [--start I]
  mptrain preprocess --input FILE [--input FILE ...] --output-prefix PREFIX
                     [--json-key KEY] [--docs file|line|paragraph] [--append-eod] [--overwrite]
  mptrain dataset-info PREFIX [--scan]
  mptrain ckpt-info DIR [--tensors]
  mptrain help | --help | -h
  mptrain --version

Commands:
  train     Train the model the recipe describes (the default when the first argument
            is a recipe file). Prints a log line every logger.log_interval iterations
            and saves checkpoints as the [checkpoint] section says. --save-initial also
            saves the model as training starts (iteration 0: the initial weights) into
            checkpoint.save before the first step.
  config    Validate the recipe with its overrides and print the resolved recipe as
            TOML (loadable again as a recipe). Nothing is trained.
  batches   Write the token ids that training reads at iterations I+1 .. I+N (the recipe's
            data, global batch and seed; what every data-parallel rank reads, together)
            into FILE.npy: int32 [N, global_batch_size, seq_length + 1], sample b of
            iteration i is inputs [0, seq) and labels [1, seq + 1). Nothing is trained.
  preprocess
            Tokenize text into a Megatron indexed dataset, PREFIX.bin and PREFIX.idx (as
            Megatron-LM's tools/preprocess_data.py writes them), for dataset.source =
            "indexed". The tokenizer is byte-level: ids 0..255 are the UTF-8 bytes and 256
            ends a document; tokens are stored as uint16, one sequence per document.
            Documents without any token are skipped. Prints the document and token counts.
  dataset-info
            Check PREFIX.bin and PREFIX.idx (from mptrain or Megatron-LM) and print the
            dtype, the sequence, document and token counts, the file sizes and the
            shortest, mean and longest sequence.
  ckpt-info Check the checkpoint in DIR (an iter_XXXXXXX directory, or a save directory:
            the iteration its latest_checkpointed_iteration.txt names) as loading would:
            every shard file present with the size and CRC-32C index.json records. Print
            the iteration, consumed samples, optimizer steps, whether optimizer state is
            there, the parallel layout it was saved at, the tensor count and every file's
            bytes and CRC-32C. A damaged checkpoint is an error naming the file.
  help      Print this text.

Overrides:
  section.key=value   Set one recipe key after the file is read, as Megatron Bridge's
                      command line does: model.num_layers=4, optimizer.lr=3e-4,
                      dataset.source=corpus. The value is read as TOML; a bare word that
                      is not valid TOML is taken as a string. Later overrides win.

Options:
  --threads N         Use N CPU threads for computation (default: OpenMP's default,
                      usually every core; OMP_NUM_THREADS is honoured too).
  --quiet, -q         Print only warnings and errors, not progress lines.
  --nproc-per-node N  Start N local processes, ranks 0..N-1 of one job, as torchrun
                      --nproc-per-node N does: each runs this command line without the
                      launch options, with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
                      MASTER_ADDR and MASTER_PORT set, and every line it prints starts
                      with "[rankK]: ". When a rank fails the others are stopped (SIGTERM,
                      SIGKILL 5 s later) and mptrain exits 1; SIGINT and SIGTERM are passed
                      on to the ranks. Unless --threads or OMP_NUM_THREADS says otherwise,
                      each rank gets an equal share of the CPU cores. Under torchrun, srun
                      or mpirun leave this out: the rank and world size come from their
                      environment variables.
  --master-addr A     With --nproc-per-node: the MASTER_ADDR given to the ranks
                      (default 127.0.0.1).
  --master-port P     With --nproc-per-node: the MASTER_PORT given to the ranks (default:
                      a free port).
  --version           Print the version and exit.
  --help, -h          Print this text and exit.
  --                  Treat every later argument as a recipe or an override.

Preprocess options:
  --input FILE          A file to read; repeat for several, read in the order given.
  --output-prefix PREFIX
                        Write PREFIX.bin and PREFIX.idx (through PREFIX.bin.tmp and
                        PREFIX.idx.tmp, renamed when complete).
  --json-key KEY        The inputs are JSON lines: every line is an object whose string
                        field KEY is one document (blank lines are skipped). A line that
                        is not such an object is an error naming FILE:LINE.
  --docs UNIT           What a document of a plain-text input is: file (the whole file,
                        the default), line (one line, without its line ending) or
                        paragraph (lines up to a blank line, joined by newlines).
  --append-eod          End every document with the end-of-document token 256.
  --overwrite           Replace an existing PREFIX.bin / PREFIX.idx (refused otherwise).

Dataset-info options:
  --scan                Also read every token and print the largest token id.

Batches options:
  --iterations N        How many iterations to write.
  --start I             Iterations done before the first one written (default 0), as
                        when resuming from a checkpoint of iteration I.
  --output FILE         The .npy file to write (replaced if it exists).

Ckpt-info options:
  --tensors             Also print one line per tensor: name, dtype, global shape and
                        the number of slices it was saved in.

Exit status:
  0  success
  1  the recipe, an override, the data or a checkpoint was rejected (missing, damaged),
     training failed, or an input or dataset could not be read or written
     (the message names the file, line and key where it can); with --nproc-per-node:
     a rank failed (the message names it)
  2  the command line itself is wrong
  128+S  with --nproc-per-node: signal S (130 for SIGINT, 143 for SIGTERM) was forwarded and
         a rank did not stop cleanly on it (training stops after its step, saves and exits 0)
)";
}

}  // namespace mpt::cli
