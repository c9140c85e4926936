// Helpers for tests that check errors: the Error a call throws, and substring checks.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"

namespace mpt {

// Runs fn and returns the Error it throws; fails the test when it throws nothing.
template <typename Fn>
Error error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error thrown";
  return Error(Status::kOk, "");
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace mpt
