// GGUF block formats kept packed: dequantize rows, and x @ W^T with W dequantized on the fly.
// Every weight is dequantized to exactly the float32 value the gguf package computes, and the
// products are accumulated in float32: the result is the dense reference's up to summation
// order. Activations are never quantized. AVX2 + FMA + F16C; threads: see pool.h.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "pool.h"
#include "simd.h"

namespace {

using banterbox::exp_nonpositive;
using banterbox::hsum;
using banterbox::parallel_chunks;
using banterbox::sum4;
using banterbox::sum8;

// GGML type ids, as gguf.GGMLQuantizationType numbers them.
constexpr int64_t kQ4_0 = 2;
constexpr int64_t kQ4_1 = 3;
constexpr int64_t kQ8_0 = 8;
constexpr int64_t kQ4_K = 12;
constexpr int64_t kQ6_K = 14;

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return _cvtsh_ss(h);
}

// 8 unsigned bytes (the low 8 of v) as floats.
inline __m256 u8x8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 i8x8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// Each format: QK values per block of BYTES bytes; dequant() writes the block's QK floats.
struct Q4_0 {
  static constexpr int QK = 32, BYTES = 18;
  static void dequant(const uint8_t* b, float* out) {
    const __m256 d = _mm256_set1_ps(half_at(b));
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
    // (q - 8) as int8, then d * (q - 8): both exact, like the reference.
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), eight);
    _mm256_storeu_ps(out + 0, _mm256_mul_ps(d, i8x8(lo)));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(d, i8x8(_mm_srli_si128(lo, 8))));
    _mm256_storeu_ps(out + 16, _mm256_mul_ps(d, i8x8(hi)));
    _mm256_storeu_ps(out + 24, _mm256_mul_ps(d, i8x8(_mm_srli_si128(hi, 8))));
  }
};

struct Q4_1 {
  static constexpr int QK = 32, BYTES = 20;
  static void dequant(const uint8_t* b, float* out) {
    const __m256 d = _mm256_set1_ps(half_at(b));
    const __m256 m = _mm256_set1_ps(half_at(b + 2));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4));
    const __m128i lo = _mm_and_si128(v, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    // d * q is exact (11 by 4 bits), so one fma rounds like the reference's (d * q) + m.
    _mm256_storeu_ps(out + 0, _mm256_fmadd_ps(d, u8x8(lo), m));
    _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(d, u8x8(_mm_srli_si128(lo, 8)), m));
    _mm256_storeu_ps(out + 16, _mm256_fmadd_ps(d, u8x8(hi), m));
    _mm256_storeu_ps(out + 24, _mm256_fmadd_ps(d, u8x8(_mm_srli_si128(hi, 8)), m));
  }
};

struct Q8_0 {
  static constexpr int QK = 32, BYTES = 34;
  static void dequant(const uint8_t* b, float* out) {
    const __m256 d = _mm256_set1_ps(half_at(b));
    for (int i = 0; i < 4; ++i) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * i));
      _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(d, i8x8(v)));
    }
  }
};

// Four 64-value chunks; chunk c's low nibbles are sub-block 2c, its high nibbles 2c + 1.
struct Q4_K {
  static constexpr int QK = 256, BYTES = 144;
  static void dequant(const uint8_t* b, float* out) {
    const float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t* s = b + 4;
    const uint8_t* q = b + 16;
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 4; ++j) {  // 6-bit scales and mins, packed as gguf's get_scale_min reads
      sc[j] = s[j] & 63;
      mn[j] = s[j + 4] & 63;
      sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
      mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * c));
      const __m256i nib[2] = {_mm256_and_si256(v, mask),
                              _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)};
      for (int h = 0; h < 2; ++h) {
        // d * sc and dmin * mn are exact, and so is ds * q: one fma rounds like ds * q - dm.
        const __m256 ds = _mm256_set1_ps(d * sc[2 * c + h]);
        const __m256 neg_dm = _mm256_set1_ps(-(dmin * mn[2 * c + h]));
        const __m128i low = _mm256_castsi256_si128(nib[h]);
        const __m128i high = _mm256_extracti128_si256(nib[h], 1);
        float* o = out + 64 * c + 32 * h;
        _mm256_storeu_ps(o + 0, _mm256_fmadd_ps(ds, u8x8(low), neg_dm));
        _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(ds, u8x8(_mm_srli_si128(low, 8)), neg_dm));
        _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(ds, u8x8(high), neg_dm));
        _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(ds, u8x8(_mm_srli_si128(high, 8)), neg_dm));
      }
    }
  }
};

// Two 128-value halves: 4 low bits from ql (64 bytes, low then high nibbles), 2 high bits from
// qh (32 bytes, four 2-bit fields); 16 sub-blocks of 16 with int8 scales; d at the end.
struct Q6_K {
  static constexpr int QK = 256, BYTES = 210;
  static void dequant(const uint8_t* b, float* out) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_at(b + 208);
    alignas(32) int8_t q[256];
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i bias = _mm256_set1_epi8(32);
    for (int h = 0; h < 2; ++h) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * h));
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * h + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * h));
      const __m256i low[4] = {_mm256_and_si256(a, m4), _mm256_and_si256(c, m4),
                              _mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                              _mm256_and_si256(_mm256_srli_epi16(c, 4), m4)};
      for (int s = 0; s < 4; ++s) {
        // The 2-bit field is < 4, so shifting 16-bit lanes left by 4 bleeds into no neighbour.
        const __m256i top = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * s), m2);
        const __m256i v = _mm256_or_si256(low[s], _mm256_slli_epi16(top, 4));
        _mm256_store_si256(reinterpret_cast<__m256i*>(q + 128 * h + 32 * s),
                           _mm256_sub_epi8(v, bias));
      }
    }
    for (int g = 0; g < 32; ++g) {  // d * scale is exact; times q it rounds like the reference
      const __m256 ds = _mm256_set1_ps(d * static_cast<float>(scales[g / 2]));
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * g));
      _mm256_storeu_ps(out + 8 * g, _mm256_mul_ps(ds, i8x8(v)));
    }
  }
};

template <class F>
void dequant_rows(const uint8_t* w, int64_t row_bytes, int64_t K, int64_t r0, int64_t r1,
                  float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    float* o = out + (r - r0) * K;
    for (int64_t blk = 0; blk < K / F::QK; ++blk) F::dequant(row + blk * F::BYTES, o + blk * F::QK);
  }
}

// out[i][j] = dot(x row i, w row j) for an MR x NR tile; K is a multiple of 8. 12 accumulators,
// 3 weight vectors and 1 activation vector: the 16 ymm registers, FMA-bound.
template <int MR, int NR>
void tile(const float* x, const float* w, int64_t K, float* out, int64_t ldo) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm256_loadu_ps(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  // The MR * NR lane sums through hadd trees, 8 or 4 at a time (a third of one-by-one's ops).
  constexpr int T = MR * NR;
  const __m256* flat = &acc[0][0];
  alignas(32) float sums[T];
  int t = 0;
  for (; t + 8 <= T; t += 8) _mm256_store_ps(sums + t, sum8(flat + t));
  for (; t + 4 <= T; t += 4) _mm_store_ps(sums + t, sum4(flat + t));
  for (; t < T; ++t) sums[t] = hsum(flat[t]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = sums[i * NR + j];
}

constexpr int kMR = 4;  // activation rows per tile
constexpr int kNR = 3;  // weight rows per tile
// Activation rows per pass over the weights: a 64 x 1536 float chunk (384 KiB) stays in L2.
constexpr int64_t kMC = 64;

using TileFn = void (*)(const float*, const float*, int64_t, float*, int64_t);

template <int MR>
constexpr TileFn tile_for(int nr) {
  return nr == 1 ? tile<MR, 1> : nr == 2 ? tile<MR, 2> : tile<MR, 3>;
}

TileFn tile_fn(int mr, int nr) {
  switch (mr) {
    case 1: return tile_for<1>(nr);
    case 2: return tile_for<2>(nr);
    case 3: return tile_for<3>(nr);
    default: return tile_for<4>(nr);
  }
}

// ---- Few-row path (decode): weights dequantized in registers, never stored. ----
// Each legacy format's block as four 8-float vectors, the exact values dequant() writes.
inline void regs(Q4_0, const uint8_t* b, __m256 w[4]) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  // Byte j of the 16 to dword lane j: the low 128-bit lane takes bytes 0-3 (or 8-11), the high
  // lane bytes 4-7 (12-15), each zero-extended; low nibbles are weights 0-15, high 16-31.
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
  const __m256i sel0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1,
                                        4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1);
  const __m256i sel1 = _mm256_add_epi32(sel0, _mm256_set1_epi32(8));
  const __m256i mask = _mm256_set1_epi32(0x0F), eight = _mm256_set1_epi32(8);
  const __m256i a = _mm256_shuffle_epi8(v, sel0), c = _mm256_shuffle_epi8(v, sel1);
  w[0] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(a, mask), eight)));
  w[1] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(c, mask), eight)));
  w[2] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(a, 4), eight)));
  w[3] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(c, 4), eight)));
}

inline void regs(Q4_1, const uint8_t* b, __m256 w[4]) {
  uint32_t dm;  // d and m converted together
  std::memcpy(&dm, b, sizeof dm);
  const __m128 dmf = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dm)));
  const __m256 d = _mm256_broadcastss_ps(dmf);
  const __m256 m = _mm256_broadcastss_ps(_mm_movehdup_ps(dmf));
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4)));
  const __m256i sel0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1,
                                        4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1);
  const __m256i sel1 = _mm256_add_epi32(sel0, _mm256_set1_epi32(8));
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const __m256i a = _mm256_shuffle_epi8(v, sel0), c = _mm256_shuffle_epi8(v, sel1);
  // One fma, as in dequant(): d * q is exact, so it rounds like the reference's (d * q) + m.
  w[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(a, mask)), m);
  w[1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(c, mask)), m);
  w[2] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), m);
  w[3] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)), m);
}

inline void regs(Q8_0, const uint8_t* b, __m256 w[4]) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  for (int i = 0; i < 4; ++i) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * i));
    w[i] = _mm256_mul_ps(d, i8x8(v));
  }
}

template <class F>
constexpr bool kInRegisters = F::QK == 32;

constexpr int64_t kPrefetchBytes = 2880;  // how far ahead of the block being read (measured)

// out[m][j] = dot(x row m, weight row j) for MR activation rows and NR weight rows.
template <class F, int MR, int NR>
void few_rows_tile(const float* x, int64_t K, const uint8_t* w, int64_t row_bytes, float* out,
                   int64_t ldo) {
  __m256 acc[MR][NR][2];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NR; ++j) acc[m][j][0] = acc[m][j][1] = _mm256_setzero_ps();
  const int64_t num_blocks = K / F::QK;
  if constexpr (kInRegisters<F>) {
    for (int64_t b = 0; b < num_blocks; ++b) {
      const float* xb = x + b * 32;
      for (int j = 0; j < NR; ++j) {
        const uint8_t* block = w + j * row_bytes + b * F::BYTES;
        // The tiles of a pass are one sequential stream, but a row is only a few hundred bytes
        // (576 values: 360 of Q4_1): too short for the hardware prefetcher to run ahead of.
        _mm_prefetch(reinterpret_cast<const char*>(block + kPrefetchBytes), _MM_HINT_T0);
        __m256 wv[4];
        regs(F{}, block, wv);
        for (int m = 0; m < MR; ++m)
          for (int s = 0; s < 4; ++s)
            acc[m][j][s & 1] =
                _mm256_fmadd_ps(wv[s], _mm256_loadu_ps(xb + m * K + 8 * s), acc[m][j][s & 1]);
      }
    }
  } else {  // K-quants: one 256-value block at a time through an L1 buffer
    alignas(32) float buf[F::QK];
    for (int64_t b = 0; b < num_blocks; ++b) {
      const float* xb = x + b * F::QK;
      for (int j = 0; j < NR; ++j) {
        F::dequant(w + j * row_bytes + b * F::BYTES, buf);
        for (int m = 0; m < MR; ++m)
          for (int s = 0; s < F::QK / 8; ++s)
            acc[m][j][s & 1] = _mm256_fmadd_ps(_mm256_load_ps(buf + 8 * s),
                                               _mm256_loadu_ps(xb + m * K + 8 * s),
                                               acc[m][j][s & 1]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NR; ++j) out[m * ldo + j] = hsum(_mm256_add_ps(acc[m][j][0], acc[m][j][1]));
}

constexpr int kFewRows = 4;  // up to this many activation rows take the register path
constexpr int kFewNR = 4;    // weight rows per pass: each x vector loaded serves all four

template <class F, int MR>
void few_rows_pass(const float* x, int64_t K, const uint8_t* w, int64_t row_bytes, int64_t n0,
                   int64_t n1, float* out, int64_t N) {
  int64_t n = n0;
  for (; n + kFewNR <= n1; n += kFewNR)
    few_rows_tile<F, MR, kFewNR>(x, K, w + n * row_bytes, row_bytes, out + n, N);
  for (; n < n1; ++n) few_rows_tile<F, MR, 1>(x, K, w + n * row_bytes, row_bytes, out + n, N);
}

template <class F>
void few_rows_matmul(const float* x, int64_t M, const uint8_t* w, int64_t N, int64_t K,
                     float* out) {
  const int64_t row_bytes = K / F::QK * F::BYTES;
  const int64_t num_groups = (N + kFewNR - 1) / kFewNR;
  // One parallel region: the output rows split evenly, a grain that keeps tiny ones on one
  // thread (a fork costs more than a 64-row GEMV).
  const int64_t grain = std::max<int64_t>(1, 16384 / (K * M));
  parallel_chunks(num_groups, grain, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * kFewNR, n1 = std::min(N, g1 * kFewNR);
    switch (M) {
      case 1: return few_rows_pass<F, 1>(x, K, w, row_bytes, n0, n1, out, N);
      case 2: return few_rows_pass<F, 2>(x, K, w, row_bytes, n0, n1, out, N);
      case 3: return few_rows_pass<F, 3>(x, K, w, row_bytes, n0, n1, out, N);
      default: return few_rows_pass<F, 4>(x, K, w, row_bytes, n0, n1, out, N);
    }
  });
}

template <class F>
void matmul(const float* x, int64_t M, const uint8_t* w, int64_t N, int64_t K, float* out) {
  if (M <= kFewRows) return few_rows_matmul<F>(x, M, w, N, K, out);
  const int64_t row_bytes = K / F::QK * F::BYTES;
  const int64_t num_groups = (N + kNR - 1) / kNR;
  parallel_chunks(num_groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> buf(kNR * K);  // kNR dequantized weight rows, L1/L2-resident
    for (int64_t m0 = 0; m0 < M; m0 += kMC) {
      const int64_t m1 = std::min(M, m0 + kMC);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t n0 = g * kNR;
        const int nr = static_cast<int>(std::min<int64_t>(kNR, N - n0));
        // The next group's packed rows start on their way while this group's tiles run.
        const uint8_t* next = w + std::min(N, n0 + 2 * kNR) * row_bytes;
        for (const uint8_t* c = w + (n0 + nr) * row_bytes; c < next; c += 64)
          _mm_prefetch(reinterpret_cast<const char*>(c), _MM_HINT_T0);
        dequant_rows<F>(w, row_bytes, K, n0, n0 + nr, buf.data());
        for (int64_t m = m0; m < m1; m += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, m1 - m));
          tile_fn(mr, nr)(x + m * K, buf.data(), K, out + m * N + n0, N);
        }
      }
    }
  });
}

template <class F>
void dequant_all(const uint8_t* w, int64_t N, int64_t K, float* out) {
  const int64_t row_bytes = K / F::QK * F::BYTES;
  parallel_chunks(N, 16, [&](int64_t r0, int64_t r1) {
    dequant_rows<F>(w, row_bytes, K, r0, r1, out + r0 * K);
  });
}

template <class Fn>
void dispatch(int64_t qtype, Fn&& fn) {
  switch (qtype) {
    case kQ4_0: return fn(Q4_0{});
    case kQ4_1: return fn(Q4_1{});
    case kQ8_0: return fn(Q8_0{});
    case kQ4_K: return fn(Q4_K{});
    case kQ6_K: return fn(Q6_K{});
    default: TORCH_CHECK(false, "unsupported GGML type ", qtype);
  }
}

void check_packed(const torch::Tensor& w, int64_t qtype, int64_t K) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.dim() == 2 && w.is_contiguous(),
              "packed weights must be a contiguous 2-D uint8 tensor");
  int64_t qk = 0, bytes = 0;
  dispatch(qtype, [&](auto f) {
    qk = decltype(f)::QK;
    bytes = decltype(f)::BYTES;
  });
  TORCH_CHECK(K > 0 && K % qk == 0, "row length ", K, " is not a multiple of ", qk);
  TORCH_CHECK(w.size(1) == K / qk * bytes, "packed row has ", w.size(1), " bytes, expected ",
              K / qk * bytes);
}

// x (M, K) float32 @ W^T, W the (N, K) matrix packed as (N, row bytes): (M, N) float32.
torch::Tensor qmatmul(const torch::Tensor& x, const torch::Tensor& w, int64_t qtype, int64_t K) {
  check_packed(w, qtype, K);
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.size(1) == K,
              "activations must be (M, ", K, ") float32");
  const torch::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), N = w.size(0);
  torch::Tensor out = torch::empty({M, N}, xc.options());
  if (M == 0 || N == 0) return out;
  dispatch(qtype, [&](auto f) {
    matmul<decltype(f)>(xc.data_ptr<float>(), M, w.data_ptr<uint8_t>(), N, K,
                        out.data_ptr<float>());
  });
  return out;
}

// The (N, K) float32 matrix of packed rows (N, row bytes).
torch::Tensor dequantize(const torch::Tensor& w, int64_t qtype, int64_t K) {
  check_packed(w, qtype, K);
  const int64_t N = w.size(0);
  torch::Tensor out = torch::empty({N, K}, torch::TensorOptions().dtype(torch::kFloat32));
  if (N == 0) return out;
  dispatch(qtype, [&](auto f) {
    dequant_all<decltype(f)>(w.data_ptr<uint8_t>(), N, K, out.data_ptr<float>());
  });
  return out;
}

// x (T, H) float32: x * rsqrt(mean(x^2) + eps) * weight, row by row, in one pass each.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "rms_norm takes (T, H) float32");
  TORCH_CHECK(weight.dtype() == torch::kFloat32 && weight.dim() == 1 && weight.size(0) == x.size(1),
              "rms_norm weight must be (H,) float32");
  const torch::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t T = xc.size(0), H = xc.size(1);
  torch::Tensor out = torch::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  parallel_chunks(T, std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* row = xp + t * H;
      float sum = 0.0f;
      for (int64_t h = 0; h < H; ++h) sum += row[h] * row[h];
      const float scale = 1.0f / std::sqrt(sum / static_cast<float>(H) + static_cast<float>(eps));
      for (int64_t h = 0; h < H; ++h) op[t * H + h] = row[h] * scale * wp[h];
    }
  });
  return out;
}

// gate_up (T, 2I) float32, gate then up: silu(gate) * up, (T, I).
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dtype() == torch::kFloat32 && gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
              "silu_mul takes (T, 2I) float32");
  const torch::Tensor gc = gate_up.contiguous();
  const int64_t T = gc.size(0), I = gc.size(1) / 2;
  torch::Tensor out = torch::empty({T, I}, gc.options());
  const float* gp = gc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  parallel_chunks(T, std::max<int64_t>(1, 32768 / std::max<int64_t>(I, 1)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = gp + t * 2 * I;
      const float* u = g + I;
      float* o = op + t * I;
      int64_t i = 0;
      // silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) <= 1 either side of 0: 1 / (1 + e)
      // for g >= 0, e / (1 + e) below (never exp of a large positive number).
      const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
      for (; i + 8 <= I; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp_nonpositive(_mm256_or_ps(gv, sign));  // -|g|
        const __m256 sig = _mm256_div_ps(
            _mm256_blendv_ps(one, e, _mm256_cmp_ps(gv, _mm256_setzero_ps(), _CMP_LT_OQ)),
            _mm256_add_ps(one, e));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + i)));
      }
      for (; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}

// The first index of each row's largest value, as torch.argmax: a NaN counts as the largest.
int64_t argmax_row(const float* row, int64_t V) {
  int64_t i = 0;
  __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 nan = _mm256_setzero_ps();
  for (; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_loadu_ps(row + i);
    mv = _mm256_max_ps(mv, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float best = banterbox::hmax(mv);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (int64_t j = i; j < V; ++j) {
    has_nan |= std::isnan(row[j]);
    best = std::max(best, row[j]);
  }
  if (has_nan) {
    for (int64_t j = 0; j < V; ++j)
      if (std::isnan(row[j])) return j;
  }
  const __m256 bv = _mm256_set1_ps(best);
  for (i = 0; i + 8 <= V; i += 8) {
    const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + i), bv, _CMP_EQ_OQ));
    if (hits) return i + __builtin_ctz(hits);
  }
  for (; i < V; ++i)
    if (row[i] == best) return i;
  return 0;  // unreachable: best is one of the row's values
}

// logits (B, V) float32 → (B,) int64: the greedy rows' tokens, a row per chunk of the pool.
torch::Tensor argmax_rows(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dtype() == torch::kFloat32 && logits.dim() == 2 && logits.size(1) > 0,
              "argmax_rows takes (B, V) float32 with V > 0");
  const torch::Tensor lc = logits.contiguous();
  const int64_t B = lc.size(0), V = lc.size(1);
  torch::Tensor out = torch::empty({B}, torch::TensorOptions().dtype(torch::kInt64));
  const float* lp = lc.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  parallel_chunks(B, std::max<int64_t>(1, 65536 / V), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) op[b] = argmax_row(lp + b * V, V);
  });
  return out;
}

}  // namespace

// Registered as torch ops (torch.ops.banterbox.*): the profiler sees and times them.
TORCH_LIBRARY(banterbox, m) {
  m.def("qmatmul(Tensor x, Tensor w, int qtype, int num_cols) -> Tensor", &qmatmul);
  m.def("dequantize(Tensor w, int qtype, int num_cols) -> Tensor", &dequantize);
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &rms_norm);
  m.def("silu_mul(Tensor gate_up) -> Tensor", &silu_mul);
  m.def("argmax_rows(Tensor logits) -> Tensor", &argmax_rows);
}
