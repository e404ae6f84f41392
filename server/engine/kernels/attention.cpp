// Decode attention over the paged KV cache, read where it lies: no gather of a row's blocks
// into a contiguous copy, no (rows, L) score tensor between ops. float32 throughout; the
// softmax is the reference's exp(s - max) / sum, computed per split of a row's context and
// merged exactly (flash-decoding), so the result differs from torch's only in summation order
// and in exp's last bit. AVX2 + FMA; threads: pool.h.

#include <immintrin.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "pool.h"
#include "simd.h"

namespace {

using banterbox::exp_nonpositive;
using banterbox::hmax;
using banterbox::hsum;
using banterbox::sum8;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  const float* q;       // (D, nkv * G * HD), rows q_stride apart
  int64_t q_stride;
  const float* keys;    // (nkv, num_blocks, bs, HD): the cache's K half
  const float* values;  // the same shape: its V half
  const int64_t* table;  // (D, width) block ids
  const int64_t* lengths;  // (D,) visible keys of each row
  int64_t width, num_blocks, nkv, groups, bs;
  int64_t split_blocks, num_splits;  // each row's context cut into splits of this many blocks
  float scale;
  float* partial;  // per (row, kv head, split): groups x (max, sum, HD accumulators)
};

// One (row, kv head, split): for each query of the head's group, the split's max score m,
// sum of exp(s - m) and sum of exp(s - m) * v, written to its partial slot.
template <int HD>
void attend_split(const Problem& p, int64_t unit) {
  const int64_t split = unit % p.num_splits;
  const int64_t head = unit / p.num_splits % p.nkv;
  const int64_t row = unit / p.num_splits / p.nkv;
  const int64_t G = p.groups, bs = p.bs;
  float* part = p.partial + unit * G * (HD + 2);
  const int64_t length = p.lengths[row];
  const int64_t b0 = split * p.split_blocks;
  const int64_t b1 = std::min((length + bs - 1) / bs, b0 + p.split_blocks);
  if (b0 >= b1) {  // nothing of this row here
    for (int64_t g = 0; g < G; ++g) {
      part[g * (HD + 2)] = kNegInf;
      part[g * (HD + 2) + 1] = 0.0f;
    }
    return;
  }
  const int64_t first = b0 * bs, count = std::min(b1 * bs, length) - first;
  const int64_t padded = (count + 7) / 8 * 8;
  thread_local std::vector<float> score_buffer;
  if (static_cast<int64_t>(score_buffer.size()) < G * padded) score_buffer.resize(G * padded);
  float* scores = score_buffer.data();  // (G, padded)
  const int64_t* blocks = p.table + row * p.width;
  const int64_t block_floats = bs * HD;
  const float* head_keys = p.keys + head * p.num_blocks * block_floats;
  const float* head_values = p.values + head * p.num_blocks * block_floats;
  const float* q_head = p.q + row * p.q_stride + head * G * HD;

  // Scores, a block at a time; each block's keys stay in L1 for every query of the group.
  for (int64_t b = b0; b < b1; ++b) {
    const float* k_block = head_keys + blocks[b] * block_floats;
    const int64_t in_block = std::min(bs, first + count - b * bs);  // visible keys here
    for (int64_t g = 0; g < G; ++g) {
      __m256 qv[HD / 8];
      const __m256 scale = _mm256_set1_ps(p.scale);
      for (int d = 0; d < HD / 8; ++d) qv[d] = _mm256_mul_ps(_mm256_loadu_ps(q_head + g * HD + 8 * d), scale);
      float* out = scores + g * padded + (b * bs - first);
      for (int64_t t = 0; t < in_block; t += 8) {  // 8 keys; the block holds all 8 (bs % 8 == 0)
        __m256 acc[8];
        for (int i = 0; i < 8; ++i) {
          const float* key = k_block + (t + i) * HD;
          __m256 a = _mm256_mul_ps(qv[0], _mm256_loadu_ps(key));
          for (int d = 1; d < HD / 8; ++d) a = _mm256_fmadd_ps(qv[d], _mm256_loadu_ps(key + 8 * d), a);
          acc[i] = a;
        }
        _mm256_storeu_ps(out + t, sum8(acc));
      }
    }
  }
  // Softmax numerators: the keys past `count` in the last 8 are -inf, so exp gives them 0.
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * padded;
    for (int64_t i = count; i < padded; ++i) s[i] = kNegInf;
    __m256 mv = _mm256_set1_ps(kNegInf);
    for (int64_t i = 0; i < padded; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
    const float m = hmax(mv);
    const __m256 mb = _mm256_set1_ps(m);
    __m256 lv = _mm256_setzero_ps();
    for (int64_t i = 0; i < padded; i += 8) {
      const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + i), mb));
      _mm256_storeu_ps(s + i, e);
      lv = _mm256_add_ps(lv, e);
    }
    part[g * (HD + 2)] = m;
    part[g * (HD + 2) + 1] = hsum(lv);
  }
  // Weighted values, per query of the group, a block at a time.
  for (int64_t g = 0; g < G; ++g) {
    __m256 acc[HD / 8];
    for (int d = 0; d < HD / 8; ++d) acc[d] = _mm256_setzero_ps();
    const float* s = scores + g * padded;
    for (int64_t b = b0; b < b1; ++b) {
      const float* v_block = head_values + blocks[b] * block_floats;
      const int64_t in_block = std::min(bs, first + count - b * bs);
      const float* w = s + (b * bs - first);
      for (int64_t t = 0; t < in_block; ++t) {
        const __m256 e = _mm256_broadcast_ss(w + t);
        const float* value = v_block + t * HD;
        for (int d = 0; d < HD / 8; ++d) acc[d] = _mm256_fmadd_ps(e, _mm256_loadu_ps(value + 8 * d), acc[d]);
      }
    }
    float* out = part + g * (HD + 2) + 2;
    for (int d = 0; d < HD / 8; ++d) _mm256_storeu_ps(out + 8 * d, acc[d]);
  }
}

template <int HD>
void attend(const Problem& p, int64_t num_rows, float* out) {
  const int64_t num_units = num_rows * p.nkv * p.num_splits;
  banterbox::parallel_chunks(num_units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) attend_split<HD>(p, u);
  });
  // Merge the splits: with M the largest split max, out = sum_s e^(m_s - M) acc_s / sum_s
  // e^(m_s - M) l_s, the softmax over the whole context.
  const int64_t G = p.groups, stride = G * (HD + 2);
  for (int64_t rh = 0; rh < num_rows * p.nkv; ++rh) {
    const float* parts = p.partial + rh * p.num_splits * stride;
    for (int64_t g = 0; g < G; ++g) {
      float m = kNegInf;
      for (int64_t s = 0; s < p.num_splits; ++s) m = std::max(m, parts[s * stride + g * (HD + 2)]);
      float total = 0.0f;
      float acc[HD] = {};
      for (int64_t s = 0; s < p.num_splits; ++s) {
        const float* part = parts + s * stride + g * (HD + 2);
        if (part[0] == kNegInf) continue;
        const float w = p.num_splits == 1 ? 1.0f : std::exp(part[0] - m);
        total += w * part[1];
        for (int d = 0; d < HD; ++d) acc[d] += w * part[2 + d];
      }
      float* o = out + (rh * G + g) * HD;  // row-major (row, kv head, group, HD)
      for (int d = 0; d < HD; ++d) o[d] = acc[d] / total;
    }
  }
}

// q (D, nh * hd) float32 rows, one query per decode row; cache (2, nkv, num_blocks, bs, hd)
// float32; table (D, width) int64 block ids; lengths (D,) int64, each >= 1 and <= width * bs.
// Returns (D, nh * hd): softmax(q k^T * scale) v per query head, GQA groups of nh / nkv.
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& cache,
                                     const torch::Tensor& table, const torch::Tensor& lengths,
                                     double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && q.dim() == 2, "q must be (D, nh * hd) float32");
  TORCH_CHECK(cache.dtype() == torch::kFloat32 && cache.dim() == 5 && cache.size(0) == 2 &&
                  cache.is_contiguous(),
              "cache must be a contiguous (2, nkv, blocks, block_size, hd) float32 tensor");
  TORCH_CHECK(table.dtype() == torch::kInt64 && table.dim() == 2 && table.size(0) == q.size(0),
              "table must be (D, width) int64");
  TORCH_CHECK(lengths.dtype() == torch::kInt64 && lengths.dim() == 1 && lengths.size(0) == q.size(0),
              "lengths must be (D,) int64");
  const int64_t D = q.size(0), nkv = cache.size(1), num_blocks = cache.size(2);
  const int64_t bs = cache.size(3), hd = cache.size(4);
  TORCH_CHECK(q.size(1) % (nkv * hd) == 0, "q's width is not a multiple of nkv * hd");
  TORCH_CHECK(bs % 8 == 0, "block size must be a multiple of 8");
  // q may be a view of the fused projection's output: rows apart, each row's heads contiguous.
  const torch::Tensor qc = q.stride(1) == 1 ? q : q.contiguous();
  const torch::Tensor tc = table.contiguous(), lc = lengths.contiguous();
  const int64_t width = tc.size(1);
  const int64_t* lp = lc.data_ptr<int64_t>();
  const int64_t* tp = tc.data_ptr<int64_t>();
  int64_t total_blocks = 0, max_blocks = 0;
  for (int64_t r = 0; r < D; ++r) {
    TORCH_CHECK(lp[r] >= 1 && lp[r] <= width * bs, "row ", r, " length ", lp[r], " outside its table");
    const int64_t nb = (lp[r] + bs - 1) / bs;
    for (int64_t b = 0; b < nb; ++b)
      TORCH_CHECK(tp[r * width + b] >= 0 && tp[r * width + b] < num_blocks, "block id out of range");
    total_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
  }
  // Splits: enough units to keep every thread busy (8 per thread), each at least 4 blocks and
  // at most 64 (1,024 keys at bs 16: the scores of a split stay in L1/L2).
  const int64_t threads = at::get_num_threads();
  const int64_t split_blocks =
      std::clamp<int64_t>(total_blocks * nkv / std::max<int64_t>(1, 8 * threads), 4, 64);
  const int64_t num_splits = (max_blocks + split_blocks - 1) / split_blocks;
  const int64_t groups = q.size(1) / (nkv * hd);
  torch::Tensor out = torch::empty({D, q.size(1)}, qc.options());
  if (D == 0) return out;
  std::vector<float> partial(D * nkv * num_splits * groups * (hd + 2));
  const float* base = cache.data_ptr<float>();
  const Problem p{qc.data_ptr<float>(), qc.stride(0), base, base + nkv * num_blocks * bs * hd, tp, lp, width,
                  num_blocks, nkv, groups, bs, split_blocks, num_splits, static_cast<float>(scale),
                  partial.data()};
  float* op = out.data_ptr<float>();
  switch (hd) {
    case 16: attend<16>(p, D, op); break;
    case 32: attend<32>(p, D, op); break;
    case 64: attend<64>(p, D, op); break;
    case 128: attend<128>(p, D, op); break;
    default: TORCH_CHECK(false, "head size ", hd, " has no kernel (16, 32, 64 or 128)");
  }
  return out;
}

// One row's heads rotated in place: RoPE at the row's angle, cos/sin (hd/2,). Interleaved
// rotates the pairs (x[2i], x[2i+1]), else the halves (x[i], x[i + hd/2]). Each product is
// rounded before the sum, as the reference's elementwise ops round (no fused multiply-add).
__attribute__((optimize("fp-contract=off"))) void rotate_row(float* x, int64_t heads, int64_t hd,
                                                             const float* cos, const float* sin,
                                                             bool interleaved) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h, x += hd) {
    for (int64_t i = 0; i < half; ++i) {
      float* a = interleaved ? x + 2 * i : x + i;
      float* b = interleaved ? x + 2 * i + 1 : x + i + half;
      const float x1 = *a, x2 = *b, c = cos[i], s = sin[i];
      const float p = x1 * c, q = x2 * s, r = x2 * c, t = x1 * s;
      *a = p - q;
      *b = r + t;
    }
  }
}

// qkv (T, (nh + 2 nkv) hd) float32, the fused projection's output, q then k then v heads: q and
// k rotated in place by each row's RoPE angle (cos, sin: T x hd/2 values each), then each
// row's k and v written to its cache slot. cache (2, nkv, blocks, bs, hd); slots (T,) int64,
// slot = block * bs + offset. Replaces a dozen small torch ops a layer.
void rope_write_kv(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                   const torch::Tensor& cache, const torch::Tensor& slots, int64_t num_heads,
                   bool interleaved) {
  TORCH_CHECK(qkv.dtype() == torch::kFloat32 && qkv.dim() == 2 && qkv.is_contiguous(),
              "qkv must be a contiguous (T, width) float32 tensor");
  TORCH_CHECK(cache.dtype() == torch::kFloat32 && cache.dim() == 5 && cache.size(0) == 2 &&
                  cache.is_contiguous(),
              "cache must be a contiguous (2, nkv, blocks, block_size, hd) float32 tensor");
  const int64_t T = qkv.size(0), nkv = cache.size(1), hd = cache.size(4);
  const int64_t num_slots = cache.size(2) * cache.size(3);
  TORCH_CHECK(hd % 2 == 0 && num_heads > 0 && qkv.size(1) == (num_heads + 2 * nkv) * hd,
              "qkv's width is not (num_heads + 2 * nkv) * hd");
  for (const torch::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->dtype() == torch::kFloat32 && t->is_contiguous() && t->numel() == T * hd / 2,
                "cos and sin must be contiguous float32, T x hd/2 values");
  TORCH_CHECK(slots.dtype() == torch::kInt64 && slots.dim() == 1 && slots.size(0) == T &&
                  slots.is_contiguous(),
              "slots must be (T,) int64");
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < num_slots, "slot ", sp[t], " outside the cache");
  float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* snp = sin.data_ptr<float>();
  float* keys = cache.data_ptr<float>();
  float* values = keys + nkv * num_slots * hd;
  const int64_t width = qkv.size(1);
  banterbox::parallel_chunks(T, std::max<int64_t>(1, 16384 / width), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* row = xp + t * width;
      rotate_row(row, num_heads + nkv, hd, cp + t * hd / 2, snp + t * hd / 2, interleaved);
      const float* k = row + num_heads * hd;
      const float* v = k + nkv * hd;
      for (int64_t j = 0; j < nkv; ++j) {
        std::copy(k + j * hd, k + (j + 1) * hd, keys + (j * num_slots + sp[t]) * hd);
        std::copy(v + j * hd, v + (j + 1) * hd, values + (j * num_slots + sp[t]) * hd);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(banterbox, m) {
  m.def("rope_write_kv(Tensor(a!) qkv, Tensor cos, Tensor sin, Tensor(b!) cache, Tensor slots, "
        "int num_heads, bool interleaved) -> ()",
        &rope_write_kv);
  m.def("paged_decode_attention(Tensor q, Tensor cache, Tensor table, Tensor lengths, float scale) -> Tensor",
        &paged_decode_attention);
}
