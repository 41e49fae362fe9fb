/* The device step on a CPU in one pass over the pixels (p2p.fused.cpu loads it through ctypes).
 *
 * Each function converts output rows [row0, row1) of a batch, a row being (image, y): the
 * caller splits a batch into row ranges for its threads. No OpenMP here: torch brings its own
 * runtime, and a second pool would spin against it. Every pointer and bound is checked by the
 * caller (p2p.fused.cpu) before the call; this file trusts them.
 *
 * Input: uint8 RGB, any strides (elements), so NCHW and channels-last batches are read in
 * place. Window of image i: rows top[i] .. top[i]+oh-1, columns left[i] .. left[i]+ow-1,
 * read right to left when mirror[i]. Output: float32 planes, contiguous per image.
 *
 * Each row is done in chunks of CHUNK columns: a gather loop reads the window's bytes (in
 * either direction, any stride) into three small float arrays through the 256-entry table,
 * then a branch-free loop does the arithmetic on contiguous floats, which the compiler
 * vectorises whatever the input layout.
 */
#include <stdint.h>

#define CHUNK 256

/* CIE f(t) constants as skimage writes them (p2p.color) */
#define LAB_KNEE 0.008856f
#define LAB_SLOPE 7.787f
#define LAB_OFFSET (16.0f / 116.0f)

/* t ** (1/3) for t > 0 in float32 (within 1.4 ulp on the range Lab needs), with no library call
 * so that it vectorises on any compiler and libc. An estimate of t ** (-1/3) from the exponent
 * bits (within about 4%), two Newton steps r <- r (4 - t r^3) / 3 (the error squares each step,
 * no division), y = t r^2, then one Newton step on y itself, y - (y - t / y^2) / 3, which
 * rounds better than a third step on r (8 ulp). */
static inline float cube_root(float t) {
    union { float f; uint32_t u; } v = { t };
    v.u = 0x54a21d2au - v.u / 3u;
    float r = v.f;
    for (int k = 0; k < 2; k++) r = r * (4.0f - t * r * r * r) * (1.0f / 3.0f);
    float y = t * r * r;
    return y - (y - t / (y * y)) * (1.0f / 3.0f);
}

static inline float lab_f(float t) {
    /* both branches, then a select: vectorises (t <= knee takes the line, as skimage) */
    float line = LAB_SLOPE * t + LAB_OFFSET;
    float curve = cube_root(t > LAB_KNEE ? t : LAB_KNEE);
    return t > LAB_KNEE ? curve : line;
}

/* Load `count` window pixels of one row into r, g, b through `table`, from column `first` on,
 * `step` = 1 (left to right) or -1 (mirrored). Planar rows (sx == 1) get loops of their own,
 * whose byte loads and table lookups the compiler vectorises (gathers); any other stride (a
 * channels-last batch) takes the general loop. */
static inline void gather(const uint8_t *row, int64_t sc, int64_t sx, int64_t first, int step, int count,
                          const float *table, float *r, float *g, float *b) {
    if (sx == 1) {
        const uint8_t *pr = row + first, *pg = pr + sc, *pb = pg + sc;
        if (step == 1) {
            for (int k = 0; k < count; k++) {
                r[k] = table[pr[k]];
                g[k] = table[pg[k]];
                b[k] = table[pb[k]];
            }
        } else {
            for (int k = 0; k < count; k++) {
                r[k] = table[pr[-k]];
                g[k] = table[pg[-k]];
                b[k] = table[pb[-k]];
            }
        }
        return;
    }
    const uint8_t *p = row + first * sx;
    int64_t dx = step * sx;
    for (int k = 0; k < count; k++, p += dx) {
        r[k] = table[p[0]];
        g[k] = table[p[sc]];
        b[k] = table[p[2 * sc]];
    }
}

/* The window pixels of output columns x0 .. x0 + CHUNK - 1 (fewer at the row's end) of image i,
 * from its input row `row`, into r, g, b through `table`; returns how many. */
static inline int load_chunk(const uint8_t *row, int64_t sc, int64_t sx, const int32_t *left, const uint8_t *mirror,
                             int i, int ow, int x0, const float *table, float *r, float *g, float *b) {
    int count = ow - x0 < CHUNK ? ow - x0 : CHUNK;
    if (mirror[i])
        gather(row, sc, sx, (int64_t)left[i] + ow - 1 - x0, -1, count, table, r, g, b);
    else
        gather(row, sc, sx, (int64_t)left[i] + x0, 1, count, table, r, g, b);
    return count;
}

/* colorize: L/50 - 1 into out_l (N x 1 x oh x ow), a/110 and b/110 into out_ab (N x 2 x oh x ow).
 * `table`: the linear value of each 8-bit sRGB code; `m`: rows X/Xn, Y/Yn, Z/Zn from linear RGB. */
void p2p_colorize(const uint8_t *src, int64_t sn, int64_t sc, int64_t sy, int64_t sx,
                  const int32_t *top, const int32_t *left, const uint8_t *mirror, int oh, int ow,
                  int64_t row0, int64_t row1, const float *table, const float *m, float *out_l, float *out_ab) {
    float r[CHUNK], g[CHUNK], b[CHUNK];
    const float m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5], m6 = m[6], m7 = m[7], m8 = m[8];
    const int64_t plane = (int64_t)oh * ow;
    for (int64_t rr = row0; rr < row1; rr++) {
        int i = (int)(rr / oh), y = (int)(rr % oh);
        const uint8_t *row = src + i * sn + ((int64_t)top[i] + y) * sy;
        float *L = out_l + i * plane + (int64_t)y * ow;
        float *A = out_ab + 2 * i * plane + (int64_t)y * ow;
        float *B = A + plane;
        for (int x0 = 0; x0 < ow; x0 += CHUNK) {
            int count = load_chunk(row, sc, sx, left, mirror, i, ow, x0, table, r, g, b);
            for (int k = 0; k < count; k++) {
                float fx = lab_f(m0 * r[k] + m1 * g[k] + m2 * b[k]);
                float fy = lab_f(m3 * r[k] + m4 * g[k] + m5 * b[k]);
                float fz = lab_f(m6 * r[k] + m7 * g[k] + m8 * b[k]);
                /* L = 116 fy - 16, then L / 50 - 1; a = 500 (fx - fy), b = 200 (fy - fz), over 110 */
                L[x0 + k] = (116.0f * fy - 16.0f) * (1.0f / 50.0f) - 1.0f;
                A[x0 + k] = (fx - fy) * (500.0f / 110.0f);
                B[x0 + k] = (fy - fz) * (200.0f / 110.0f);
            }
        }
    }
}

/* gray2rgb: luma (ITU-R 601) in [-1, 1] into out_gray (N x 1 x oh x ow) and RGB in [-1, 1] into
 * out_rgb (N x 3 x oh x ow). `table`: code / 255 as float32 (what torch's x.float() / 255 gives). */
void p2p_gray2rgb(const uint8_t *src, int64_t sn, int64_t sc, int64_t sy, int64_t sx,
                  const int32_t *top, const int32_t *left, const uint8_t *mirror, int oh, int ow,
                  int64_t row0, int64_t row1, const float *table, float *out_gray, float *out_rgb) {
    float r[CHUNK], g[CHUNK], b[CHUNK];
    const int64_t plane = (int64_t)oh * ow;
    for (int64_t rr = row0; rr < row1; rr++) {
        int i = (int)(rr / oh), y = (int)(rr % oh);
        const uint8_t *row = src + i * sn + ((int64_t)top[i] + y) * sy;
        float *G = out_gray + i * plane + (int64_t)y * ow;
        float *R = out_rgb + 3 * i * plane + (int64_t)y * ow;
        for (int x0 = 0; x0 < ow; x0 += CHUNK) {
            int count = load_chunk(row, sc, sx, left, mirror, i, ow, x0, table, r, g, b);
            for (int k = 0; k < count; k++) {
                G[x0 + k] = (0.299f * r[k] + 0.587f * g[k] + 0.114f * b[k]) * 2.0f - 1.0f;
                R[x0 + k] = r[k] * 2.0f - 1.0f;
                R[plane + x0 + k] = g[k] * 2.0f - 1.0f;
                R[2 * plane + x0 + k] = b[k] * 2.0f - 1.0f;
            }
        }
    }
}

/* The version of this interface: p2p.fused.cpu refuses a library that reports another. */
int p2p_kernel_version(void) { return 1; }
