// NT-Xent / InfoNCE on the CPU (C++17 + OpenMP): fused, tiled, the logits never stored.
//
// Math (radengine/ops/contrastive_loss.py is the specification). Rows U (M, D) and
// columns V (C, D), contiguous fp32 or fp64 (already L2-normalised by the caller when the
// loss normalises), temperature T, logits s_ac = u_a . v_c / T, with optional twists:
//   self_mask:    column col_offset + a is row a itself and is left out (NT-Xent);
//   pos_in_cols:  row a's positive is column col_offset + (a + half) mod M (NT-Xent:
//                 half = M / 2; in-batch InfoNCE: col_offset = half = 0, the diagonal);
//                 otherwise ``extra`` (M) holds the positive logit (InfoNCE with a queue);
//   symmetric:    V is U (single-process NT-Xent: the 2N rows against themselves).
// Forward: the log-sum-exp of each row's negatives, lse_neg_a (over the unmasked columns
// other than the positive, which is kept apart as s_a,pos), then with x = lse_neg - s_pos
// (in double): the per-row loss softplus(x) = lse_a - s_a,pos, and the statistics
// lse_a = s_a,pos + softplus(x) and log(1 - p_a) = x - softplus(x), p_a = exp(s_a,pos - lse_a)
// the positive's probability (the mean is taken by the caller). Neither the loss nor
// 1 - p is formed by subtracting nearly equal numbers: for a confident row at low
// temperature lse - s_pos and exp(s_pos - lse) - 1 lose every digit to the rounding of lse.
// Backward, with P = exp(s - lse) and Y the positive one-hot, G = grad (P - Y) / (M T):
//   grad_U = G V, grad_V = G^T U  (symmetric: grad_U = (G + G^T) U),
// where the positive's entry p - 1 is taken as -exp(log(1 - p)) from the statistics.
//
// Tiles of kContrastiveBlock (128) rows x 128 columns. Each tile's logits come from a
// register-blocked micro-kernel on packed, L2-resident panels and live only in a per-thread
// 128 x 128 scratch; the log-sum-exp is accumulated online (running max and sum, in
// double). Symmetric case: s_ac = s_ca, so only tiles J >= I are computed. The forward
// updates the row statistics of block I (along rows) and of block J (along columns) from one
// tile; the backward forms H = exp(S - lse_I[:, None]) + exp(S - lse_J[None, :]) - 2 Y on
// the tile and adds H U_J into grad_I and H^T U_I into grad_J: about 2 M^2 D multiply-adds
// for forward + backward. The general case (gathered columns, InfoNCE) computes the
// log-sum-exp along row blocks, then the row gradient over row blocks and the column
// gradient over column blocks, recomputing the logits (M C D forward, 4 M C D backward).
//
// exp once per logit where possible: with K the tile's maximum logit, exp(s - m_a) =
// exp(s - K) exp(K - m_a), so one exp per logit serves both the row and the column
// statistics (forward) and both softmax terms (backward) whenever every row and column
// reference m is within kSpread = 40 of K (entries that matter then stay normal floats);
// tiles with a wider spread (very low T, or raw dot products) take two exps per logit.
//
// Determinism: no floating-point atomics, and results do not depend on the thread count.
// The symmetric tiles follow a round-robin tournament (every round pairs each row block with
// at most one other, so the tiles of a round touch disjoint rows); threads take them in
// round order without barriers, a tile starting once the earlier tiles of its two blocks
// are done (integer counters), so every block receives its contributions in one fixed
// order. The general case gives each row (or column) block to one task that walks the
// other blocks in order.
//
// Memory: O((M + C) D) (a zero-padded copy and a blocked transpose of U and V, and the
// fp32/fp64 gradient accumulators) plus one 128 x 128 tile per thread; never M x C.
// Traffic: U and V are read from L2 once per tile (128 rows of D values per 128^2 logits).
//
// ISA: fp32 runs AVX-512 intrinsics (micro-kernels and a polynomial exp) where the CPU has
// AVX-512F/BW/VL/DQ, else portable C++ compiled for AVX2+FMA where available, else for the
// baseline; fp64 always runs the portable code (compiled for the best of the three).
// Denormals are flushed inside the kernels' threads (they only arise from terms far below
// a row's largest).
#pragma once

#include <cstdint>

namespace radengine::cpu {

inline constexpr int kContrastiveBlock = 128;

// Instruction-set choice: kIsaAuto picks the best the CPU has; a lower value caps it
// (tests run every path that the machine can).
enum ContrastiveIsa : int { kIsaAuto = 0, kIsaPortable = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

struct ContrastiveProblem {
  const void* u = nullptr;      // (M, D) rows, contiguous
  const void* v = nullptr;      // (C, D) columns, contiguous; unused when symmetric
  const void* extra = nullptr;  // (M) positive logits that are not columns, or null
  int64_t M = 0, C = 0, D = 0;
  double inv_t = 1.0;  // 1 / temperature
  int64_t col_offset = 0, half = 0;
  bool self_mask = false, pos_in_cols = false, symmetric = false;
  bool is_double = false;  // fp64 data (and outputs) instead of fp32
};

// stats (2 M: lse, then log(1 - p_pos)) and row_loss (M) = lse - positive logit, in the
// data dtype.
void contrastive_forward(const ContrastiveProblem& p, void* stats, void* row_loss, int isa,
                         int num_threads);

// grad_u (M, D) = grad * d(mean row loss)/dU, and, when grad_v is not null (and not
// symmetric), grad_v (C, D) = grad * d/dV; both overwritten, in the data dtype. ``stats``
// (2 M) are the forward's.
void contrastive_backward(const ContrastiveProblem& p, double grad, const void* stats,
                          void* grad_u, void* grad_v, int isa, int num_threads);

// The code path fp32 takes for a requested isa on this CPU: "avx512", "avx2" or "portable".
const char* contrastive_isa_name(int isa);

}  // namespace radengine::cpu
