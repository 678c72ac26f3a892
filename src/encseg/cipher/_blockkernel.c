/* encseg cipher kernel: one pass over the image for any format-v1 or v2 plan (see transform.py).
 *
 * Encrypted block b, pixel j, channel c  =  plain block src[b], pixel psrc[j], channel ord_b[c]  XOR  m_b
 * where m_b is 0xFF when block b is negated, and psrc is one p*p gather for every block (v1
 * pixel-shuffle) or block b's own row of an n x p*p array (v2 block-pixel-shuffle). Encryption gathers with that rule; decryption writes
 * the same correspondence backwards. Built as an optional extension: transform.py falls back to
 * numpy when it is missing, and the tests check both paths against the vectors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const uint8_t ORDERS[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
static const uint8_t INVERSE[6] = {0, 1, 2, 4, 3, 5}; /* index of the inverse of each order */

#define ROW(A, B, C)                                                    \
    for (Py_ssize_t i = 0; i < 3 * p; i += 3) {                         \
        d[i] = s[i + A] ^ m; d[i + 1] = s[i + B] ^ m; d[i + 2] = s[i + C] ^ m; \
    }

/* one block row of p pixels: d[3i + c] = s[3i + order[c]] ^ m, specialised per order */
static inline void row_copy_scalar(uint8_t *restrict d, const uint8_t *restrict s, Py_ssize_t p, int o, uint8_t m) {
    switch (o) {
    case 0: if (!m) { memcpy(d, s, (size_t)(3 * p)); return; } ROW(0, 1, 2) break;
    case 1: ROW(0, 2, 1) break;
    case 2: ROW(1, 0, 2) break;
    case 3: ROW(1, 2, 0) break;
    case 4: ROW(2, 0, 1) break;
    default: ROW(2, 1, 0) break;
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <tmmintrin.h>
/* SSSE3: a 48-byte chunk (16 pixels) is three 16-byte vectors; a channel order moves each byte by at
 * most 2 places, so output vector v is OR of pshufb(input vector u, MASK[o][v][u]) for u = v-1..v+1. */
static uint8_t MASKS[6][3][3][16];
static int have_ssse3 = 0;

static void init_masks(void) {
    for (int o = 0; o < 6; o++)
        for (int v = 0; v < 3; v++)
            for (int u = 0; u < 3; u++)
                for (int i = 0; i < 16; i++) {
                    int k = 16 * v + i, src = k - k % 3 + ORDERS[o][k % 3] - 16 * u;
                    MASKS[o][v][u][i] = (src >= 0 && src < 16) ? (uint8_t)src : 0x80;
                }
    __builtin_cpu_init();
    have_ssse3 = __builtin_cpu_supports("ssse3");
}

__attribute__((target("ssse3"))) static void row_copy_ssse3(uint8_t *restrict d, const uint8_t *restrict s,
                                                            Py_ssize_t p, int o, uint8_t m) {
    const __m128i mm = _mm_set1_epi8((char)m);
    for (Py_ssize_t off = 0; off < 3 * p; off += 48) {
        __m128i in[3], out[3];
        for (int u = 0; u < 3; u++) in[u] = _mm_loadu_si128((const __m128i *)(s + off + 16 * u));
        for (int v = 0; v < 3; v++) {
            __m128i acc = _mm_shuffle_epi8(in[v], _mm_loadu_si128((const __m128i *)MASKS[o][v][v]));
            if (v > 0) acc = _mm_or_si128(acc, _mm_shuffle_epi8(in[v - 1], _mm_loadu_si128((const __m128i *)MASKS[o][v][v - 1])));
            if (v < 2) acc = _mm_or_si128(acc, _mm_shuffle_epi8(in[v + 1], _mm_loadu_si128((const __m128i *)MASKS[o][v][v + 1])));
            out[v] = _mm_xor_si128(acc, mm);
        }
        for (int v = 0; v < 3; v++) _mm_storeu_si128((__m128i *)(d + off + 16 * v), out[v]);
    }
}
#else
static void init_masks(void) {}
static const int have_ssse3 = 0;
static void row_copy_ssse3(uint8_t *d, const uint8_t *s, Py_ssize_t p, int o, uint8_t m) { row_copy_scalar(d, s, p, o, m); }
#endif

static inline void row_copy(uint8_t *restrict d, const uint8_t *restrict s, Py_ssize_t p, int o, uint8_t m) {
    if (o == 0 && !m)
        memcpy(d, s, (size_t)(3 * p));
    else if (have_ssse3 && p % 16 == 0)
        row_copy_ssse3(d, s, p, o, m);
    else
        row_copy_scalar(d, s, p, o, m);
}

/* The pixel gather of one block, as byte offsets in the image from the block's origin.
 * v1 (perms NULL): position j takes poff[j], one table for every block.
 * v2 (perms: n rows of q*q): position j of block b takes sub[j] + qoff[perms[b*q*q + jq[j]]], where
 * sub[j] is the offset of j's q x q sub-block, jq[j] j's index inside it and qoff[k] the offset of
 * index k inside a sub-block (section 12: block b's own permutation in every sub-block). */
typedef struct {
    const Py_ssize_t *poff, *sub, *jq, *qoff;
    const int64_t *perms;
    Py_ssize_t m;
} Gather;

static inline Py_ssize_t gather_offset(const Gather *g, const int64_t *row, Py_ssize_t j) {
    return g->perms ? g->sub[j] + g->qoff[row[g->jq[j]]] : g->poff[j];
}

static void run(const uint8_t *in, uint8_t *out, Py_ssize_t nh, Py_ssize_t nw, Py_ssize_t p,
                const int64_t *bsrc, const Gather *g, const uint8_t *neg, const uint8_t *ord, int inverse) {
    const Py_ssize_t stride = nw * p * 3, n = nh * nw;
    for (Py_ssize_t b = 0; b < n; b++) {
        const Py_ssize_t s = bsrc ? (Py_ssize_t)bsrc[b] : b;
        const Py_ssize_t eoff = (b / nw) * p * stride + (b % nw) * p * 3;  /* encrypted block origin */
        const Py_ssize_t poff0 = (s / nw) * p * stride + (s % nw) * p * 3; /* plain block origin */
        const int o = ord ? ord[b] : 0;
        const uint8_t m = (neg && neg[b]) ? 0xFF : 0;
        if (!g) {
            for (Py_ssize_t r = 0; r < p; r++) {
                if (!inverse)
                    row_copy(out + eoff + r * stride, in + poff0 + r * stride, p, o, m);
                else
                    row_copy(out + poff0 + r * stride, in + eoff + r * stride, p, INVERSE[o], m);
            }
        } else {
            /* pixel shuffle: gather the row's pixels into tmp (or scatter them from it), then one row_copy */
            uint8_t tmp[3 * 256];
            const int64_t *row = g->perms ? g->perms + b * g->m : NULL;
            for (Py_ssize_t r = 0; r < p; r++) {
                if (!inverse) {
                    for (Py_ssize_t c = 0; c < p; c++) memcpy(tmp + 3 * c, in + poff0 + gather_offset(g, row, r * p + c), 3);
                    row_copy(out + eoff + r * stride, tmp, p, o, m);
                } else {
                    row_copy(tmp, in + eoff + r * stride, p, INVERSE[o], m);
                    for (Py_ssize_t c = 0; c < p; c++) memcpy(out + poff0 + gather_offset(g, row, r * p + c), tmp + 3 * c, 3);
                }
            }
        }
    }
}

static int opt_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t need, Py_ssize_t itemsize, const char *what) {
    if (obj == Py_None) { view->buf = NULL; view->obj = NULL; return 0; }
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len != need * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, view->len, need * itemsize);
        PyBuffer_Release(view);
        view->buf = NULL; view->obj = NULL;
        return -1;
    }
    return 0;
}

/* apply(in, out, nh, nw, p, block_src|None, pixel_src|None, negate|None, orders|None, inverse[, group])
 * Without group, pixel_src is one p*p gather for all blocks (v1 pixel-shuffle). With group q (q
 * divides p), it is n rows of q*q: row b is encrypted block b's permutation (v2 block-pixel-shuffle). */
static PyObject *apply(PyObject *self, PyObject *args) {
    Py_buffer in, out, bs = {0}, ps = {0}, ng = {0}, od = {0};
    Py_ssize_t nh, nw, p;
    PyObject *bso, *pso, *ngo, *odo;
    int inverse;
    Py_ssize_t q = 0;
    if (!PyArg_ParseTuple(args, "y*w*nnnOOOOp|n", &in, &out, &nh, &nw, &p, &bso, &pso, &ngo, &odo, &inverse, &q))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *poff = NULL;
    const Py_ssize_t n = nh * nw, total = n * p * p * 3;
    if (nh <= 0 || nw <= 0 || p <= 0 || p > 256 || in.len != total || out.len != total) {
        PyErr_SetString(PyExc_ValueError, "image buffers do not match the block grid");
        goto done;
    }
    const Py_ssize_t pp = p * p;
    if (q && (q < 1 || q > p || p % q)) {
        PyErr_SetString(PyExc_ValueError, "group must divide the block size");
        goto done;
    }
    const Py_ssize_t ps_count = q ? n * q * q : pp, ps_range = q ? q * q : pp;
    if (opt_buffer(bso, &bs, n, 8, "block_src") || opt_buffer(pso, &ps, ps_count, 8, "pixel_src") ||
        opt_buffer(ngo, &ng, n, 1, "negate") || opt_buffer(odo, &od, n, 1, "orders"))
        goto done;
    const int64_t *bsrc = bs.buf, *psrc = ps.buf;
    const uint8_t *ord = od.buf;
    for (Py_ssize_t b = 0; bsrc && b < n; b++)
        if (bsrc[b] < 0 || bsrc[b] >= n) { PyErr_SetString(PyExc_ValueError, "block_src out of range"); goto done; }
    for (Py_ssize_t b = 0; ord && b < n; b++)
        if (ord[b] > 5) { PyErr_SetString(PyExc_ValueError, "orders out of range"); goto done; }
    Gather g = {0};
    if (psrc) {
        for (Py_ssize_t j = 0; j < ps_count; j++)
            if (psrc[j] < 0 || psrc[j] >= ps_range) { PyErr_SetString(PyExc_ValueError, "pixel_src out of range"); goto done; }
        poff = PyMem_Malloc(sizeof(Py_ssize_t) * 3 * pp); /* v1: poff; v2: sub, jq, qoff */
        if (!poff) { PyErr_NoMemory(); goto done; }
        const Py_ssize_t stride = nw * p * 3;
        if (!q) {
            for (Py_ssize_t j = 0; j < pp; j++) poff[j] = (psrc[j] / p) * stride + (psrc[j] % p) * 3;
            g.poff = poff;
        } else {
            Py_ssize_t *sub = poff, *jq = poff + pp, *qoff = poff + 2 * pp;
            for (Py_ssize_t j = 0; j < pp; j++) {
                const Py_ssize_t r = j / p, c = j % p;
                sub[j] = (r / q) * q * stride + (c / q) * q * 3;
                jq[j] = (r % q) * q + c % q;
            }
            for (Py_ssize_t k = 0; k < q * q; k++) qoff[k] = (k / q) * stride + (k % q) * 3;
            g.sub = sub; g.jq = jq; g.qoff = qoff; g.perms = psrc; g.m = q * q;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    run(in.buf, out.buf, nh, nw, p, bsrc, psrc ? &g : NULL, ng.buf, ord, inverse);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(poff);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    if (bs.obj) PyBuffer_Release(&bs);
    if (ps.obj) PyBuffer_Release(&ps);
    if (ng.obj) PyBuffer_Release(&ng);
    if (od.obj) PyBuffer_Release(&od);
    return result;
}

/* stable_argsort_u64(words: little-endian uint64 bytes, out: int64 buffer of the same count).
 * LSD radix sort, 8 passes of 8 bits: stable, so equal words keep index order, i.e. the
 * permutation of format v1 section 5 (indices sorted by (k_i, i)). */
static PyObject *stable_argsort_u64(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "y*w*", &in, &out)) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = in.len / 8;
    uint64_t *keys = NULL, *keys2 = NULL;
    int64_t *idx2 = NULL;
    if (in.len % 8 || out.len != in.len) {
        PyErr_SetString(PyExc_ValueError, "words must be n*8 bytes and out n int64s");
        goto done;
    }
    keys = PyMem_Malloc(sizeof(uint64_t) * (n ? n : 1));
    keys2 = PyMem_Malloc(sizeof(uint64_t) * (n ? n : 1));
    idx2 = PyMem_Malloc(sizeof(int64_t) * (n ? n : 1));
    if (!keys || !keys2 || !idx2) { PyErr_NoMemory(); goto done; }
    int64_t *idx = out.buf;
    const uint8_t *b = in.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t k = 0;
        for (int j = 7; j >= 0; j--) k = (k << 8) | b[8 * i + j];
        keys[i] = k;
        idx[i] = i;
    }
    uint64_t *ks = keys, *kd = keys2;
    int64_t *is = idx, *id = idx2;
    for (int shift = 0; shift < 64; shift += 8) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++) count[((ks[i] >> shift) & 0xFF) + 1]++;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t pos = count[(ks[i] >> shift) & 0xFF]++;
            kd[pos] = ks[i];
            id[pos] = is[i];
        }
        uint64_t *tk = ks; ks = kd; kd = tk;
        int64_t *ti = is; is = id; id = ti;
    }
    /* 8 passes: an even number of swaps, so the result is back in `idx` (out) */
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(keys);
    PyMem_Free(keys2);
    PyMem_Free(idx2);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* argsort_rows_u64(words: n*m little-endian uint64 bytes, out: n*m int64 buffer, m).
 * Row b of out lists 0..m-1 sorted by (k_{b,i}, i): format v2's one permutation per block. Within a
 * row, a stable counting pass on the top `bits` bits (about log2 m), then a stable insertion sort on
 * the whole word: the words are AES output, so after the first pass a row is nearly sorted. */
static void sort_row(const uint8_t *b, int64_t *idx, Py_ssize_t m, int bits, uint64_t *k, uint64_t *k2, int64_t *i2,
                     uint32_t *count) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(k, b, sizeof(uint64_t) * (size_t)m);
#else
    for (Py_ssize_t i = 0; i < m; i++) {
        uint64_t v = 0;
        for (int j = 7; j >= 0; j--) v = (v << 8) | b[8 * i + j];
        k[i] = v;
    }
#endif
    if (bits) {
        const int shift = 64 - bits;
        const size_t nb = (size_t)1 << bits;
        memset(count, 0, sizeof(uint32_t) * (nb + 1));
        for (Py_ssize_t i = 0; i < m; i++) count[(k[i] >> shift) + 1]++;
        for (size_t d = 0; d < nb; d++) count[d + 1] += count[d];
        for (Py_ssize_t i = 0; i < m; i++) {
            const uint32_t pos = count[k[i] >> shift]++;
            k2[pos] = k[i];
            i2[pos] = i;
        }
        memcpy(k, k2, sizeof(uint64_t) * m);
        memcpy(idx, i2, sizeof(int64_t) * m);
    } else {
        for (Py_ssize_t i = 0; i < m; i++) idx[i] = i;
    }
    for (Py_ssize_t i = 1; i < m; i++) { /* strict '>' keeps equal words in index order */
        const uint64_t v = k[i];
        const int64_t x = idx[i];
        Py_ssize_t j = i;
        while (j > 0 && k[j - 1] > v) { k[j] = k[j - 1]; idx[j] = idx[j - 1]; j--; }
        k[j] = v;
        idx[j] = x;
    }
}

static PyObject *argsort_rows_u64(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t m;
    if (!PyArg_ParseTuple(args, "y*w*n", &in, &out, &m)) return NULL;
    PyObject *result = NULL;
    uint64_t *k = NULL, *k2 = NULL;
    int64_t *i2 = NULL;
    uint32_t *count = NULL;
    if (m <= 0 || in.len % (8 * m) || out.len != in.len) {
        PyErr_SetString(PyExc_ValueError, "words must be n*m*8 bytes and out n*m int64s, m >= 1");
        goto done;
    }
    int bits = 0; /* no counting pass for short rows; else about one bucket per word, at most 2^16 */
    while (m > 32 && bits < 16 && ((Py_ssize_t)1 << (bits + 1)) <= m) bits++;
    k = PyMem_Malloc(sizeof(uint64_t) * m);
    k2 = PyMem_Malloc(sizeof(uint64_t) * m);
    i2 = PyMem_Malloc(sizeof(int64_t) * m);
    count = PyMem_Malloc(sizeof(uint32_t) * (((size_t)1 << bits) + 1));
    if (!k || !k2 || !i2 || !count) { PyErr_NoMemory(); goto done; }
    const Py_ssize_t rows = in.len / (8 * m);
    const uint8_t *b = in.buf;
    int64_t *idx = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) sort_row(b + 8 * m * r, idx + m * r, m, bits, k, k2, i2, count);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(k);
    PyMem_Free(k2);
    PyMem_Free(i2);
    PyMem_Free(count);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"argsort_rows_u64", argsort_rows_u64, METH_VARARGS, "Stable argsort of each row of m little-endian uint64 words."},
    {"stable_argsort_u64", stable_argsort_u64, METH_VARARGS, "Stable argsort of little-endian uint64 words."},
    {"apply", apply, METH_VARARGS, "Encrypt (inverse=False) or decrypt a padded uint8 image with a fused plan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blockkernel", "encseg cipher kernel", -1, methods};

PyMODINIT_FUNC PyInit__blockkernel(void) {
    init_masks();
    return PyModule_Create(&module);
}
