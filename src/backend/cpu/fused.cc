#include "backend/cpu/fused.h"

#include <cstdint>
#include <string>
#include <utility>

#include "backend/cpu/check.h"

namespace mpt::backend::cpu {

namespace {

// Whether the bytes of two tensors share an address (empty ones share none).
bool overlaps(const Tensor& x, const Tensor& y) {
  if (x.data == nullptr || y.data == nullptr || x.bytes() == 0 || y.bytes() == 0) return false;
  const auto xb = reinterpret_cast<uintptr_t>(x.data), yb = reinterpret_cast<uintptr_t>(y.data);
  return xb < yb + y.bytes() && yb < xb + x.bytes();
}

void check_apart(const char* op, const char* an, const Tensor& a, const char* bn, const Tensor& b) {
  MPT_CPU_CHECK(!overlaps(a, b), op, str(an, " ", describe(a), " must not overlap ", bn, " ", describe(b)));
}

// Everything add() and the norm will check, before either writes: sum, a, b, out [rows, H]
// with H = weight.numel(); sum is a or b entirely or apart from both; out apart from all three.
void check_add_norm(const char* op, const Tensor& sum, const Tensor& out, const Tensor* mean, const Tensor& rstd,
                    const Tensor& a, const Tensor& b, const Tensor& weight, const Tensor* bias) {
  check_float(op, "sum", sum);
  check_float(op, "out", out);
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_float(op, "weight", weight);
  const int64_t h = weight.numel();
  MPT_CPU_CHECK(h > 0 && last_dim(sum) == h, op,
                "sum " + describe(sum) + " last axis must match weight " + describe(weight));
  const int64_t n = sum.numel(), rows = n / h;
  check_numel(op, "a", a, n);
  check_numel(op, "b", b, n);
  check_numel(op, "out", out, n);
  if (mean) {
    check_f32(op, "mean", *mean);
    check_numel(op, "mean", *mean, rows);
  }
  check_f32(op, "rstd", rstd);
  check_numel(op, "rstd", rstd, rows);
  if (bias && !is_empty(*bias)) {
    check_float(op, "bias", *bias);
    check_numel(op, "bias", *bias, h);
  }
  for (const auto& [name, in] : {std::pair<const char*, const Tensor*>{"a", &a}, {"b", &b}}) {
    const bool same = in->data == sum.data && in->dtype == sum.dtype;
    MPT_CPU_CHECK(same || !overlaps(sum, *in), op,
                  str("sum ", describe(sum), " must be ", name, " ", describe(*in),
                      " itself (same memory and dtype) or not overlap it"));
    check_apart(op, "out", out, name, *in);
  }
  check_apart(op, "out", out, "sum", sum);
}

}  // namespace

void add_layernorm_fwd(Ops& ops, Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b,
                       Tensor weight, Tensor bias, float eps) {
  check_add_norm("add_layernorm_fwd", sum, out, &mean, rstd, a, b, weight, &bias);
  ops.add(sum, a, b);
  ops.layernorm_fwd(out, mean, rstd, sum, weight, bias, eps);
}

void add_rmsnorm_fwd(Ops& ops, Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) {
  check_add_norm("add_rmsnorm_fwd", sum, out, nullptr, rstd, a, b, weight, nullptr);
  ops.add(sum, a, b);
  ops.rmsnorm_fwd(out, rstd, sum, weight, eps);
}

void matmul_bias_act(Ops& ops, Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias,
                     std::optional<Activation> act) {
  const char* op = "matmul_bias_act";
  check_float(op, "y", y);
  check_float(op, "x", x);
  check_float(op, "w", w);
  MPT_CPU_CHECK(w.ndim == 2, op, "w " + describe(w) + " must be [out, in]");
  const int64_t out = w.shape[0], in = w.shape[1], rows = rows_of(x);
  MPT_CPU_CHECK(last_dim(x) == in && rows_of(y) == rows && last_dim(y) == out, op,
                "shapes do not match: y " + describe(y) + " = x " + describe(x) + " @ w " + describe(w) + "^T");
  const bool has_bias = !is_empty(bias);
  if (has_bias) {
    check_float(op, "bias", bias);
    MPT_CPU_CHECK(out > 0 && bias.numel() == out, op,
                  "bias " + describe(bias) + " must hold the " + std::to_string(out) + " outputs of w " + describe(w));
  }
  if (act) {
    MPT_CPU_CHECK(static_cast<int>(*act) >= 0 && static_cast<int>(*act) <= static_cast<int>(Activation::kSquaredRelu),
                  op, str("unknown activation ", static_cast<int>(*act)));
    check_float(op, "pre", pre);
    MPT_CPU_CHECK(rows_of(pre) == rows && last_dim(pre) == out, op,
                  "pre " + describe(pre) + " must be shaped like y " + describe(y));
    check_apart(op, "y", y, "pre", pre);
    check_apart(op, "pre", pre, "x", x);
    check_apart(op, "pre", pre, "w", w);
    check_apart(op, "pre", pre, "bias", bias);
  } else {
    MPT_CPU_CHECK(is_empty(pre), op, "pre " + describe(pre) + " must be empty without an activation");
  }
  check_apart(op, "y", y, "x", x);
  check_apart(op, "y", y, "w", w);
  check_apart(op, "y", y, "bias", bias);

  const Tensor z = act ? pre : y;
  ops.matmul(z, x, w, false, true, 1.0f, 0.0f);
  if (has_bias) ops.add_bias(z, bias);
  if (act) ops.activation_fwd(y, z, *act, false);
}

}  // namespace mpt::backend::cpu
