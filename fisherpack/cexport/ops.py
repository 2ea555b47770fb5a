"""The C99 kernels of ``fisherpack export --format c``, as text (only libc and libm).

Every weight is read through one cursor, ``fp_next``, that yields the next kept position and its
value: from the packed bit string of a compressed tensor (layout in emit.py), or from a dense
float32 or int8 array (tensors stored losslessly, and the dense baselines of benchmarks/c_runtime.py).
The kernels compute in float32, summing in the order a plain convolution does (input channel, then
kernel row, then column), bias after the sum.
"""

from __future__ import annotations

__all__ = ["kernels", "ACTS"]

ACTS = {"none": 0, "relu": 1, "relu6": 2, "tanh": 3, "sigmoid": 4, "gelu": 5, "gelu_tanh": 6}


# ---------------------------------------------------------------- kernels (C99, libc + libm only)

_TYPES = """\
typedef struct {
    int32_t count;                    /* kept entries (dense arrays: all entries) */
    const unsigned char *data;        /* packed: [gap][group][code] per kept entry, MSB first */
    const unsigned char *bitmap;      /* packed: the mask, one bit per entry; NULL: gaps in data */
    const float *f32;                 /* dense float32 weights */
    const signed char *i8;            /* dense int8 weights, value = i8 * i8_scale */
    float i8_scale;
    unsigned char gap_bits, id_bits;
    unsigned char bits[FP_MAX_GROUPS]; /* per group: code width */
    signed char exps[FP_MAX_GROUPS];   /* per group: step = 2^exp */
    unsigned char odd[FP_MAX_GROUPS];  /* per group: 1 for the grid without zero */
} fp_tensor;

typedef struct { const unsigned char *p; uint64_t acc; unsigned n; } fp_bits;

typedef struct {
    const fp_tensor *t;
    fp_bits s, m;
    int32_t pos, left;                /* pos: the current kept entry; INT32_MAX after the last */
    float val;
    float scale[FP_MAX_GROUPS];
} fp_cursor;

typedef struct { int32_t c, h, w, o, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups; } fp_convgeo;
typedef struct { int32_t avg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, count_pad; } fp_poolgeo;
"""

_CURSOR = """\
static uint32_t fp_get(fp_bits *r, unsigned w)
{
    while (r->n < w) {
        r->acc = (r->acc << 8) | *r->p++;
        r->n += 8;
    }
    r->n -= w;
    return (uint32_t)((r->acc >> r->n) & (((uint64_t)1 << w) - 1u));
}

static void fp_next(fp_cursor *c)
{
    const fp_tensor *t = c->t;
    if (c->left <= 0) {
        c->pos = INT32_MAX;
        return;
    }
    c->left--;
    if (t->data) {
        unsigned g, b;
        uint32_t code;
        int32_t level;
        if (t->bitmap) {
            do c->pos++; while (!fp_get(&c->m, 1));
        } else {
            c->pos += 1 + (int32_t)fp_get(&c->s, t->gap_bits);
        }
        g = t->id_bits ? fp_get(&c->s, t->id_bits) : 0u;
        b = t->bits[g];
        code = fp_get(&c->s, b);
        level = t->odd[g] ? 2 * (int32_t)code + 1 - ((int32_t)1 << b) : (int32_t)code - ((int32_t)1 << (b - 1));
        c->val = (float)level * c->scale[g];
        return;
    }
    c->pos++;
    c->val = t->f32 ? t->f32[c->pos] : (float)t->i8[c->pos] * t->i8_scale;
}

static void fp_start(fp_cursor *c, const fp_tensor *t)
{
    unsigned g;
    c->t = t;
    c->s.p = t->data;
    c->s.acc = 0;
    c->s.n = 0;
    c->m = c->s;
    c->m.p = t->bitmap;
    c->pos = -1;
    c->left = t->count;
    for (g = 0; g < FP_MAX_GROUPS; g++)
        c->scale[g] = ldexpf(1.0f, t->exps[g] - (t->odd[g] ? 1 : 0));
    fp_next(c);
}
"""

_ACT_CASES = {
    "relu": "case 1: return v > 0.0f ? v : 0.0f;",
    "relu6": "case 2: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);",
    "tanh": "case 3: return tanhf(v);",
    "sigmoid": "case 4: return 1.0f / (1.0f + expf(-v));",
    "gelu": "case 5: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));",
    "gelu_tanh": "case 6: return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));",
}

_POOL = """\
static void fp_pool_plane(const float *x, int32_t h, int32_t w, const fp_poolgeo *p, float *y)
{
    int32_t oh, ow, i, j;
    for (oh = 0; oh < p->oh; oh++) {
        for (ow = 0; ow < p->ow; ow++) {
            int32_t hs = oh * p->sh - p->ph, ws = ow * p->sw - p->pw;
            if (!p->avg) {
                float m = -INFINITY;
                for (i = 0; i < p->kh; i++) {
                    int32_t ih = hs + i * p->dh;
                    for (j = 0; ih >= 0 && ih < h && j < p->kw; j++) {
                        int32_t iw = ws + j * p->dw;
                        if (iw >= 0 && iw < w && x[ih * w + iw] > m) m = x[ih * w + iw];
                    }
                }
                y[oh * p->ow + ow] = m;
            } else {
                int32_t he = hs + p->kh < h + p->ph ? hs + p->kh : h + p->ph;
                int32_t we = ws + p->kw < w + p->pw ? ws + p->kw : w + p->pw;
                int32_t size = (he - hs) * (we - ws);
                float s = 0.0f;
                hs = hs < 0 ? 0 : hs;
                ws = ws < 0 ? 0 : ws;
                he = he > h ? h : he;
                we = we > w ? w : we;
                for (i = hs; i < he; i++)
                    for (j = ws; j < we; j++) s += x[i * w + j];
                y[oh * p->ow + ow] = s / (float)(p->count_pad ? size : (he - hs) * (we - ws));
            }
        }
    }
}
"""

_LINEAR = """\
static void fp_linear(const fp_tensor *wt, const fp_tensor *b, const float *x, float *y, int32_t rows, int32_t in,
                      int32_t out, const float *mul, const float *add, int act)
{
    fp_cursor cw, cb;
    int32_t r, o;
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * in;
        fp_start(&cw, wt);
        if (b) fp_start(&cb, b);
        for (o = 0; o < out; o++) {
            int32_t base = o * in, end = base + in;
            float acc = 0.0f;
            while (cw.pos < end) {
                acc += cw.val * xr[cw.pos - base];
                fp_next(&cw);
            }
            if (b && cb.pos == o) {
                acc += cb.val;
                fp_next(&cb);
            }
            if (mul) acc = acc * mul[o] + add[o];
            y[r * out + o] = fp_act(acc, act);
        }
    }
}
"""

_CONV = """\
static int32_t fp_first(int32_t off, int32_t s) { return off >= 0 ? 0 : (s - 1 - off) / s; }

static int32_t fp_stop(int32_t off, int32_t s, int32_t n, int32_t on)
{
    int32_t k = n - 1 - off < 0 ? 0 : (n - 1 - off) / s + 1;
    return k < on ? k : on;
}

/* One output channel at a time: its kept weights are consecutive in row-major order. Each weight
   is added into the whole output plane; then bias, folded BatchNorm, activation, and an optional
   pooling of the plane (fused so the unpooled output never exists in full). */
static void fp_conv(const fp_tensor *wt, const fp_tensor *b, const fp_convgeo *g, const float *x, float *y,
                    const float *mul, const float *add, int act, const fp_poolgeo *pool, float *plane)
{
    fp_cursor cw, cb;
    int32_t o, i, n = g->oh * g->ow, ksz = g->kh * g->kw, cpg = g->c / g->groups, opg = g->o / g->groups;
    int32_t per = cpg * ksz;
    fp_start(&cw, wt);
    if (b) fp_start(&cb, b);
    for (o = 0; o < g->o; o++) {
        float *out = pool ? plane : y + o * n;
        int32_t base = o * per, end = base + per;
        float bias = 0.0f;
        for (i = 0; i < n; i++) out[i] = 0.0f;
        while (cw.pos < end) {
            int32_t r = cw.pos - base, k = r % ksz, ci = (o / opg) * cpg + r / ksz;
            int32_t offh = (k / g->kw) * g->dh - g->ph, offw = (k % g->kw) * g->dw - g->pw;
            int32_t h0 = fp_first(offh, g->sh), h1 = fp_stop(offh, g->sh, g->h, g->oh);
            int32_t w0 = fp_first(offw, g->sw), w1 = fp_stop(offw, g->sw, g->w, g->ow);
            const float *xc = x + ci * g->h * g->w;
            float v = cw.val;
            int32_t oh, ow;
            for (oh = h0; oh < h1; oh++) {
                const float *xr = xc + (oh * g->sh + offh) * g->w;
                float *yr = out + oh * g->ow;
                for (ow = w0; ow < w1; ow++) yr[ow] += v * xr[ow * g->sw + offw];
            }
            fp_next(&cw);
        }
        if (b && cb.pos == o) {
            bias = cb.val;
            fp_next(&cb);
        }
        for (i = 0; i < n; i++) {
            float v = out[i] + bias;
            if (mul) v = v * mul[o] + add[o];
            out[i] = fp_act(v, act);
        }
        if (pool) fp_pool_plane(plane, g->oh, g->ow, pool, y + o * pool->oh * pool->ow);
    }
}
"""

_ELEMENTWISE = {
    "pool": """\
static void fp_pool(const float *x, float *y, int32_t c, int32_t h, int32_t w, const fp_poolgeo *p)
{
    int32_t i;
    for (i = 0; i < c; i++) fp_pool_plane(x + i * h * w, h, w, p, y + i * p->oh * p->ow);
}
""",
    "map": """\
static void fp_map(const float *x, float *y, int32_t n, int act)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = fp_act(x[i], act);
}
""",
    "add": """\
static void fp_add(const float *a, const float *b, float *y, int32_t n, int act)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = fp_act(a[i] + b[i], act);
}
""",
    "affine": """\
static void fp_affine(const float *x, float *y, int32_t c, int32_t inner, const float *mul, const float *add, int act)
{
    int32_t i, j;
    for (i = 0; i < c; i++)
        for (j = 0; j < inner; j++) {
            float v = x[i * inner + j];
            if (mul) v *= mul[i];
            if (add) v += add[i];
            y[i * inner + j] = fp_act(v, act);
        }
}
""",
    "softmax": """\
static void fp_softmax(const float *x, float *y, int32_t outer, int32_t n, int32_t inner)
{
    int32_t a, b, i;
    for (a = 0; a < outer; a++)
        for (b = 0; b < inner; b++) {
            const float *xr = x + a * n * inner + b;
            float *yr = y + a * n * inner + b, m = xr[0], s = 0.0f;
            for (i = 1; i < n; i++) m = xr[i * inner] > m ? xr[i * inner] : m;
            for (i = 0; i < n; i++) {
                yr[i * inner] = expf(xr[i * inner] - m);
                s += yr[i * inner];
            }
            for (i = 0; i < n; i++) yr[i * inner] /= s;
        }
}
""",
}


def kernels(kinds: set[str], acts: set[str], fused_pool: bool) -> str:
    """The C kernels the ops of ``kinds`` need, nothing more (-Wall would flag an unused one)."""
    parts = [_TYPES]
    if kinds & {"linear", "conv"}:
        parts.append(_CURSOR)
    if kinds & {"linear", "conv", "map", "add", "affine"}:
        cases = "\n".join(f"    {_ACT_CASES[a]}" for a in sorted(acts - {"none"}))
        parts.append(
            f"static float fp_act(float v, int act)\n{{\n    switch (act) {{\n{cases}\n"
            "    default: return v;\n    }\n}\n"
        )
    if "pool" in kinds or fused_pool:
        parts.append(_POOL)
    parts += [_LINEAR] if "linear" in kinds else []
    parts += [_CONV] if "conv" in kinds else []
    parts += [_ELEMENTWISE[k] for k in ("pool", "map", "add", "affine", "softmax") if k in kinds]
    return "\n".join(parts)
