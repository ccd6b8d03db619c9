// Running top-k over item blocks: each row keeps its k best (score, index) pairs sorted by
// score descending, ties by the lower index. Blocks arrive in increasing index order, so a
// candidate only enters on a strictly higher score than the current k-th (or an empty slot).
#include <algorithm>

#include "../kernels.h"

namespace crs {

void topk_block_merge(const float* s, int64_t lds, const float* bias, const int64_t* excl,
                      int64_t m, float* vals, int64_t* idx, int64_t B, int64_t C, int64_t v0,
                      int64_t k, int nthreads) {
  const int nt = threads(nthreads, B * C);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const float* row = s + b * lds;
    float* rv = vals + b * k;
    int64_t* ri = idx + b * k;
    const int64_t* ex = excl ? excl + b * m : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      float x = row[c];
      if (bias) x += bias[v0 + c];
      if (x != x) continue;  // NaN scores never rank
      if (ri[k - 1] >= 0 && !(x > rv[k - 1])) continue;
      const int64_t item = v0 + c;
      if (ex && std::binary_search(ex, ex + m, item)) continue;
      int64_t pos = k - 1;  // insert after every entry with a score >= x
      while (pos > 0 && (ri[pos - 1] < 0 || rv[pos - 1] < x)) {
        rv[pos] = rv[pos - 1];
        ri[pos] = ri[pos - 1];
        --pos;
      }
      rv[pos] = x;
      ri[pos] = item;
    }
  }
}

}  // namespace crs
