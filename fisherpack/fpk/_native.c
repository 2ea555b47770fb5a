/* Optional native decoders for the two per-symbol loops of reading a file (spec: docs/FORMAT.md).
 *
 * - rans_v2: the version-2 rANS decoder of rans_py.decode_v2, writing symbols (not table indices)
 *   into a caller's uint16 buffer;
 * - eg_mask: the Exp-Golomb gaps of gaps.exp_golomb_mask, straight into a caller's bool mask.
 *
 * Both read bytes the Python side has already bounded (the anti-bomb rule, the table's checks, the
 * extra bits' exact length); they still check every index they compute, so a bug upstream cannot
 * make them read or write outside their buffers. They return a status, and the Python side raises
 * the same FormatError as the Python decoders. The build is optional (setup.py): without a C
 * compiler, fisherpack reads the same files with constriction and numpy.
 *
 * Plain C and the buffer protocol, no numpy headers: the extension builds against any numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define V2_PRECISION 24
#define V2_MASK ((UINT64_C(1) << V2_PRECISION) - 1)
#define V2_START (UINT64_C(1) << 16)

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* One unaligned load (and a byte swap) where the compiler offers it: the byte loops below are
 * not merged into one by gcc 12, and cost the decoders twice their time. */
static inline uint32_t load_le32(const unsigned char *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}
static inline uint64_t load_be64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return __builtin_bswap64(w);
}
#else
static inline uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t load_be64(const unsigned char *p) {
    uint64_t w = 0;
    for (int b = 0; b < 8; b++) w = (w << 8) | p[b];
    return w;
}
#endif

/* The u32 little-endian word i of data (n bytes); the last word's missing high bytes are zero. */
static uint64_t word_at(const unsigned char *data, Py_ssize_t n, Py_ssize_t i) {
    Py_ssize_t at = 4 * i;
    uint64_t w = 0;
    for (int b = 3; b >= 0; b--) w = (w << 8) | (at + b < n ? data[at + b] : 0);
    return w;
}

/* Read a sequence of ints into a new uint32 array of its length (NULL and an exception on error). */
static uint32_t *as_u32(PyObject *seq, Py_ssize_t *len) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of ints");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    uint32_t *out = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == (unsigned long)-1 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        if (v > UINT32_MAX) {
            PyMem_Free(out);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "value out of range of uint32");
            return NULL;
        }
        out[i] = (uint32_t)v;
    }
    Py_DECREF(fast);
    *len = n;
    return out;
}

/* A table entry packed in one word: frequency and start (scaled to 24 bits) and symbol. */
#define E_FREQ(e) ((e) & V2_MASK)
#define E_START(e) (((e) >> 24) & V2_MASK)
#define E_SYMBOL(e) ((uint16_t)((e) >> 48))

/* A version-2 rANS stream being decoded. The slot -> entry lookup uses a table of 2**bits buckets:
 * at most the precision, 2**12 (in L1 cache), and 8 per symbol to decode, so that its cost is
 * bounded by the symbols' (never 2**precision entries for a short stream). When a bucket is one
 * slot, `direct` gives its entry in one load; else `first[b]` is the entry holding bucket b's first
 * slot, and a bucket that several entries share (a few of them) is binary-searched. */
typedef struct {
    const unsigned char *bytes;
    Py_ssize_t words; /* words not yet read, from the end */
    uint64_t x;
    int shift;        /* slot q is in bucket q >> shift */
    uint64_t *entry;  /* nf entries */
    uint64_t *direct; /* or NULL */
    uint16_t *first;  /* buckets + 1, or NULL */
} stream;

static void stream_free(stream *s) {
    PyMem_Free(s->entry);
    PyMem_Free(s->direct);
    PyMem_Free(s->first);
}

/* Set s up for count symbols of data with the sparse table (freqs, symbols, precision); 0, or -1
 * with an exception set (a bad table: the Python side checked it, so this is a bug upstream). */
static int stream_init(stream *s, Py_buffer *data, PyObject *freqs_obj, PyObject *symbols_obj, int precision,
                       Py_ssize_t count) {
    memset(s, 0, sizeof(*s));
    Py_ssize_t nf = 0, ns = 0;
    uint32_t *freqs = as_u32(freqs_obj, &nf), *symbols = freqs ? as_u32(symbols_obj, &ns) : NULL;
    int ok = 0;
    if (!symbols) goto done;
    if (precision < 1 || precision > 16 || nf < 2 || nf > 65536 || nf != ns) {
        PyErr_SetString(PyExc_ValueError, "rans: bad table");
        goto done;
    }
    if (!(s->entry = PyMem_Malloc(nf * sizeof(uint64_t)))) goto nomem;
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (freqs[i] == 0 || freqs[i] >= (1u << precision) || symbols[i] > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "rans: bad table");
            goto done;
        }
        s->entry[i] = (uint64_t)freqs[i] << (V2_PRECISION - precision) | total << (48 - precision) |
                      (uint64_t)symbols[i] << 48;
        total += freqs[i];
    }
    if (total != (UINT64_C(1) << precision)) {
        PyErr_SetString(PyExc_ValueError, "rans: frequencies do not sum to 2**precision");
        goto done;
    }
    int bits = 1;
    while (bits < 12 && bits < precision && ((Py_ssize_t)1 << bits) < 8 * count) bits++;
    s->shift = V2_PRECISION - bits;
    Py_ssize_t buckets = (Py_ssize_t)1 << bits;
    if (bits == precision && bits <= 11) {
        if (!(s->direct = PyMem_Malloc(buckets * sizeof(uint64_t)))) goto nomem;
    } else if (!(s->first = PyMem_Malloc((buckets + 1) * sizeof(uint16_t)))) {
        goto nomem;
    }
    for (Py_ssize_t i = 0, b = 0; i < nf; i++) /* bucket b's first slot is in the first entry ending after it */
        for (; b < buckets && (uint64_t)b << s->shift < E_START(s->entry[i]) + E_FREQ(s->entry[i]); b++) {
            if (s->direct) s->direct[b] = s->entry[i];
            else s->first[b] = (uint16_t)i;
        }
    if (s->first) s->first[buckets] = (uint16_t)(nf - 1);
    s->bytes = data->buf;
    s->words = (data->len + 3) / 4;
    if (s->words) s->x = word_at(s->bytes, data->len, --s->words);
    if (s->words) s->x = (s->x << 32) | word_at(s->bytes, data->len, --s->words);
    ok = 1;
    goto done;
nomem:
    PyErr_NoMemory();
done:
    PyMem_Free(freqs);
    PyMem_Free(symbols);
    if (!ok) stream_free(s);
    return ok ? 0 : -1;
}

/* The next symbol of s. */
static inline uint16_t stream_next(stream *s) {
    uint64_t x = s->x, q = x & V2_MASK, e;
    if (s->direct) {
        e = s->direct[q >> s->shift];
    } else {
        Py_ssize_t lo = s->first[q >> s->shift], hi = s->first[(q >> s->shift) + 1];
        while (lo < hi) { /* the last entry with start <= q, among lo..hi */
            Py_ssize_t mid = (lo + hi + 1) / 2;
            if (E_START(s->entry[mid]) <= q) lo = mid;
            else hi = mid - 1;
        }
        e = s->entry[lo];
    }
    x = E_FREQ(e) * (x >> V2_PRECISION) + q - E_START(e);
    if ((x >> 32) == 0 && s->words) x = (x << 32) | load_le32(s->bytes + 4 * --s->words); /* whole: only the last word is partial */
    s->x = x;
    return E_SYMBOL(e);
}

/* Whether s ended as a stream must: at state 2**16 with every word read. */
static inline int stream_done(const stream *s) { return s->x == V2_START && s->words == 0; }

/* rans_v2(data, freqs, symbols, precision, out) -> 0 if the stream ends at state 2**16 with every
 * word read, 1 if not (the final state check). data: the rANS bytes (last word's zero high bytes
 * trimmed); freqs: the sparse table (>= 2 entries, summing to 2**precision); symbols: the symbol of
 * each table entry (< 2**16); out: a writable buffer of count uint16. */
static PyObject *rans_v2(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    PyObject *freqs, *symbols, *result = NULL;
    int precision;
    stream s;
    if (!PyArg_ParseTuple(args, "y*OOiw*", &data, &freqs, &symbols, &precision, &out)) return NULL;
    Py_ssize_t count = out.len / 2;
    if (stream_init(&s, &data, freqs, symbols, precision, count) == 0) {
        uint16_t *dst = out.buf;
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t k = 0; k < count; k++) dst[k] = stream_next(&s);
        Py_END_ALLOW_THREADS;
        result = PyLong_FromLong(!stream_done(&s));
        stream_free(&s);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* nbits (<= 63) bits of buf from bit pos, most significant first, one at a time (the last bytes of
 * a stream, and values too wide for one load); the caller has checked that they lie within it. */
static uint64_t read_bits(const unsigned char *buf, uint64_t pos, int nbits) {
    uint64_t v = 0;
    for (int b = 0; b < nbits; b++, pos++) v = (v << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1);
    return v;
}

/* Kept entries set in a bool mask, one Exp-Golomb gap at a time (its bucket k, and k - 1 extra bits
 * read from bits for k >= 2). */
typedef struct {
    const unsigned char *bits;
    Py_ssize_t nbytes;  /* of bits */
    uint64_t pos;       /* bit offset of the next extra bit */
    unsigned char *mask;
    uint64_t numel;     /* entries of the mask */
    uint64_t end;       /* position of the last kept entry so far, plus 1 */
} gap_walk;

static gap_walk gap_walk_of(Py_buffer *extra, Py_buffer *mask) {
    gap_walk w = {extra->buf, extra->len, 0, mask->buf, (uint64_t)mask->len, 0};
    return w;
}

/* Mark the entry after the gap of bucket k; -1 (nothing marked) if k is over 63, its extra bits run
 * past the stream, or the entry past the mask. */
static inline int gap_next(gap_walk *w, unsigned k) {
    uint64_t extra_bits = k - (k > 0), pos = w->pos, gap; /* k - 1 extra bits for k >= 1 */
    if (k > 63 || pos + extra_bits > 8 * (uint64_t)w->nbytes) return -1;
    if (k <= 57 && (Py_ssize_t)(pos >> 3) + 8 <= w->nbytes) { /* one load, no branch on k */
        uint64_t v = ((load_be64(w->bits + (pos >> 3)) << (pos & 7)) >> 1) | (UINT64_C(1) << 63);
        gap = (v >> (63 - k)) >> 1; /* the implicit top bit and k - 1 extra bits; 0 for k = 0 */
    } else {
        gap = k < 2 ? k : (UINT64_C(1) << (k - 1)) | read_bits(w->bits, pos, (int)k - 1);
    }
    if (gap >= w->numel - w->end) return -1; /* end + gap + 1 > numel, without overflow */
    w->pos = pos + extra_bits;
    w->end += gap + 1;
    w->mask[w->end - 1] = 1;
    return 0;
}

/* eg_mask(buckets, extra, out) -> -1 when done, else the index of the first gap that runs past the
 * end of out (a writable bool buffer of the tensor's entries, all zero). buckets: uint8 or uint16
 * (their itemsize says which), each 0..63; extra: their extra bits, which must hold exactly
 * sum(max(k - 1, 0)) bits (the Python side checked it). */
static PyObject *eg_mask(PyObject *self, PyObject *args) {
    Py_buffer buckets, extra, out;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*iy*w*", &buckets, &itemsize, &extra, &out)) return NULL;
    PyObject *result = NULL;
    if ((itemsize != 1 && itemsize != 2) || buckets.len % itemsize) {
        PyErr_SetString(PyExc_ValueError, "eg_mask: buckets must be uint8 or uint16");
        goto done;
    }
    Py_ssize_t n = buckets.len / itemsize, failed = -1;
    const unsigned char *k8 = buckets.buf;
    const uint16_t *k16 = buckets.buf;
    gap_walk w = gap_walk_of(&extra, &out);
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (gap_next(&w, itemsize == 1 ? k8[i] : k16[i])) { /* after the Python checks: a gap past the end */
            failed = i;
            break;
        }
    }
    Py_END_ALLOW_THREADS;
    result = PyLong_FromSsize_t(failed);
done:
    PyBuffer_Release(&buckets);
    PyBuffer_Release(&extra);
    PyBuffer_Release(&out);
    return result;
}

/* gaps_codes(buckets data, freqs, symbols, precision, extra, codes data, freqs, symbols, precision,
 * mask, codes) -> the extra bits read, or -1.
 *
 * The common quantized tensor in one pass: its rANS-coded Exp-Golomb buckets, their extra bits and
 * its rANS-coded codes (one group: one code per kept entry), decoded together. Two rANS streams in
 * one loop run about twice as fast as one after the other: each symbol waits on the one before it
 * in its own stream only. -1 means something is wrong (a stream fails its final check, a gap runs
 * past the mask, the extra bits run out): the caller then decodes the tensor the usual way, whose
 * checks say what, in their order. mask: the tensor's entries, all zero; codes: uint16, one per
 * kept entry. */
static PyObject *gaps_codes(PyObject *self, PyObject *args) {
    Py_buffer bdata, extra, cdata, mask_buf, codes_buf;
    PyObject *bfreqs, *bsyms, *cfreqs, *csyms, *result = NULL;
    int bprec, cprec;
    if (!PyArg_ParseTuple(args, "y*OOiy*y*OOiw*w*", &bdata, &bfreqs, &bsyms, &bprec, &extra, &cdata, &cfreqs, &csyms,
                          &cprec, &mask_buf, &codes_buf))
        return NULL;
    Py_ssize_t kept = codes_buf.len / 2;
    stream b, c;
    if (stream_init(&b, &bdata, bfreqs, bsyms, bprec, kept) == 0) {
        if (stream_init(&c, &cdata, cfreqs, csyms, cprec, kept) == 0) {
            uint16_t *codes = codes_buf.buf;
            gap_walk w = gap_walk_of(&extra, &mask_buf);
            int ok = 1;
            Py_BEGIN_ALLOW_THREADS;
            for (Py_ssize_t i = 0; i < kept; i++) {
                unsigned k = stream_next(&b);
                codes[i] = stream_next(&c);
                if (gap_next(&w, k)) {
                    ok = 0;
                    break;
                }
            }
            ok = ok && stream_done(&b) && stream_done(&c);
            Py_END_ALLOW_THREADS;
            result = PyLong_FromLongLong(ok ? (long long)w.pos : -1);
            stream_free(&c);
        }
        stream_free(&b);
    }
    PyBuffer_Release(&bdata);
    PyBuffer_Release(&extra);
    PyBuffer_Release(&cdata);
    PyBuffer_Release(&mask_buf);
    PyBuffer_Release(&codes_buf);
    return result;
}

static PyMethodDef methods[] = {
    {"rans_v2", rans_v2, METH_VARARGS, "Decode a version-2 rANS stream into a uint16 buffer; 0 if its final state checks."},
    {"gaps_codes", gaps_codes, METH_VARARGS, "Decode a one-group tensor's gaps mask and codes in one pass; bits read or -1."},
    {"eg_mask", eg_mask, METH_VARARGS, "Set the kept entries of a bool mask from Exp-Golomb gaps; -1 or the failing gap."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
