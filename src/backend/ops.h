// The op interface every model layer calls. backend/cpu is the fp32 reference (the
// oracle); src/cuda implements the same interface on GPUs. Model and parallel code never
// touch data directly: they call these ops on Tensor views.
//
// Conventions:
// - Activations are token-major rows [T, features] with token t = s * batch + b
//   (Megatron's [s, b, h] layout flattened), so sequence splits (SP, CP) are contiguous.
// - "acc" in a comment means the op adds into its output (parameter gradients, residual
//   gradients); otherwise outputs are overwritten.
// - Weights of linear layers are [out_features, in_features] (Megatron/PyTorch layout).
//
// Precision (bf16 mixed precision, as Megatron runs it):
// - Every floating tensor argument may be f32 or bf16 (DType::kBF16; core/bf16.h), each on
//   its own, except these, which are always f32: normalisation statistics (mean, rstd),
//   attention lse, the cross-entropy pieces (logits, row_max, sumexp, target_logit, loss,
//   grad_scale; ce_bwd's dlogits may be bf16), the router's tensors (router_topk /
//   router_lse / z-loss: logits, probs, scores and their gradients), moe_unpermute's probs
//   and dprobs, and all of adamw's.
// - Ops compute in fp32: a bf16 input is widened exactly, a bf16 output is rounded once (to
//   nearest even) from the fp32 result, and a bf16 "acc" output is widened, added to in fp32
//   and rounded. So a bf16 op equals the f32 op on the widened inputs, rounded.
// - matmul and grouped_matmul: when a or b is bf16, both operands are first rounded to bf16
//   and the products accumulate in fp32 (a tensor-core bf16 GEMM); c may be f32 (weight
//   gradients accumulating in fp32, fp32 logits) or bf16, alpha and beta apply in fp32. With
//   both operands f32 the GEMM is fp32 throughout (no TF32).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/arena.h"
#include "core/tensor.h"

namespace mpt::backend {

enum class Activation : int32_t { kGelu = 0, kGeluTanh = 1, kSilu = 2, kRelu = 3, kSquaredRelu = 4 };
enum class RouterScore : int32_t { kSoftmax = 0, kSigmoid = 1 };
// The three products of a linear layer, per group of a grouped GEMM (see grouped_matmul).
enum class GroupedForm : int32_t { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

// Where an attention call's rows sit in the whole sequence: local index i < split is at
// position first + i, the rest at second + (i - split). The default is the identity. Used
// only to key dropout masks, so that a call over part of a sequence (context parallelism)
// draws the same mask elements as one call over the whole of it.
struct SeqPositions {
  int64_t first = 0;
  int64_t split = INT64_MAX;
  int64_t second = 0;
  int64_t at(int64_t i) const { return i < split ? first + i : second + (i - split); }
};

struct AttentionDims {
  int64_t seq_q = 0;        // query positions in this call
  int64_t seq_kv = 0;       // key/value positions in this call
  int64_t batch = 0;
  int64_t heads = 0;        // query heads in this call (local heads under TP)
  int64_t groups = 0;       // key/value heads; heads % groups == 0
  int64_t head_dim = 0;
  float softmax_scale = 0;  // usually 1/sqrt(head_dim)
  // Causal mask aligned to the bottom right: query i sees keys j <= i + (seq_kv - seq_q), i.e.
  // the queries are the last seq_q positions of the keys' sequence. Requires seq_q <= seq_kv.
  bool causal = true;
  float dropout_p = 0;      // dropout on attention probabilities
  // Dropout masks: element (global head, b, i, j) is kept iff dropout_keep(stream(dropout_key ^ seed,
  // head_offset + h, b), q_pos.at(i) * mask_seq + kv_pos.at(j), p); mask_seq 0 means seq_kv.
  uint64_t dropout_key = 0;
  int64_t head_offset = 0;  // global index of local head 0 (keeps masks layout-invariant)
  SeqPositions q_pos, kv_pos;
  int64_t mask_seq = 0;
};

struct AdamWArgs {
  float lr = 0;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0;   // decoupled: p -= lr * wd * p
  int64_t step = 1;         // 1-based, for bias correction
  float grad_scale = 1;     // multiplies the gradient first (clipping coefficient)
  // The coefficient in backend memory instead (f32 [1], e.g. grad_clip_factor's), read when
  // the update runs, so the update needs no host value of the norm. Empty: grad_scale.
  Tensor grad_scale_device;
};

// One parameter piece of adamw_multi: param, grad, exp_avg, exp_avg_sq f32 of one numel;
// compute_copy empty, or bf16 of that numel (the compute copy of the weights, written from
// the updated param).
struct AdamWTensor {
  Tensor param, grad, exp_avg, exp_avg_sq;
  Tensor compute_copy;
  float weight_decay = 0;  // this piece's (AdamWArgs::weight_decay is not used)
};

// A recorded sequence of a backend's work (a CUDA graph on the GPU), replayed as one
// launch. Replay repeats the recorded calls with the arguments they had when recorded:
// the same memory addresses and the same scalars (matmul's alpha, a dropout key, a grouped
// GEMM's host counts). Only values read from backend memory may change between replays, so
// whatever differs from one replay to the next must be written there first, outside the
// graph (to_device of a micro-batch's inputs and weights).
class Graph {
 public:
  virtual ~Graph() = default;
  // Queues the recorded work, ordered after earlier work and before later work of the backend.
  virtual void replay() = 0;
  // The ops recorded (kernels and copies on a GPU may count several per op).
  virtual int64_t nodes() const = 0;
};

class Ops : public MemoryResource {
 public:
  ~Ops() override = default;
  virtual const char* name() const = 0;
  virtual void synchronize() {}
  // Bytes of work buffers the backend keeps between calls, as of now (they grow to the
  // largest call seen, e.g. the CPU attention's score blocks).
  virtual int64_t workspace_bytes() const { return 0; }
  // The most of this backend's memory in use at once so far (allocate() minus release(), as
  // its allocator counts it), or 0 where it is not tracked (host-memory backends).
  virtual int64_t peak_bytes() const { return 0; }

  // --- where tensors live -------------------------------------------------------------
  // The memory this backend computes on: host memory for the CPU, device memory for a GPU.
  // allocate() returns zero-filled memory aligned to 256 bytes and throws
  // Error(kOutOfMemory) naming the size; release(nullptr) does nothing.
  virtual bool host_memory() const { return true; }
  void* allocate(size_t bytes) override;
  void release(void* p) override;
  // Copies between host memory and this backend's memory (ordered with the backend's work;
  // to_host waits for it).
  virtual void to_device(void* dst, const void* src, size_t bytes);
  virtual void to_host(void* dst, const void* src, size_t bytes);
  // Between two areas of this backend's memory (they may overlap).
  virtual void device_copy(void* dst, const void* src, size_t bytes);
  // Whether p points into this backend's memory rather than host memory (always false for
  // a host-memory backend).
  virtual bool is_device_pointer(const void* p) const {
    (void)p;
    return false;
  }

  // --- graphs ---------------------------------------------------------------------------
  // Whether this backend records graphs (host-memory backends do not: their ops run as
  // they are called).
  virtual bool supports_graphs() const { return false; }
  // Between begin_capture() and end_capture() the ops are recorded, not run. Recording
  // refuses, with Error(kInternal) naming the call, whatever a replay could not repeat:
  // allocate(), to_device(), to_host() and the ops that return a host value (sum_squares,
  // dot, all_finite), and a second begin_capture(); a refused call also spoils the capture.
  // end_capture() always ends the capture, and returns the recording (it may be empty), or
  // throws (after ending it) when the recording is unusable: a refused call or a device
  // error during capture. Both throw Error(kNotSupported) where supports_graphs() is false.
  // Memory the recorded ops use must stay allocated while the graph is replayed.
  virtual void begin_capture();
  virtual std::unique_ptr<Graph> end_capture();
  virtual bool capturing() const { return false; }

  // --- memory and elementwise --------------------------------------------------------
  // dst = src converted to dst's dtype (same numel; f32 <-> bf16 rounds to nearest even, a
  // same-dtype cast copies). Used to refresh the bf16 compute copy of fp32 master weights.
  virtual void cast(Tensor dst, Tensor src) = 0;
  virtual void fill(Tensor x, float value) = 0;
  virtual void copy(Tensor dst, Tensor src) = 0;                 // same numel
  virtual void add(Tensor out, Tensor a, Tensor b) = 0;          // out = a + b; out may alias a or b
  virtual void add_inplace(Tensor y, Tensor x) = 0;              // y += x
  virtual void scale(Tensor x, float s) = 0;                     // x *= s
  virtual double sum_squares(Tensor x) = 0;                      // sum x^2 in double (grad norm)
  virtual double dot(Tensor a, Tensor b) = 0;                    // sum a*b in double (loss reduce)
  virtual bool all_finite(Tensor x) = 0;

  // --- GEMM ---------------------------------------------------------------------------
  // c[M,N] = alpha * op(a) @ op(b) + beta * c, row-major 2-D tensors; op = transpose when
  // the flag is set (a is [K,M] when trans_a, b is [N,K] when trans_b).
  virtual void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) = 0;
  virtual void add_bias(Tensor y, Tensor bias) = 0;               // y[T,N] += bias[N]
  virtual void bias_grad(Tensor dbias, Tensor dy) = 0;            // dbias[N] acc sum_t dy[t,:]
  // A linear layer's forward GEMM with its epilogue: z = x @ w^T + bias (x [T, in], w [out, in],
  // bias [out] or empty), then y = act(z) (the plain, non-gated form) with z kept in pre
  // [T, out] for the activation's backward; without act, y = z and pre must be empty. Defined
  // as matmul, add_bias and activation_fwd in turn, rounding where they do: a bf16 z is
  // rounded after the product and again after the bias, and act reads z as stored. The CPU
  // backend runs exactly that; a GPU may form act(x @ w^T + bias) in the GEMM's epilogue,
  // rounding once (within bf16 tolerance). y and pre must not overlap each other or x, w, bias.
  virtual void matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias,
                               std::optional<Activation> act) = 0;

  // --- normalisation (x, out [T,H]; mean, rstd [T]) ------------------------------------
  virtual void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias,
                             float eps) = 0;                      // bias may be empty (data == nullptr)
  virtual void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight,
                             Tensor mean, Tensor rstd) = 0;       // dx, dweight, dbias acc
  virtual void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) = 0;
  virtual void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight,
                           Tensor rstd) = 0;                      // dx, dweight acc
  // The residual add and the norm after it in one pass: sum = a + b, then the norm of sum as
  // stored (rounded first when sum is bf16) into out, mean, rstd; equal to add() followed by
  // layernorm_fwd / rmsnorm_fwd (bit for bit on the CPU backend). sum may be a or b (the same
  // memory and dtype) but must not partly overlap them; out must not overlap sum, a or b.
  virtual void add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                                 Tensor bias, float eps) = 0;  // bias may be empty
  virtual void add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                               float eps) = 0;

  // --- attention pieces ---------------------------------------------------------------
  // qkv rows hold, per query group g, [heads_per_group query heads, 1 key, 1 value] of
  // head_dim each (Megatron's linear_qkv layout). q [T, groups*hpg*D], k/v [T, groups*D].
  virtual void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                         int64_t head_dim) = 0;
  virtual void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                         int64_t head_dim) = 0;                   // inverse of qkv_split, overwrites dqkv
  // Rotary embedding in place on x [T, heads, head_dim]; token t sits at positions[t] (i32).
  // Non-interleaved (rotate-half) over the first rotary_dim channels, as Megatron does.
  // inverse = true applies the transposed rotation (the backward of the forward).
  virtual void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
                    bool inverse) = 0;
  // qkv_split, then rope on q (groups*hpg heads) and k (groups heads): one pass over qkv on a
  // GPU. The default runs those three ops (ops_fused.cc), so it gives their bits.
  virtual void qkv_split_rope(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                              int64_t head_dim, Tensor positions, int64_t rotary_dim, float base);
  // Its backward: rope(inverse) on dq and dk, then qkv_merge into dqkv (overwritten). dq and
  // dk are scratch: their contents afterwards are unspecified (the default rotates them in
  // place).
  virtual void qkv_merge_rope(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                              int64_t head_dim, Tensor positions, int64_t rotary_dim, float base);
  // q [seq_q*B, heads*D], k/v [seq_kv*B, groups*D] (token t = s*B + b); out like q;
  // lse [seq_q*B, heads] (token-major like q): the natural-log log-sum-exp of each query's
  // scaled scores over the keys it sees.
  virtual void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) = 0;
  // Overwrites dq, dk, dv. out and lse may be those of a larger attention that this call's
  // keys are part of (context parallelism): probabilities are exp(score - lse) and
  // D_i = dout_i . out_i, so the gradients are this key block's share of the whole.
  virtual void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                             Tensor out, Tensor lse, const AttentionDims& d) = 0;
  // Merges the attention of the same queries over further keys into a running result:
  // out [T, heads*D], lse [T, heads] and part_out, part_lse alike. lse' = log(exp(lse) +
  // exp(part_lse)); out' = out * exp(lse - lse') + part_out * exp(part_lse - lse'). A row
  // with lse = -inf (no keys yet) takes the part as it is.
  virtual void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads,
                               int64_t head_dim) = 0;
  // Which implementation serves attention calls like `d` whose tensors are `dtype`, in a few
  // words for a run's first log line (a GPU may use a library's fused kernels for some calls
  // and its own for others, and says why). May build and cache what such calls need.
  virtual std::string attention_summary(const AttentionDims& d, DType dtype) {
    (void)d;
    (void)dtype;
    return "fp32 reference attention";
  }

  // --- MLP ----------------------------------------------------------------------------
  // gated: x [T, 2F] rows [gate | up], out [T, F] = act(gate) * up; else out = act(x).
  virtual void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) = 0;
  virtual void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) = 0;  // overwrites dx

  // --- dropout (mask regenerated from the key, never stored) ---------------------------
  // The dropout seed: a 64-bit value the backend keeps in its own memory, which every op
  // drawing a dropout mask (dropout_fwd/bwd, attention with dropout_p > 0) XORs into its key
  // when it runs: the mask of key k is drawn from stream k ^ seed. It is how a graph replays
  // with another micro-batch's masks (the keys in its calls are fixed when recorded). Set
  // before the ops that should see it, ordered with the backend's work like to_device (and
  // refused while capturing, like it); 0 at construction, and 0 leaves keys as given.
  virtual void set_dropout_seed(uint64_t seed) { dropout_seed_ = seed; }
  // x, out [R, C]; element (r, c) is kept iff dropout_keep(key ^ seed, (row_offset + r) * C + c, p).
  virtual void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) = 0;
  virtual void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) = 0;

  // --- embedding ----------------------------------------------------------------------
  // out[t,:] (=, or += when accumulate) table[ids[t] - vocab_start] for ids inside this
  // table's row range, zeros otherwise (vocab-parallel). ids i32 [T], table [V_local, H].
  virtual void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) = 0;
  virtual void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) = 0;  // dtable acc

  // --- cross-entropy, in vocab-parallel pieces ------------------------------------------
  // logits [T, V_local]; column c is vocabulary id vocab_start + c; ids >= vocab_valid are
  // padding and excluded from the softmax. targets i32 [T]; per-token outputs [T].
  virtual void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) = 0;
  // sumexp = sum exp(logit - row_max); target_logit = logit of the target (0 when the target
  // is outside this rank's range).
  virtual void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                                int64_t vocab_start, int64_t vocab_valid) = 0;
  // ce_row_max and ce_sumexp_target in one pass over the logits (an online softmax on a GPU:
  // the running sum is rescaled as the running max grows, so its bits may differ from the two
  // passes'). The default runs the two ops (ops_fused.cc). Under vocab parallelism the pieces
  // are this rank's; they combine as sumexp = sum_r sumexp_r * exp(row_max_r - max_r row_max_r).
  virtual void ce_stats(Tensor row_max, Tensor sumexp, Tensor target_logit, Tensor logits, Tensor targets,
                        int64_t vocab_start, int64_t vocab_valid);
  // loss = log(sumexp) + row_max - target_logit
  virtual void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) = 0;
  // dlogits = (softmax - onehot(target)) * grad_scale[t], f32 or bf16 (rounded once from the
  // fp32 value). An f32 dlogits may alias logits; a bf16 one must not overlap it.
  virtual void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
                      int64_t vocab_start, int64_t vocab_valid) = 0;

  // --- mixture of experts ---------------------------------------------------------------
  // Router top-k over logits [T, E] (fp32). Selection and probabilities (Megatron's
  // topk_routing_with_score_function):
  //   kSoftmax, pre_softmax = false: the k largest logits; probs = softmax over those k.
  //   kSoftmax, pre_softmax = true:  scores = softmax over all E; the k largest; probs = those
  //                                  scores (not renormalised).
  //   kSigmoid: scores = sigmoid(logits); the k largest; probs = scores / (their sum + 1e-20)
  //             when k > 1 (Megatron's epsilon); pre_softmax is ignored.
  // Ties (of the fp32 scores) go to the lower expert index. indices i32 [T, k] and probs
  // [T, k] are in descending score order. scores [T, E] receives the per-expert scores the
  // load-balancing loss uses: softmax over all E (kSoftmax), sigmoid / (its sum over E +
  // 1e-20) (kSigmoid); it may be empty (no load-balancing loss).
  virtual void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn,
                           bool pre_softmax) = 0;
  // Backward: dlogits [T, E] (overwritten) from dprobs [T, k] (through the selected probs)
  // plus dscores [T, E] (through the load-balancing scores; may be empty). Recomputes what it
  // needs from logits and indices.
  virtual void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices,
                               int64_t k, RouterScore fn, bool pre_softmax) = 0;
  // z-loss pieces: lse [T] = logsumexp of each row of logits [T, E]; backward dlogits [T,E] +=
  // scale * 2 * lse[t] * softmax(logits)[t, e] (the gradient of scale * sum_t lse[t]^2).
  virtual void router_lse(Tensor lse, Tensor logits) = 0;
  virtual void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) = 0;

  // Permutation of token rows into expert order and back. rows i32 [T, k]: the row of
  // x_perm that holds token t's j-th choice, or -1 when that choice was dropped.
  //   moe_permute:   x_perm[rows[t, j]] = x[t]            (x [T, H], x_perm [R, H]; rows of
  //                  x_perm no choice points to are zeroed: padding to capacity)
  //   moe_unpermute: out[t] = sum_j probs[t, j] * y[rows[t, j]] over kept choices
  //                  (y [R, H], out [T, H] overwritten; probs [T, k] or empty for all ones)
  // Their backwards: moe_permute_bwd dx[t] = sum_j dx_perm[rows[t, j]] (dx overwritten);
  // moe_unpermute_bwd dy[rows[t, j]] = probs[t, j] * dout[t] (dy overwritten; rows of dy no
  // choice points to are zeroed) and dprobs[t, j] = dout[t] . y[rows[t, j]] (0 when dropped;
  // skipped when dprobs is empty, and then y may be empty too). Deterministic: each output
  // element is one fixed-order sum.
  virtual void moe_permute(Tensor x_perm, Tensor x, Tensor rows) = 0;
  virtual void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) = 0;
  virtual void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) = 0;
  virtual void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) = 0;

  // Grouped GEMM over consecutive row groups: for group g of counts[g] rows (host array of
  // `groups` counts; a group may be empty), c_g = op(a_g) @ op(b_g) + beta * c_g, where
  // a_g, c_g are the group's rows of a and c, and b_g = b[g] of a stacked b [groups, ...].
  // Forms (the three a linear layer needs, weights [out, in] per group):
  //   kForward   c[R, out] = a[R, in] @ b[g]^T
  //   kInputGrad c[R, in]  = a[R, out] @ b[g]          (a = dy)
  //   kWeightGrad c[g] = a_g^T @ b_g + beta * c[g] with a = dy [R, out], b = x [R, in],
  //               c [groups, out, in]; an empty group leaves beta * c[g] (zeros at beta 0)
  virtual void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                              float beta) = 0;

  // --- optimizer ----------------------------------------------------------------------
  virtual void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) = 0;
  // adamw on each of `count` pieces at its own weight decay, then each compute_copy given
  // = the updated param rounded to nearest even: bit for bit adamw and cast piece by piece
  // (the default, backend/ops_optimizer.cc); a GPU updates every piece in one launch.
  // Pieces must not overlap.
  virtual void adamw_multi(const AdamWTensor* tensors, int64_t count, const AdamWArgs& a);
  // acc (f64 [1], backend memory) += sum x^2 in double, with no host read: a norm over
  // many tensors reads the host once. The same bits as acc + sum_squares(x).
  virtual void sum_squares_acc(Tensor acc, Tensor x);
  // factor (f32 [1]) = the clipping coefficient of the norm sqrt(sumsq) (sumsq f64 [1]):
  // max_norm / (norm + 1e-6) in double, rounded to f32, where that is below 1; else 1 (and
  // always 1 when max_norm <= 0: clipping off). Megatron's rule, bit for bit on the host.
  virtual void grad_clip_factor(Tensor factor, Tensor sumsq, double max_norm);

 protected:
  uint64_t dropout_seed_ = 0;  // host-memory backends' dropout seed (set_dropout_seed)
};

// The fp32 reference backend. num_threads <= 0 uses all cores.
std::unique_ptr<Ops> make_cpu_ops(int num_threads);
// The CPU ops behind device-memory discipline (backend/cpu/device_emulation.cc): memory
// from allocate() cannot be touched from the host, so device code paths are tested
// without a GPU.
std::unique_ptr<Ops> make_emulated_device_ops(int num_threads);
// Process-wide count of the emulated device's calls that bring a value to the host (to_host,
// sum_squares, dot, all_finite): each is a wait for the device on a GPU.
int64_t emulated_device_host_reads();
// Process-wide count of replays of graphs the emulated device recorded.
int64_t emulated_device_graph_replays();
// The CUDA backend on GPU `device` (src/cuda). Throws Error(kNotSupported) in a build without
// CUDA and Error(kDevice) naming the device when it cannot be used.
std::unique_ptr<Ops> make_cuda_ops(int device);

}  // namespace mpt::backend
