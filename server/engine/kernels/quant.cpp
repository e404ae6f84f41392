// GGUF block formats kept packed: dequantize rows, and x @ W^T with W dequantized on the fly.
// Every weight is dequantized to exactly the float32 value the gguf package computes, and the
// products are accumulated in float32: the result is the dense reference's up to summation
// order. Activations are never quantized. AVX2 + FMA + F16C; threads via at::parallel_for.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

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

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
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
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = hsum(acc[i][j]);
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

template <class F>
void matmul(const float* x, int64_t M, const uint8_t* w, int64_t N, int64_t K, float* out) {
  const int64_t row_bytes = K / F::QK * F::BYTES;
  const int64_t num_groups = (N + kNR - 1) / kNR;
  at::parallel_for(0, num_groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> buf(kNR * K);  // kNR dequantized weight rows, L1/L2-resident
    for (int64_t m0 = 0; m0 < M; m0 += kMC) {
      const int64_t m1 = std::min(M, m0 + kMC);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t n0 = g * kNR;
        const int nr = static_cast<int>(std::min<int64_t>(kNR, N - n0));
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
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
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

}  // namespace

// Registered as torch ops (torch.ops.banterbox.*): the profiler sees and times them.
TORCH_LIBRARY(banterbox, m) {
  m.def("qmatmul(Tensor x, Tensor w, int qtype, int num_cols) -> Tensor", &qmatmul);
  m.def("dequantize(Tensor w, int qtype, int num_cols) -> Tensor", &dequantize);
}
