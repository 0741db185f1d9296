/* Causal linear attention in chunks, forward and backward, fused per head (float32).
 *
 * The math is attnbench's LinearMath on features already computed (phi(Q), phi(K)):
 *
 *     O_i = phi(q_i)^T S_i / phi(q_i)^T z_i,   S_i = sum_{j<=i} phi(k_j) v_j^T,   z_i = sum_{j<=i} phi(k_j)
 *
 * in the chunkwise form of variants/linear.py's _ChunkedCausal: per chunk of C tokens,
 * num = Q_c S_{<c} + tril(Q_c K_c^T) V_c and den = Q_c z_{<c} + rowsum(tril(Q_c K_c^T)). What
 * differs is where the work happens: a head is swept chunk by chunk with every C x F, C x C and
 * F x D tile in the first levels of cache, the products run through one register-blocked
 * micro-kernel (not a library call per 64 x 64 tile), the masked products stop at the diagonal
 * (about half of the intra-chunk work), and the denominator is a dot product, not a column of
 * ones. The backward is one sweep in reverse chunk order: it reads the per-chunk states
 * S_{<c}, z_{<c} that the forward wrote (when asked to), the output and the denominators, and
 * recomputes the masked C x C blocks.
 *
 * Layout: a tensor is any (B, H, N, width) view with unit stride along its width, given by its
 * three strides in elements, so (B, N, H, D) inputs are read where they lie and outputs are
 * written in place, with no transposed copies. q, k and v (and the gradient) are float32,
 * bfloat16 or float16 (DT_*), each row converted to float32 as it is loaded; everything is
 * computed and written in float32. feature = FEAT_ELU applies phi(x) = elu(x) + 1 to q and k as
 * they are loaded (and phi' in the backward), so the feature map costs no pass of its own;
 * FEAT_NONE takes q and k as features already (any width F). The last chunk may be short. The
 * functions handle the heads [bh0, bh1) of the B * H (so threads split heads by range); they
 * return 0, or -1 when a workspace allocation fails.
 *
 * Built by attnbench.attention.native with -O3 -march=native: the vector width is the widest the
 * build machine has (AVX-512, AVX2 or SSE), through GCC's vector extensions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VB 64
#define MR 8
#elif defined(__AVX__)
#define VB 32
#define MR 6
#else
#define VB 16
#define MR 4
#endif
#define W (VB / 4)

typedef float vf __attribute__((vector_size(VB)));
typedef float vfu __attribute__((vector_size(VB), aligned(4), may_alias));

#define INLINE static inline __attribute__((always_inline))

INLINE vf load(const float *p) { return *(const vfu *)p; }
INLINE void store(float *p, vf x) { *(vfu *)p = x; }

/* C[mr x 2W] += A[mr x (k0..k1)] B[(k0..k1) x 2W], row-major with leading dims. */
INLINE void tile2(const int mr, int k0, int k1, const float *A, int lda, const float *B, int ldb,
                  float *C, int ldc) {
    vf acc0[MR], acc1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        acc0[i] = load(C + i * ldc);
        acc1[i] = load(C + i * ldc + W);
    }
    for (int k = k0; k < k1; k++) {
        const vf b0 = load(B + (int64_t)k * ldb), b1 = load(B + (int64_t)k * ldb + W);
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            const float a = A[i * lda + k];
            acc0[i] += a * b0;
            acc1[i] += a * b1;
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        store(C + i * ldc, acc0[i]);
        store(C + i * ldc + W, acc1[i]);
    }
}

INLINE void tile1(const int mr, int k0, int k1, const float *A, int lda, const float *B, int ldb,
                  float *C, int ldc) {
    vf acc[MR];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) acc[i] = load(C + i * ldc);
    for (int k = k0; k < k1; k++) {
        const vf b = load(B + (int64_t)k * ldb);
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) acc[i] += A[i * lda + k] * b;
    }
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) store(C + i * ldc, acc[i]);
}

static void tile_scalar(int mr, int nc, int k0, int k1, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nc; j++) {
            float s = C[i * ldc + j];
            for (int k = k0; k < k1; k++) s += A[i * lda + k] * B[(int64_t)k * ldb + j];
            C[i * ldc + j] = s;
        }
}

/* fn(mr, ...) with mr a compile-time constant (1 <= mr <= MR), so each tile is unrolled. */
#define CASE(k, fn, ...)                                                                         \
    case k: fn((k) < MR ? (k) : MR, __VA_ARGS__); break;
#define DISPATCH(fn, mr, ...)                                                                    \
    switch (mr) {                                                                                \
        CASE(1, fn, __VA_ARGS__)                                                                 \
        CASE(2, fn, __VA_ARGS__)                                                                 \
        CASE(3, fn, __VA_ARGS__)                                                                 \
        CASE(4, fn, __VA_ARGS__)                                                                 \
        CASE(5, fn, __VA_ARGS__)                                                                 \
        CASE(6, fn, __VA_ARGS__)                                                                 \
        CASE(7, fn, __VA_ARGS__)                                                                 \
    default: fn(MR, __VA_ARGS__); break;                                                         \
    }

/* Which part of a product a row block [i0, i0 + mr) needs. */
enum { FULL = 0, K_LOWER = 1, K_UPPER = 2, N_LOWER = 3, N_UPPER = 4 };

/* C[M x N] += A[M x K] B[K x N].
 * K_LOWER: A is lower triangular (k <= i), so row block i0 stops at k < i0 + mr.
 * K_UPPER: A is upper triangular (k >= i), so row block i0 starts at k = i0.
 * N_LOWER / N_UPPER: only the output's lower / upper triangle is wanted; whole column blocks
 * beyond it are skipped (the caller masks what is computed past the diagonal). */
static void gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                 int ldc, int mode) {
    for (int i0 = 0; i0 < M; i0 += MR) {
        const int mr = M - i0 < MR ? M - i0 : MR;
        int k0 = 0, k1 = K, j0 = 0, j1 = N;
        if (mode == K_LOWER) k1 = i0 + mr < K ? i0 + mr : K;
        if (mode == K_UPPER) k0 = i0;
        if (mode == N_LOWER) j1 = (i0 + mr + W - 1) / W * W < N ? (i0 + mr + W - 1) / W * W : N;
        if (mode == N_UPPER) j0 = i0 / W * W;
        const float *a = A + (int64_t)i0 * lda;
        float *c = C + (int64_t)i0 * ldc;
        int j = j0;
        for (; j + 2 * W <= j1; j += 2 * W) DISPATCH(tile2, mr, k0, k1, a, lda, B + j, ldb, c + j, ldc);
        for (; j + W <= j1; j += W) DISPATCH(tile1, mr, k0, k1, a, lda, B + j, ldb, c + j, ldc);
        if (j < j1) tile_scalar(mr, j1 - j, k0, k1, a, lda, B + j, ldb, c + j, ldc);
    }
}

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };
enum { FEAT_NONE = 0, FEAT_ELU = 1 };

typedef int32_t vi __attribute__((vector_size(VB)));

/* m ? x : y lane by lane (m: a comparison's all-ones or zero lanes). */
INLINE vf vsel(vi m, vf x, vf y) { return (vf)((m & (vi)x) | (~m & (vi)y)); }

/* exp(x) for x <= 0 in float32 (Cephes' expf polynomial, about 1 ulp), clamped at -87.3 where
 * float32 leaves its normal range. */
INLINE vf vexp(vf x) {
    const vf lo = x - x - 87.3f;
    x = vsel(x < lo, lo, x);
    x = vsel(x > 0.0f, x - x, x); /* the x > 0 lanes are discarded by the callers */
    const vf t = x * 1.44269504088896341f + 12582912.0f; /* round to nearest by the magic */
    const vf kf = t - 12582912.0f;
    const vf r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
    vf p = r * 1.9875691500E-4f + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    return p * (vf)((__builtin_convertvector(kf, vi) + 127) << 23);
}

static float sexp(float x) {
    vf v = {0};
    v[0] = x;
    return vexp(v)[0];
}

/* phi(x) = elu(x) + 1 in place over n floats. */
static void elu1(int n, float *x) {
    int i = 0;
    for (; i + W <= n; i += W) {
        const vf a = load(x + i);
        store(x + i, vsel(a > 0.0f, a + 1.0f, vexp(a)));
    }
    for (; i < n; i++) x[i] = x[i] > 0.0f ? x[i] + 1.0f : sexp(x[i]);
}

/* g *= phi'(x) = (x > 0 ? 1 : exp(x)) over n floats. */
static void elu1_grad(int n, const float *x, float *g) {
    int i = 0;
    for (; i + W <= n; i += W) {
        const vf a = load(x + i);
        store(g + i, vsel(a > 0.0f, load(g + i), load(g + i) * vexp(a)));
    }
    for (; i < n; i++) g[i] = x[i] > 0.0f ? g[i] : g[i] * sexp(x[i]);
}

/* IEEE half -> float, by its bits (no compiler support for _Float16 needed). */
static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        uint32_t m = man;
        do {
            e++;
            m <<= 1;
        } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* rows x n of a (rows, n) view with row stride ld (elements of type dt) -> dst (rows x n). */
static void load_rows(int rows, int n, const void *src, int64_t ld, int dt, float *dst) {
    for (int r = 0; r < rows; r++, dst += n) {
        if (dt == DT_F32) {
            memcpy(dst, (const float *)src + r * ld, sizeof(float) * n);
        } else if (dt == DT_BF16) {
            const uint16_t *s = (const uint16_t *)src + r * ld;
            for (int j = 0; j < n; j++) {
                const uint32_t bits = (uint32_t)s[j] << 16;
                memcpy(dst + j, &bits, 4);
            }
        } else {
            const uint16_t *s = (const uint16_t *)src + r * ld;
            for (int j = 0; j < n; j++) dst[j] = half_to_float(s[j]);
        }
    }
}

static const void *row_at(const void *p, int dt, int64_t off) {
    return (const char *)p + off * (dt == DT_F32 ? 4 : 2);
}

/* A strided (B, H, N, width) view: its strides in elements. */
typedef struct {
    int64_t b, h, n;
} view;

static int64_t head_at(view s, int64_t bh, int64_t heads) {
    return (bh / heads) * s.b + (bh % heads) * s.h;
}

static void transpose(int rows, int cols, const float *src, float *dst) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(int64_t)j * rows + i] = src[(int64_t)i * cols + j];
}

static float dot(int n, const float *a, const float *b) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float *workspace(size_t floats) {
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p) memset(p, 0, bytes);
    return p;
}

/* One chunk's features (rows x F) from q or k at token t0. */
static void load_features(int rows, int F, const void *x, int dt, view s, int64_t base, int64_t t0,
                          int feature, float *dst) {
    load_rows(rows, F, row_at(x, dt, base + t0 * s.n), s.n, dt, dst);
    if (feature == FEAT_ELU) elu1(rows * F, dst);
}

/* S += X^T Y over one chunk (X: L x F given as XT, F x L; Y: L x D), and z += sum_i w_i X_i
 * (w = NULL: ones). Each chunk's sums are formed from zero first and then added, as the
 * PyTorch chunked form does: accumulating every token onto the running state in place adds N
 * rounding errors to values that grow with N (at N = 16384 about 10x the gate's tolerance). */
static void add_to_state(int F, int D, int L, const float *XT, const float *X, const float *Y,
                         const float *w, float *S, float *z, float *U, float *zc) {
    memset(U, 0, sizeof(float) * F * D);
    gemm(F, D, L, XT, L, Y, D, U, D, FULL);
    for (int i = 0; i < F * D; i++) S[i] += U[i];
    memset(zc, 0, sizeof(float) * F);
    for (int i = 0; i < L; i++) {
        const float wi = w ? w[i] : 1.0f;
        for (int j = 0; j < F; j++) zc[j] += X[(int64_t)i * F + j] * wi;
    }
    for (int j = 0; j < F; j++) z[j] += zc[j];
}

/* The float32 floats a head's saved states take: per chunk S_{<c}^T (D x F) and z_{<c} (F).
 * Exported, so that the caller allocates them by this formula and no copy of it. */
int64_t linear_chunked_state_floats(int64_t n, int64_t f, int64_t d, int64_t chunk) {
    return (n + chunk - 1) / chunk * (f * d + f);
}

/* The forward: out (B, H, N, D) and den (B * H, N), both float32. sv: the strides of q, k, v,
 * out. states (or NULL when no backward follows): (B * H, state_floats) for the backward. */
int linear_chunked_fwd(int64_t bh0, int64_t bh1, int64_t heads, int64_t n, int64_t f, int64_t d,
                       int64_t chunk, int64_t feature, int64_t dt, const int64_t *sv,
                       const void *q, const void *k, const void *v, float *out, float *den,
                       float *states) {
    const int C = (int)chunk, F = (int)f, D = (int)d;
    const view sq = {sv[0], sv[1], sv[2]}, sk = {sv[3], sv[4], sv[5]}, svv = {sv[6], sv[7], sv[8]},
               so = {sv[9], sv[10], sv[11]};
    float *ws = workspace(2 * ((size_t)F * D + F) + 3 * (size_t)F * C + (size_t)C * C +
                          2 * (size_t)C * D);
    if (!ws) return -1;
    float *S = ws, *z = S + (size_t)F * D, *Q = z + F, *K = Q + (size_t)C * F;
    float *KT = K + (size_t)C * F, *A = KT + (size_t)F * C, *V = A + (size_t)C * C;
    float *O = V + (size_t)C * D, *U = O + (size_t)C * D, *zc = U + (size_t)F * D;
    for (int64_t bh = bh0; bh < bh1; bh++) {
        const int64_t bq = head_at(sq, bh, heads), bk = head_at(sk, bh, heads);
        const int64_t bv = head_at(svv, bh, heads);
        float *Oh = out + head_at(so, bh, heads), *Dh = den + bh * n;
        memset(S, 0, sizeof(float) * F * D);
        memset(z, 0, sizeof(float) * F);
        float *St = states ? states + bh * linear_chunked_state_floats(n, F, D, C) : NULL;
        for (int64_t t0 = 0; t0 < n; t0 += C) {
            const int L = n - t0 < C ? (int)(n - t0) : C;
            if (St) { /* S_{<c}^T and z_{<c}, for the backward */
                transpose(F, D, S, St);
                memcpy(St + (size_t)F * D, z, sizeof(float) * F);
                St += (size_t)F * D + F;
            }
            load_features(L, F, q, (int)dt, sq, bq, t0, (int)feature, Q);
            load_features(L, F, k, (int)dt, sk, bk, t0, (int)feature, K);
            load_rows(L, D, row_at(v, (int)dt, bv + t0 * svv.n), svv.n, (int)dt, V);
            transpose(L, F, K, KT);
            memset(A, 0, sizeof(float) * L * L);
            gemm(L, L, F, Q, F, KT, L, A, L, N_LOWER); /* A = tril(Q K^T) */
            memset(O, 0, sizeof(float) * L * D);
            gemm(L, D, F, Q, F, S, D, O, D, FULL); /* Q S_{<c} */
            for (int i = 0; i < L; i++) {
                float *a = A + i * L, r = 0.0f;
                for (int j = i + 1; j < L; j++) a[j] = 0.0f;
                for (int j = 0; j <= i; j++) r += a[j];
                Dh[t0 + i] = dot(F, Q + (int64_t)i * F, z) + r;
            }
            gemm(L, D, L, A, L, V, D, O, D, K_LOWER); /* + tril(Q K^T) V */
            for (int i = 0; i < L; i++) {
                const float inv = 1.0f / Dh[t0 + i];
                float *o = Oh + (t0 + i) * so.n;
                for (int j = 0; j < D; j++) o[j] = O[i * D + j] * inv;
            }
            add_to_state(F, D, L, KT, K, V, NULL, S, z, U, zc); /* S += K^T V, z += sum K */
        }
    }
    free(ws);
    return 0;
}

/* dnum = grad / den, dden = -(grad . out) / den for one chunk (G: the loaded gradient). */
static void chunk_grads(int L, int D, const float *G, const float *Oh, int64_t ldo, const float *den,
                        float *dnum, float *dden) {
    for (int i = 0; i < L; i++) {
        const float inv = 1.0f / den[i];
        dden[i] = -dot(D, G + (int64_t)i * D, Oh + i * ldo) * inv;
        for (int j = 0; j < D; j++) dnum[i * D + j] = G[(int64_t)i * D + j] * inv;
    }
}

/* Store a chunk's gradient (L x F, float32) into a strided view, through phi' for FEAT_ELU. */
static void store_grad(int L, int F, float *g, float *dst, int64_t ld, const void *x, int dt,
                       int64_t xoff, int64_t ldx, int feature, float *raw) {
    if (feature == FEAT_ELU) {
        load_rows(L, F, row_at(x, dt, xoff), ldx, dt, raw);
        elu1_grad(L * F, raw, g);
    }
    for (int i = 0; i < L; i++) memcpy(dst + i * ld, g + (int64_t)i * F, sizeof(float) * F);
}

/* The backward: dq, dk (B, H, N, F) and dv (B, H, N, D), float32, from grad (in dtype gdt),
 * the forward's inputs, out, den and states, in one sweep in reverse chunk order. With
 * dnum = grad / den, dden = -(grad . out) / den, B = tril(dnum V_c^T + dden 1^T),
 * A = tril(Q_c K_c^T), R = sum over later chunks of Q^T dnum and r of Q^T dden:
 *     dQ_c = dnum S_{<c}^T + dden z_{<c}^T + B K_c
 *     dK_c = V_c R^T + r + B^T Q_c,      dV_c = K_c R + A^T dnum
 * sv: the strides of q, k, v, out, grad, dq, dk, dv. */
int linear_chunked_bwd(int64_t bh0, int64_t bh1, int64_t heads, int64_t n, int64_t f, int64_t d,
                       int64_t chunk, int64_t feature, int64_t dt, int64_t gdt, const int64_t *sv,
                       const void *q, const void *k, const void *v, const float *out,
                       const float *den, const float *states, const void *grad, float *dq,
                       float *dk, float *dv) {
    const int C = (int)chunk, F = (int)f, D = (int)d;
    const view sq = {sv[0], sv[1], sv[2]}, sk = {sv[3], sv[4], sv[5]}, svv = {sv[6], sv[7], sv[8]},
               so = {sv[9], sv[10], sv[11]}, sg = {sv[12], sv[13], sv[14]},
               sdq = {sv[15], sv[16], sv[17]}, sdk = {sv[18], sv[19], sv[20]},
               sdv = {sv[21], sv[22], sv[23]};
    const size_t big = (size_t)F * D, cf = (size_t)C * F, cd = (size_t)C * D, cc = (size_t)C * C;
    float *ws = workspace(2 * (big + F) + 6 * cf + 4 * cd + C + 3 * cc);
    if (!ws) return -1;
    float *R = ws, *r = R + big, *Q = r + F, *K = Q + cf, *QT = K + cf, *T = QT + cf;
    float *dQ = T + cf, *X = dQ + cf, *G = X + cf, *dnum = G + cd, *V = dnum + cd, *VT = V + cd;
    float *dden = VT + cd, *A = dden + C, *B = A + cc, *BT = B + cc, *U = BT + cc, *zc = U + big;
    const int64_t per_head = linear_chunked_state_floats(n, F, D, C);
    for (int64_t bh = bh0; bh < bh1; bh++) {
        const int64_t bq = head_at(sq, bh, heads), bk = head_at(sk, bh, heads);
        const int64_t bv = head_at(svv, bh, heads), bg = head_at(sg, bh, heads);
        const float *Oh = out + head_at(so, bh, heads), *Dh = den + bh * n;
        float *dQh = dq + head_at(sdq, bh, heads), *dKh = dk + head_at(sdk, bh, heads);
        float *dVh = dv + head_at(sdv, bh, heads);
        memset(R, 0, sizeof(float) * big);
        memset(r, 0, sizeof(float) * F);
        for (int64_t t0 = (n - 1) / C * C; t0 >= 0; t0 -= C) {
            const int L = n - t0 < C ? (int)(n - t0) : C;
            const float *ST = states + bh * per_head + t0 / C * (int64_t)(big + F), *z = ST + big;
            load_features(L, F, q, (int)dt, sq, bq, t0, (int)feature, Q);
            load_features(L, F, k, (int)dt, sk, bk, t0, (int)feature, K);
            load_rows(L, D, row_at(v, (int)dt, bv + t0 * svv.n), svv.n, (int)dt, V);
            load_rows(L, D, row_at(grad, (int)gdt, bg + t0 * sg.n), sg.n, (int)gdt, G);
            chunk_grads(L, D, G, Oh + t0 * so.n, so.n, Dh + t0, dnum, dden);
            transpose(L, D, V, VT);
            transpose(L, F, Q, QT);
            memset(B, 0, sizeof(float) * L * L); /* B = tril(dnum V^T + dden 1^T) */
            gemm(L, L, D, dnum, D, VT, L, B, L, N_LOWER);
            memset(A, 0, sizeof(float) * L * L); /* A^T[j][i] = k_j . q_i, i >= j */
            gemm(L, L, F, K, F, QT, L, A, L, N_UPPER);
            for (int i = 0; i < L; i++) {
                float *b = B + i * L, *a = A + i * L;
                for (int j = 0; j <= i; j++) b[j] += dden[i];
                for (int j = i + 1; j < L; j++) b[j] = 0.0f;
                for (int j = 0; j < i; j++) a[j] = 0.0f;
            }
            transpose(L, L, B, BT);
            /* dQ */
            memset(dQ, 0, sizeof(float) * L * F);
            gemm(L, F, D, dnum, D, ST, F, dQ, F, FULL);
            for (int i = 0; i < L; i++)
                for (int j = 0; j < F; j++) dQ[(int64_t)i * F + j] += dden[i] * z[j];
            gemm(L, F, L, B, L, K, F, dQ, F, K_LOWER);
            store_grad(L, F, dQ, dQh + t0 * sdq.n, sdq.n, q, (int)dt, bq + t0 * sq.n, sq.n,
                       (int)feature, X);
            /* dK = (R V_c^T)^T + r + B^T Q_c */
            memset(T, 0, sizeof(float) * F * L);
            gemm(F, L, D, R, D, VT, L, T, L, FULL);
            float *dK = dQ;
            for (int i = 0; i < L; i++)
                for (int j = 0; j < F; j++) dK[(int64_t)i * F + j] = T[(int64_t)j * L + i] + r[j];
            gemm(L, F, L, BT, L, Q, F, dK, F, K_UPPER);
            store_grad(L, F, dK, dKh + t0 * sdk.n, sdk.n, k, (int)dt, bk + t0 * sk.n, sk.n,
                       (int)feature, X);
            /* dV = K R + A^T dnum */
            float *dV = G;
            memset(dV, 0, sizeof(float) * L * D);
            gemm(L, D, F, K, F, R, D, dV, D, FULL);
            gemm(L, D, L, A, L, dnum, D, dV, D, K_UPPER);
            for (int i = 0; i < L; i++)
                memcpy(dVh + (t0 + i) * sdv.n, dV + (int64_t)i * D, sizeof(float) * D);
            add_to_state(F, D, L, QT, Q, dnum, dden, R, r, U, zc); /* R += Q^T dnum, r += Q^T dden */
        }
    }
    free(ws);
    return 0;
}
