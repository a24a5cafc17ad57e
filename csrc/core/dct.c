/* dct.c — scipy.fftpack.dct (type II, unnormalised) in the same double-precision arithmetic as scipy, for
 * imagehash's pHash (dr_dct2_*, declared in resample.inc).
 *
 * imagehash thresholds the low DCT coefficients at their median. Where the pixels make many coefficients zero in
 * exact arithmetic (flat, mirror-symmetric or two-pixel-wide crops), the hash bits follow the rounding noise of
 * scipy's transform, so a mathematically equal DCT is not enough: this file performs scipy's operations in scipy's
 * order. scipy computes DCT-II through its FFT library (pocketfft, C++): pre-processing of the input (doubling of
 * the ends, sums and differences of neighbours), a real backward FFT in FFTPACK's half-complex layout by radix
 * passes 4, 2, 3, 5 and a generic odd radix, then a twiddle post-processing. The radix order, the twiddle factors
 * (cos/sin of multiples of π/(4N) in double, combined from two tables) and every addition and multiplication are
 * reproduced here, in C11 double arithmetic (no FMA contraction: the build targets baseline x86-64).
 *
 * Lengths for which pocketfft switches to Bluestein's algorithm (N >= 50 with a large prime factor, when its cost
 * model prefers it) are computed by the same radix passes here; those coefficients equal scipy's up to rounding.
 * Cost: O(N log N) per line for the small factors, O(N·p) for a prime factor p.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "resample.inc"

/* ---- twiddle factors: pocketfft's sincos_2pibyn (exp(2πi·k/n) from two tables) ------------------------- */

typedef struct {
    double r, i;
} cplx;

static cplx sc_calc(size_t x, size_t n, double ang) {
    x <<= 3;
    cplx z;
    if (x < 4 * n) {
        if (x < 2 * n) {
            if (x < n) {
                z.r = cos((double)x * ang);
                z.i = sin((double)x * ang);
            } else {
                z.r = sin((double)(2 * n - x) * ang);
                z.i = cos((double)(2 * n - x) * ang);
            }
        } else {
            x -= 2 * n;
            if (x < n) {
                z.r = -sin((double)x * ang);
                z.i = cos((double)x * ang);
            } else {
                z.r = -cos((double)(2 * n - x) * ang);
                z.i = sin((double)(2 * n - x) * ang);
            }
        }
    } else {
        x = 8 * n - x;
        if (x < 2 * n) {
            if (x < n) {
                z.r = cos((double)x * ang);
                z.i = -sin((double)x * ang);
            } else {
                z.r = sin((double)(2 * n - x) * ang);
                z.i = -cos((double)(2 * n - x) * ang);
            }
        } else {
            x -= 2 * n;
            if (x < n) {
                z.r = -sin((double)x * ang);
                z.i = -cos((double)x * ang);
            } else {
                z.r = -cos((double)(2 * n - x) * ang);
                z.i = -sin((double)(2 * n - x) * ang);
            }
        }
    }
    return z;
}

typedef struct {
    size_t n, mask, shift;
    cplx *v1, *v2;
} sincos_tab;

static int sc_make(sincos_tab *s, size_t n) {
    const long double pi = 3.141592653589793238462643383279502884197L;
    double ang = (double)(0.25L * pi / (long double)n);
    size_t nval = (n + 2) / 2;
    s->n = n;
    s->shift = 1;
    while (((size_t)1 << s->shift) * ((size_t)1 << s->shift) < nval)
        s->shift++;
    s->mask = ((size_t)1 << s->shift) - 1;
    size_t n1 = s->mask + 1, n2 = (nval + s->mask) / (s->mask + 1);
    s->v1 = (cplx *)malloc((n1 + n2) * sizeof(cplx));
    if (!s->v1)
        return -1;
    s->v2 = s->v1 + n1;
    s->v1[0].r = 1.0;
    s->v1[0].i = 0.0;
    for (size_t i = 1; i < n1; i++)
        s->v1[i] = sc_calc(i, n, ang);
    s->v2[0].r = 1.0;
    s->v2[0].i = 0.0;
    for (size_t i = 1; i < n2; i++)
        s->v2[i] = sc_calc(i * (s->mask + 1), n, ang);
    return 0;
}

static cplx sc_at(const sincos_tab *s, size_t idx) {
    cplx z;
    int conj = 0;
    if (2 * idx > s->n) {
        idx = s->n - idx;
        conj = 1;
    }
    cplx a = s->v1[idx & s->mask], b = s->v2[idx >> s->shift];
    z.r = a.r * b.r - a.i * b.i;
    z.i = a.r * b.i + a.i * b.r;
    if (conj)
        z.i = -z.i;
    return z;
}

/* ---- the plan: factors of N and their twiddles (pocketfft's rfftp), the DCT twiddles ----------------------- */

struct dr_dct2_plan {
    size_t n, nf;
    size_t fct[64];
    double *tw[64], *tws[64];
    double *dtw; /* DCT post-processing twiddles: cos(π(i+1)/(2N)) as pocketfft forms them */
    double *mem;
};

void dr_dct2_free(dr_dct2_plan *p) {
    if (!p)
        return;
    free(p->mem);
    free(p);
}

dr_dct2_plan *dr_dct2_make(int64_t n_) {
    size_t n = (size_t)n_;
    dr_dct2_plan *p = (dr_dct2_plan *)calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = n;
    size_t len = n;
    while (len % 4 == 0) {
        p->fct[p->nf++] = 4;
        len >>= 2;
    }
    if (len % 2 == 0) { /* factor 2 goes to the front */
        len >>= 1;
        p->fct[p->nf++] = 2;
        size_t t = p->fct[0];
        p->fct[0] = p->fct[p->nf - 1];
        p->fct[p->nf - 1] = t;
    }
    for (size_t d = 3; d * d <= len; d += 2)
        while (len % d == 0) {
            p->fct[p->nf++] = d;
            len /= d;
        }
    if (len > 1)
        p->fct[p->nf++] = len;
    if (n == 1)
        p->nf = 0;
    size_t twsz = 0, l1 = 1;
    for (size_t k = 0; k < p->nf; k++) {
        size_t ip = p->fct[k], ido = n / (l1 * ip);
        twsz += (ip - 1) * (ido - 1);
        if (ip > 5)
            twsz += 2 * ip;
        l1 *= ip;
    }
    p->mem = (double *)malloc((twsz + n + 1) * sizeof(double));
    sincos_tab tw, tw4;
    memset(&tw, 0, sizeof tw);
    memset(&tw4, 0, sizeof tw4);
    if (!p->mem || sc_make(&tw, n) < 0 || sc_make(&tw4, 4 * n) < 0) {
        free(tw.v1);
        dr_dct2_free(p);
        return NULL;
    }
    double *ptr = p->mem;
    l1 = 1;
    for (size_t k = 0; k < p->nf; k++) {
        size_t ip = p->fct[k], ido = n / (l1 * ip);
        if (k < p->nf - 1) { /* the last factor needs no twiddles */
            p->tw[k] = ptr;
            ptr += (ip - 1) * (ido - 1);
            for (size_t j = 1; j < ip; j++)
                for (size_t i = 1; i <= (ido - 1) / 2; i++) {
                    cplx z = sc_at(&tw, j * l1 * i);
                    p->tw[k][(j - 1) * (ido - 1) + 2 * i - 2] = z.r;
                    p->tw[k][(j - 1) * (ido - 1) + 2 * i - 1] = z.i;
                }
        }
        if (ip > 5) {
            p->tws[k] = ptr;
            ptr += 2 * ip;
            p->tws[k][0] = 1.0;
            p->tws[k][1] = 0.0;
            for (size_t i = 2, ic = 2 * ip - 2; i <= ic; i += 2, ic -= 2) {
                cplx z = sc_at(&tw, i / 2 * (n / ip));
                p->tws[k][i] = z.r;
                p->tws[k][i + 1] = z.i;
                p->tws[k][ic] = z.r;
                p->tws[k][ic + 1] = -z.i;
            }
        }
        l1 *= ip;
    }
    p->dtw = ptr;
    for (size_t i = 0; i < n; i++)
        p->dtw[i] = sc_at(&tw4, i + 1).r;
    free(tw.v1);
    free(tw4.v1);
    return p;
}

/* ---- FFTPACK's backward radix passes (half-complex → real) -------------------------------------------------- */

#define PM(a, b, c, d)                                                                                             \
    do {                                                                                                           \
        double c_ = (c), d_ = (d);                                                                                 \
        a = c_ + d_;                                                                                               \
        b = c_ - d_;                                                                                               \
    } while (0)
/* (a + ib) = conj(c + id) · (e + if) */
#define MULPM(a, b, c, d, e, f)                                                                                    \
    do {                                                                                                           \
        double c_ = (c), d_ = (d), e_ = (e), f_ = (f);                                                             \
        a = c_ * e_ + d_ * f_;                                                                                     \
        b = c_ * f_ - d_ * e_;                                                                                     \
    } while (0)

#define WA(x, i) wa[(i) + (x) * (ido - 1)]
#define CC(a, b, c) cc[(a) + ido * ((b) + CDIM * (c))]
#define CH(a, b, c) ch[(a) + ido * ((b) + l1 * (c))]

static void radb2(size_t ido, size_t l1, const double *cc, double *ch, const double *wa) {
#define CDIM 2
    for (size_t k = 0; k < l1; k++)
        PM(CH(0, k, 0), CH(0, k, 1), CC(0, 0, k), CC(ido - 1, 1, k));
    if ((ido & 1) == 0)
        for (size_t k = 0; k < l1; k++) {
            CH(ido - 1, k, 0) = 2 * CC(ido - 1, 0, k);
            CH(ido - 1, k, 1) = -2 * CC(0, 1, k);
        }
    if (ido <= 2)
        return;
    for (size_t k = 0; k < l1; ++k)
        for (size_t i = 2; i < ido; i += 2) {
            size_t ic = ido - i;
            double ti2, tr2;
            PM(CH(i - 1, k, 0), tr2, CC(i - 1, 0, k), CC(ic - 1, 1, k));
            PM(ti2, CH(i, k, 0), CC(i, 0, k), CC(ic, 1, k));
            MULPM(CH(i, k, 1), CH(i - 1, k, 1), WA(0, i - 2), WA(0, i - 1), ti2, tr2);
        }
#undef CDIM
}

static void radb3(size_t ido, size_t l1, const double *cc, double *ch, const double *wa) {
#define CDIM 3
    const double taur = -0.5, taui = 0.8660254037844386467637231707529362;
    for (size_t k = 0; k < l1; k++) {
        double tr2 = 2 * CC(ido - 1, 1, k);
        double cr2 = CC(0, 0, k) + taur * tr2;
        CH(0, k, 0) = CC(0, 0, k) + tr2;
        double ci3 = 2 * taui * CC(0, 2, k);
        PM(CH(0, k, 2), CH(0, k, 1), cr2, ci3);
    }
    if (ido == 1)
        return;
    for (size_t k = 0; k < l1; k++)
        for (size_t i = 2, ic = ido - 2; i < ido; i += 2, ic -= 2) {
            double tr2 = CC(i - 1, 2, k) + CC(ic - 1, 1, k);
            double ti2 = CC(i, 2, k) - CC(ic, 1, k);
            double cr2 = CC(i - 1, 0, k) + taur * tr2;
            double ci2 = CC(i, 0, k) + taur * ti2;
            CH(i - 1, k, 0) = CC(i - 1, 0, k) + tr2;
            CH(i, k, 0) = CC(i, 0, k) + ti2;
            double cr3 = taui * (CC(i - 1, 2, k) - CC(ic - 1, 1, k));
            double ci3 = taui * (CC(i, 2, k) + CC(ic, 1, k));
            double di2, di3, dr2, dr3;
            PM(dr3, dr2, cr2, ci3);
            PM(di2, di3, ci2, cr3);
            MULPM(CH(i, k, 1), CH(i - 1, k, 1), WA(0, i - 2), WA(0, i - 1), di2, dr2);
            MULPM(CH(i, k, 2), CH(i - 1, k, 2), WA(1, i - 2), WA(1, i - 1), di3, dr3);
        }
#undef CDIM
}

static void radb4(size_t ido, size_t l1, const double *cc, double *ch, const double *wa) {
#define CDIM 4
    const double sqrt2 = 1.414213562373095048801688724209698;
    for (size_t k = 0; k < l1; k++) {
        double tr1, tr2;
        PM(tr2, tr1, CC(0, 0, k), CC(ido - 1, 3, k));
        double tr3 = 2 * CC(ido - 1, 1, k);
        double tr4 = 2 * CC(0, 2, k);
        PM(CH(0, k, 0), CH(0, k, 2), tr2, tr3);
        PM(CH(0, k, 3), CH(0, k, 1), tr1, tr4);
    }
    if ((ido & 1) == 0)
        for (size_t k = 0; k < l1; k++) {
            double tr1, tr2, ti1, ti2;
            PM(ti1, ti2, CC(0, 3, k), CC(0, 1, k));
            PM(tr2, tr1, CC(ido - 1, 0, k), CC(ido - 1, 2, k));
            CH(ido - 1, k, 0) = tr2 + tr2;
            CH(ido - 1, k, 1) = sqrt2 * (tr1 - ti1);
            CH(ido - 1, k, 2) = ti2 + ti2;
            CH(ido - 1, k, 3) = -sqrt2 * (tr1 + ti1);
        }
    if (ido <= 2)
        return;
    for (size_t k = 0; k < l1; ++k)
        for (size_t i = 2; i < ido; i += 2) {
            double ci2, ci3, ci4, cr2, cr3, cr4, ti1, ti2, ti3, ti4, tr1, tr2, tr3, tr4;
            size_t ic = ido - i;
            PM(tr2, tr1, CC(i - 1, 0, k), CC(ic - 1, 3, k));
            PM(ti1, ti2, CC(i, 0, k), CC(ic, 3, k));
            PM(tr4, ti3, CC(i, 2, k), CC(ic, 1, k));
            PM(tr3, ti4, CC(i - 1, 2, k), CC(ic - 1, 1, k));
            PM(CH(i - 1, k, 0), cr3, tr2, tr3);
            PM(CH(i, k, 0), ci3, ti2, ti3);
            PM(cr4, cr2, tr1, tr4);
            PM(ci2, ci4, ti1, ti4);
            MULPM(CH(i, k, 1), CH(i - 1, k, 1), WA(0, i - 2), WA(0, i - 1), ci2, cr2);
            MULPM(CH(i, k, 2), CH(i - 1, k, 2), WA(1, i - 2), WA(1, i - 1), ci3, cr3);
            MULPM(CH(i, k, 3), CH(i - 1, k, 3), WA(2, i - 2), WA(2, i - 1), ci4, cr4);
        }
#undef CDIM
}

static void radb5(size_t ido, size_t l1, const double *cc, double *ch, const double *wa) {
#define CDIM 5
    const double tr11 = 0.3090169943749474241022934171828191, ti11 = 0.9510565162951535721164393333793821,
                 tr12 = -0.8090169943749474241022934171828191, ti12 = 0.5877852522924731291687059546390728;
    for (size_t k = 0; k < l1; k++) {
        double ti5 = CC(0, 2, k) + CC(0, 2, k);
        double ti4 = CC(0, 4, k) + CC(0, 4, k);
        double tr2 = CC(ido - 1, 1, k) + CC(ido - 1, 1, k);
        double tr3 = CC(ido - 1, 3, k) + CC(ido - 1, 3, k);
        CH(0, k, 0) = CC(0, 0, k) + tr2 + tr3;
        double cr2 = CC(0, 0, k) + tr11 * tr2 + tr12 * tr3;
        double cr3 = CC(0, 0, k) + tr12 * tr2 + tr11 * tr3;
        double ci4, ci5;
        MULPM(ci5, ci4, ti5, ti4, ti11, ti12);
        PM(CH(0, k, 4), CH(0, k, 1), cr2, ci5);
        PM(CH(0, k, 3), CH(0, k, 2), cr3, ci4);
    }
    if (ido == 1)
        return;
    for (size_t k = 0; k < l1; ++k)
        for (size_t i = 2, ic = ido - 2; i < ido; i += 2, ic -= 2) {
            double tr2, tr3, tr4, tr5, ti2, ti3, ti4, ti5;
            PM(tr2, tr5, CC(i - 1, 2, k), CC(ic - 1, 1, k));
            PM(ti5, ti2, CC(i, 2, k), CC(ic, 1, k));
            PM(tr3, tr4, CC(i - 1, 4, k), CC(ic - 1, 3, k));
            PM(ti4, ti3, CC(i, 4, k), CC(ic, 3, k));
            CH(i - 1, k, 0) = CC(i - 1, 0, k) + tr2 + tr3;
            CH(i, k, 0) = CC(i, 0, k) + ti2 + ti3;
            double cr2 = CC(i - 1, 0, k) + tr11 * tr2 + tr12 * tr3;
            double ci2 = CC(i, 0, k) + tr11 * ti2 + tr12 * ti3;
            double cr3 = CC(i - 1, 0, k) + tr12 * tr2 + tr11 * tr3;
            double ci3 = CC(i, 0, k) + tr12 * ti2 + tr11 * ti3;
            double ci4, ci5, cr5, cr4;
            MULPM(cr5, cr4, tr5, tr4, ti11, ti12);
            MULPM(ci5, ci4, ti5, ti4, ti11, ti12);
            double dr2, dr3, dr4, dr5, di2, di3, di4, di5;
            PM(dr4, dr3, cr3, ci4);
            PM(di3, di4, ci3, cr4);
            PM(dr5, dr2, cr2, ci5);
            PM(di2, di5, ci2, cr5);
            MULPM(CH(i, k, 1), CH(i - 1, k, 1), WA(0, i - 2), WA(0, i - 1), di2, dr2);
            MULPM(CH(i, k, 2), CH(i - 1, k, 2), WA(1, i - 2), WA(1, i - 1), di3, dr3);
            MULPM(CH(i, k, 3), CH(i - 1, k, 3), WA(2, i - 2), WA(2, i - 1), di4, dr4);
            MULPM(CH(i, k, 4), CH(i - 1, k, 4), WA(3, i - 2), WA(3, i - 1), di5, dr5);
        }
#undef CDIM
}

/* A generic odd radix ip (> 5); cc is used as workspace. */
static void radbg(size_t ido, size_t ip, size_t l1, double *cc, double *ch, const double *wa, const double *csarr) {
    const size_t CDIM_ = ip;
    size_t ipph = (ip + 1) / 2, idl1 = ido * l1;
#define CDIM CDIM_
#define C1(a, b, c) cc[(a) + ido * ((b) + l1 * (c))]
#define C2(a, b) cc[(a) + idl1 * (b)]
#define CH2(a, b) ch[(a) + idl1 * (b)]
    for (size_t k = 0; k < l1; ++k)
        for (size_t i = 0; i < ido; ++i)
            CH(i, k, 0) = CC(i, 0, k);
    for (size_t j = 1, jc = ip - 1; j < ipph; ++j, --jc) {
        size_t j2 = 2 * j - 1;
        for (size_t k = 0; k < l1; ++k) {
            CH(0, k, j) = 2 * CC(ido - 1, j2, k);
            CH(0, k, jc) = 2 * CC(0, j2 + 1, k);
        }
    }
    if (ido != 1)
        for (size_t j = 1, jc = ip - 1; j < ipph; ++j, --jc) {
            size_t j2 = 2 * j - 1;
            for (size_t k = 0; k < l1; ++k)
                for (size_t i = 1, ic = ido - i - 2; i <= ido - 2; i += 2, ic -= 2) {
                    CH(i, k, j) = CC(i, j2 + 1, k) + CC(ic, j2, k);
                    CH(i, k, jc) = CC(i, j2 + 1, k) - CC(ic, j2, k);
                    CH(i + 1, k, j) = CC(i + 1, j2 + 1, k) - CC(ic + 1, j2, k);
                    CH(i + 1, k, jc) = CC(i + 1, j2 + 1, k) + CC(ic + 1, j2, k);
                }
        }
    for (size_t l = 1, lc = ip - 1; l < ipph; ++l, --lc) {
        for (size_t ik = 0; ik < idl1; ++ik) {
            C2(ik, l) = CH2(ik, 0) + csarr[2 * l] * CH2(ik, 1) + csarr[4 * l] * CH2(ik, 2);
            C2(ik, lc) = csarr[2 * l + 1] * CH2(ik, ip - 1) + csarr[4 * l + 1] * CH2(ik, ip - 2);
        }
        size_t iang = 2 * l;
        size_t j = 3, jc = ip - 3;
        for (; j + 3 < ipph; j += 4, jc -= 4) {
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar1 = csarr[2 * iang], ai1 = csarr[2 * iang + 1];
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar2 = csarr[2 * iang], ai2 = csarr[2 * iang + 1];
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar3 = csarr[2 * iang], ai3 = csarr[2 * iang + 1];
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar4 = csarr[2 * iang], ai4 = csarr[2 * iang + 1];
            for (size_t ik = 0; ik < idl1; ++ik) {
                C2(ik, l) += ar1 * CH2(ik, j) + ar2 * CH2(ik, j + 1) + ar3 * CH2(ik, j + 2) + ar4 * CH2(ik, j + 3);
                C2(ik, lc) += ai1 * CH2(ik, jc) + ai2 * CH2(ik, jc - 1) + ai3 * CH2(ik, jc - 2) + ai4 * CH2(ik, jc - 3);
            }
        }
        for (; j + 1 < ipph; j += 2, jc -= 2) {
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar1 = csarr[2 * iang], ai1 = csarr[2 * iang + 1];
            iang += l;
            if (iang > ip)
                iang -= ip;
            double ar2 = csarr[2 * iang], ai2 = csarr[2 * iang + 1];
            for (size_t ik = 0; ik < idl1; ++ik) {
                C2(ik, l) += ar1 * CH2(ik, j) + ar2 * CH2(ik, j + 1);
                C2(ik, lc) += ai1 * CH2(ik, jc) + ai2 * CH2(ik, jc - 1);
            }
        }
        for (; j < ipph; ++j, --jc) {
            iang += l;
            if (iang > ip)
                iang -= ip;
            double war = csarr[2 * iang], wai = csarr[2 * iang + 1];
            for (size_t ik = 0; ik < idl1; ++ik) {
                C2(ik, l) += war * CH2(ik, j);
                C2(ik, lc) += wai * CH2(ik, jc);
            }
        }
    }
    for (size_t j = 1; j < ipph; ++j)
        for (size_t ik = 0; ik < idl1; ++ik)
            CH2(ik, 0) += CH2(ik, j);
    for (size_t j = 1, jc = ip - 1; j < ipph; ++j, --jc)
        for (size_t k = 0; k < l1; ++k)
            PM(CH(0, k, jc), CH(0, k, j), C1(0, k, j), C1(0, k, jc));
    if (ido == 1)
        return;
    for (size_t j = 1, jc = ip - 1; j < ipph; ++j, --jc)
        for (size_t k = 0; k < l1; ++k)
            for (size_t i = 1; i <= ido - 2; i += 2) {
                CH(i, k, j) = C1(i, k, j) - C1(i + 1, k, jc);
                CH(i, k, jc) = C1(i, k, j) + C1(i + 1, k, jc);
                CH(i + 1, k, j) = C1(i + 1, k, j) + C1(i, k, jc);
                CH(i + 1, k, jc) = C1(i + 1, k, j) - C1(i, k, jc);
            }
    for (size_t j = 1; j < ip; ++j) {
        size_t is = (j - 1) * (ido - 1);
        for (size_t k = 0; k < l1; ++k) {
            size_t idij = is;
            for (size_t i = 1; i <= ido - 2; i += 2) {
                double t1 = CH(i, k, j), t2 = CH(i + 1, k, j);
                CH(i, k, j) = wa[idij] * t1 - wa[idij + 1] * t2;
                CH(i + 1, k, j) = wa[idij] * t2 + wa[idij + 1] * t1;
                idij += 2;
            }
        }
    }
#undef C1
#undef C2
#undef CH2
#undef CDIM
}

/* In place: scipy.fftpack.dct(c) (type II, norm=None) of the n = plan length values c; work: n doubles. */
void dr_dct2_exec(const dr_dct2_plan *p, double *c, double *work) {
    const size_t N = p->n, NS2 = (N + 1) / 2;
    c[0] *= 2;
    if ((N & 1) == 0)
        c[N - 1] *= 2;
    for (size_t k = 1; k + 1 < N; k += 2) {
        double t = c[k + 1];
        c[k + 1] = t - c[k];
        c[k] = t + c[k];
    }
    double *p1 = c, *p2 = work;
    for (size_t k = 0, l1 = 1; k < p->nf; k++) {
        size_t ip = p->fct[k], ido = N / (ip * l1);
        if (ip == 4)
            radb4(ido, l1, p1, p2, p->tw[k]);
        else if (ip == 2)
            radb2(ido, l1, p1, p2, p->tw[k]);
        else if (ip == 3)
            radb3(ido, l1, p1, p2, p->tw[k]);
        else if (ip == 5)
            radb5(ido, l1, p1, p2, p->tw[k]);
        else
            radbg(ido, ip, l1, p1, p2, p->tw[k], p->tws[k]);
        double *t = p1;
        p1 = p2;
        p2 = t;
        l1 *= ip;
    }
    if (p1 != c)
        memcpy(c, p1, N * sizeof(double));
    const double *tw = p->dtw;
    for (size_t k = 1, kc = N - 1; k < NS2; ++k, --kc) {
        double t1 = tw[k - 1] * c[kc] + tw[kc - 1] * c[k];
        double t2 = tw[k - 1] * c[k] - tw[kc - 1] * c[kc];
        c[k] = 0.5 * (t1 + t2);
        c[kc] = 0.5 * (t1 - t2);
    }
    if ((N & 1) == 0)
        c[NS2] *= tw[NS2 - 1];
}
