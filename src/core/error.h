// One exception type for the whole runtime. It carries a status code that maps 1:1 onto
// the C ABI's mpt_status and a message naming its source (file:line:key, rank, offset).
// src/api turns it into a status; nothing throws across the C ABI.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mpt {

// Values equal the C ABI's MPT_* status codes (include/mptrain.h).
enum class Status : int {
  kOk = 0,
  kInvalidArgument = 1,   // misuse of an API: NULL handle, bad option struct
  kInvalidConfig = 2,     // recipe or override rejected
  kNotSupported = 3,      // valid request for a capability not built yet
  kIoError = 4,           // file missing, unreadable, unwritable
  kCorruptData = 5,       // dataset or checkpoint malformed or truncated
  kOutOfMemory = 6,
  kDistributed = 7,       // rendezvous, communicator, peer failure
  kDevice = 8,            // CUDA / driver failure
  kNumerical = 9,         // NaN/Inf loss or gradient
  kInternal = 10,
};

// Builds a string from any streamable arguments: str("rank ", r, " of ", n).
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

template <typename... Args>
[[noreturn]] void fail(Status status, Args&&... args) {
  throw Error(status, str(std::forward<Args>(args)...));
}

}  // namespace mpt

// MPT_CHECK(cond, status, message parts...): throws mpt::Error when cond is false.
#define MPT_CHECK(cond, status, ...)                 \
  do {                                               \
    if (!(cond)) ::mpt::fail((status), __VA_ARGS__); \
  } while (0)

// Internal invariant: a failure here is a bug in mptrain, not bad input.
#define MPT_ASSERT(cond)                                                                  \
  do {                                                                                    \
    if (!(cond))                                                                          \
      ::mpt::fail(::mpt::Status::kInternal, "internal error: ", #cond, " at ", __FILE__, \
                  ":", __LINE__);                                                         \
  } while (0)
