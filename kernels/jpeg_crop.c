/* Crop-and-resize of one stored image (JPEG bytes or raw RGB), decoding as little as the box needs.
 *
 * JPEG: libjpeg's DCT-domain scaling (1/8, 2/8 or 4/8: the smallest that keeps the scaled box at
 * least as large as the output), jpeg_crop_scanline for the iMCU columns the box covers,
 * jpeg_skip_scanlines for the rows above it, and no decoding below its last row. Then a
 * separable triangle (PIL's BILINEAR, antialiased: its support widens with the downscale
 * factor) resize of the box, restricted to the box's own pixels like PIL's crop + resize.
 *
 * Thread-safe (no globals; the error handler jumps back with a per-call jmp_buf), and every
 * failure (corrupt stream, CMYK, empty box, out of memory) returns a nonzero status instead
 * of exiting the process as libjpeg's default handler does.
 */
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

enum { FT_OK = 0, FT_BAD_BOX = 1, FT_BAD_STREAM = 2, FT_NO_MEMORY = 3, FT_BAD_COLOR = 4, FT_BAD_MODE = 5 };

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} ft_error;

static void ft_error_exit(j_common_ptr cinfo) { longjmp(((ft_error *)cinfo->err)->jump, 1); }

/* Warnings (truncated data, bad Huffman codes) mean the pixels are not the stored image: fail. */
static void ft_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0) longjmp(((ft_error *)cinfo->err)->jump, 1);
}

static void ft_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* PIL's triangle filter: taps of output samples over source range [lo, hi), box [b0, b1). */
typedef struct {
    int *first;   /* first source index of each output sample */
    int *count;   /* number of taps */
    float *w;     /* taps, `stride` per output sample */
    int stride;
} ft_taps;

static int ft_make_taps(ft_taps *t, double b0, double b1, int lo, int hi, int out) {
    double scale = (b1 - b0) / out;
    double filterscale = scale > 1.0 ? scale : 1.0;
    double support = filterscale; /* triangle radius 1, widened by the downscale factor */
    t->stride = (int)ceil(support) * 2 + 1;
    t->first = malloc(sizeof(int) * out);
    t->count = malloc(sizeof(int) * out);
    t->w = malloc(sizeof(float) * out * t->stride);
    if (!t->first || !t->count || !t->w) return FT_NO_MEMORY;
    for (int i = 0; i < out; i++) {
        double center = b0 + (i + 0.5) * scale;
        int xmin = (int)floor(center - support + 0.5);
        int xmax = (int)floor(center + support + 0.5);
        if (xmin < lo) xmin = lo;
        if (xmax > hi) xmax = hi;
        int n = xmax - xmin;
        if (n > t->stride) n = t->stride;
        if (n < 1) { /* box narrower than a pixel: take the nearest one */
            xmin = (int)floor(center);
            if (xmin < lo) xmin = lo;
            if (xmin > hi - 1) xmin = hi - 1;
            n = 1;
        }
        float *w = t->w + (size_t)i * t->stride;
        double total = 0.0;
        for (int k = 0; k < n; k++) {
            double d = fabs((xmin + k + 0.5 - center) / filterscale);
            double v = d < 1.0 ? 1.0 - d : 0.0;
            w[k] = (float)v;
            total += v;
        }
        if (total <= 0.0) {
            w[0] = 1.0f;
            total = 1.0;
            n = 1;
        }
        for (int k = 0; k < n; k++) w[k] = (float)(w[k] / total);
        t->first[i] = xmin;
        t->count[i] = n;
    }
    return FT_OK;
}

static void ft_free_taps(ft_taps *t) {
    free(t->first);
    free(t->count);
    free(t->w);
}

static inline uint8_t ft_clip(float v) {
    v += 0.5f;
    return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)v;
}

/* Resize box [bx0,bx1)x[by0,by1) of `rows` (row r is source row row0 + r, column c is source
 * column col0 + c, `pitch` bytes apart) to out_h x out_w RGB. Sources [sx_lo,sx_hi), [sy_lo,sy_hi).
 * Vertical pass first: it runs over contiguous rows of the box (the compiler vectorizes it), and
 * the horizontal pass then touches out_h rows only instead of every decoded row.
 *
 * The horizontal pass runs tap by tap over all output pixels of a row (k outer, j inner): each
 * output's sum then has no dependency chain inside the inner loop, which a per-pixel loop over
 * its taps has (an add's latency per tap: that loop was half of the kernel's time on 224-px
 * RandomResizedCrop views). Taps past a pixel's own count have weight 0 at a clamped column, and
 * adding 0.0f leaves a finite sum unchanged, so every output is the same float sum, in the same
 * order, as the per-pixel loop's. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
/* An AVX2 clone beside the baseline one, chosen at load time by the CPU (ifunc): the vertical
 * pass's u8 -> float conversions run 8 lanes wide there (raw-mode resize ~20 % faster measured on
 * an AVX2 EPYC). No FMA: -std=c99 keeps a*b+c unfused, so both clones give the same bits. */
__attribute__((target_clones("avx2", "default")))
#endif
static int ft_resize(const uint8_t *rows, size_t pitch, int row0, int col0, double bx0, double by0,
                     double bx1, double by1, int sx_lo, int sx_hi, int sy_lo, int sy_hi, uint8_t *dst,
                     int out_h, int out_w) {
    ft_taps tx = {0}, ty = {0};
    float *mid = NULL, *acc = NULL, *wk = NULL;
    int *offset = NULL;
    int status = ft_make_taps(&tx, bx0, bx1, sx_lo, sx_hi, out_w);
    if (status == FT_OK) status = ft_make_taps(&ty, by0, by1, sy_lo, sy_hi, out_h);
    const int n = (sx_hi - sx_lo) * 3; /* floats per intermediate row */
    int taps = 1;                      /* the most taps any output pixel has */
    if (status == FT_OK) {
        for (int j = 0; j < out_w; j++)
            if (tx.count[j] > taps) taps = tx.count[j];
        mid = malloc(sizeof(float) * (size_t)n);
        acc = malloc(sizeof(float) * (size_t)out_w * 3);
        wk = malloc(sizeof(float) * (size_t)out_w * taps);
        offset = malloc(sizeof(int) * (size_t)out_w * taps);
        if (!mid || !acc || !wk || !offset) status = FT_NO_MEMORY;
    }
    if (status == FT_OK) {
        /* Tap k of output j: weight wk[k*out_w + j] at float offset[k*out_w + j] of `mid`. */
        for (int k = 0; k < taps; k++)
            for (int j = 0; j < out_w; j++) {
                int col = tx.first[j] + k;
                int last = sx_hi - 1;
                wk[(size_t)k * out_w + j] = k < tx.count[j] ? tx.w[(size_t)j * tx.stride + k] : 0.0f;
                offset[(size_t)k * out_w + j] = ((col < last ? col : last) - sx_lo) * 3;
            }
        for (int i = 0; i < out_h; i++) {
            const float *w = ty.w + (size_t)i * ty.stride;
            const uint8_t *src = rows + (size_t)(ty.first[i] - row0) * pitch + (size_t)(sx_lo - col0) * 3;
            for (int k = 0; k < n; k++) mid[k] = w[0] * src[k];
            for (int t = 1; t < ty.count[i]; t++) {
                const uint8_t *s = src + (size_t)t * pitch;
                const float wt = w[t];
                for (int k = 0; k < n; k++) mid[k] += wt * s[k];
            }
            for (int j = 0; j < out_w * 3; j++) acc[j] = 0.0f;
            for (int k = 0; k < taps; k++) {
                const float *wrow = wk + (size_t)k * out_w;
                const int *orow = offset + (size_t)k * out_w;
                for (int j = 0; j < out_w; j++) {
                    const float *p = mid + orow[j];
                    const float wt = wrow[j];
                    acc[3 * j] += wt * p[0];
                    acc[3 * j + 1] += wt * p[1];
                    acc[3 * j + 2] += wt * p[2];
                }
            }
            uint8_t *d = dst + (size_t)i * out_w * 3;
            for (int j = 0; j < out_w * 3; j++) d[j] = ft_clip(acc[j]);
        }
    }
    free(mid);
    free(acc);
    free(wk);
    free(offset);
    ft_free_taps(&tx);
    ft_free_taps(&ty);
    return status;
}

/* Clip box (x, y, w, h) to a height x width image; FT_BAD_BOX when nothing is left. */
static int ft_clip_box(const int32_t *box, int height, int width, int *x0, int *y0, int *x1, int *y1) {
    int64_t bx = box[0], by = box[1];
    int64_t ex = bx + (int64_t)box[2], ey = by + (int64_t)box[3];
    if (bx < 0) bx = 0;
    if (by < 0) by = 0;
    if (ex > width) ex = width;
    if (ey > height) ey = height;
    if (ex <= bx || ey <= by) return FT_BAD_BOX;
    *x0 = (int)bx, *y0 = (int)by, *x1 = (int)ex, *y1 = (int)ey;
    return FT_OK;
}

/* The smallest DCT scale n/8, n in 1, 2, 4, that keeps the (bw x bh) box at least out_w x out_h; 8
 * if none does. Only these have SIMD IDCTs in libjpeg-turbo: 3/8, 5/8, 6/8, 7/8 use its C
 * routines and measured slower than a full-scale decode (scripts/jpeg_alternatives.py). */
int ft_scale_num(int bw, int bh, int out_w, int out_h) {
    for (int n = 1; n < 8; n *= 2)
        if ((int64_t)bw * n >= (int64_t)out_w * 8 && (int64_t)bh * n >= (int64_t)out_h * 8) return n;
    return 8;
}

static int ft_decode_jpeg(const uint8_t *data, uint64_t size, int x0, int y0, int x1, int y1,
                          uint8_t *dst, int out_h, int out_w, int min_scale_num) {
    struct jpeg_decompress_struct cinfo;
    ft_error err;
    /* volatile: read after longjmp */
    uint8_t *volatile buf = NULL;
    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = ft_error_exit;
    err.pub.emit_message = ft_emit_message;
    err.pub.output_message = ft_output_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(buf);
        return FT_BAD_STREAM;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return FT_BAD_COLOR;
    }
    int width = (int)cinfo.image_width, height = (int)cinfo.image_height;
    if (x1 > width || y1 > height) { /* the metadata's size is not this stream's */
        jpeg_destroy_decompress(&cinfo);
        return FT_BAD_BOX;
    }
    cinfo.out_color_space = JCS_RGB; /* grayscale streams are expanded to RGB by libjpeg-turbo */
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.scale_num = (unsigned)ft_scale_num(x1 - x0, y1 - y0, out_w, out_h);
    if ((int)cinfo.scale_num < min_scale_num) cinfo.scale_num = (unsigned)min_scale_num;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    int sw = (int)cinfo.output_width, sh = (int)cinfo.output_height;
    double fx = (double)sw / width, fy = (double)sh / height;
    double bx0 = x0 * fx, bx1 = x1 * fx, by0 = y0 * fy, by1 = y1 * fy;
    int sx_lo = (int)floor(bx0), sx_hi = (int)ceil(bx1), sy_lo = (int)floor(by0), sy_hi = (int)ceil(by1);
    if (sx_hi > sw) sx_hi = sw;
    if (sy_hi > sh) sy_hi = sh;
    if (sx_hi <= sx_lo) sx_hi = sx_lo + 1;
    if (sy_hi <= sy_lo) sy_hi = sy_lo + 1;
    JDIMENSION xoff = (JDIMENSION)sx_lo, cw = (JDIMENSION)(sx_hi - sx_lo);
    if (cw < (JDIMENSION)sw) jpeg_crop_scanline(&cinfo, &xoff, &cw); /* widens to iMCU columns */
    size_t pitch = (size_t)cw * 3;
    int nrows = sy_hi - sy_lo;
    buf = malloc(pitch * (size_t)nrows);
    if (!buf) {
        jpeg_destroy_decompress(&cinfo);
        return FT_NO_MEMORY;
    }
    if (sy_lo > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)sy_lo);
    while ((int)cinfo.output_scanline < sy_hi) {
        JSAMPROW row = buf + (size_t)(cinfo.output_scanline - sy_lo) * pitch;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_abort_decompress(&cinfo); /* rows below the box are never decoded */
    jpeg_destroy_decompress(&cinfo);
    int status = ft_resize(buf, pitch, sy_lo, (int)xoff, bx0, by0, bx1, by1, sx_lo, sx_hi, sy_lo, sy_hi, dst,
                           out_h, out_w);
    free(buf);
    return status;
}

/* One stored sample → the RGB uint8 out_h x out_w x 3 resize of its box, into dst.
 *
 * data, size: the sample's bytes: a JPEG stream (mode 0) or height*width*3 RGB bytes (mode 1),
 *   FFCV's RGBImageField modes.
 * height, width: the stored image's size (from the field's metadata).
 * box: int32 (x0, y0, w, h) in stored pixels; clipped to the image.
 * min_scale_num: the smallest DCT scale numerator (of 8) allowed: 1 lets the box decide,
 *   8 always decodes at full resolution (the reference behaviour, for measurements).
 * Returns 0, or a nonzero FT_* status (dst then holds no image).
 */
int ft_decode_crop(const uint8_t *data, uint64_t size, int mode, int height, int width, const int32_t *box,
                   uint8_t *dst, int out_h, int out_w, int min_scale_num) {
    int x0, y0, x1, y1;
    if (out_h < 1 || out_w < 1) return FT_BAD_BOX;
    int status = ft_clip_box(box, height, width, &x0, &y0, &x1, &y1);
    if (status != FT_OK) return status;
    if (mode == 0) return ft_decode_jpeg(data, size, x0, y0, x1, y1, dst, out_h, out_w,
                                         min_scale_num);
    if (mode != 1) return FT_BAD_MODE;
    if (size < (uint64_t)height * width * 3) return FT_BAD_STREAM;
    return ft_resize(data, (size_t)width * 3, 0, 0, x0, y0, x1, y1, x0, x1, y0, y1, dst, out_h, out_w);
}

/* statuses[index] = status: lets numba code record a failure in a caller's array by address. */
void ft_store_status(int32_t *statuses, int64_t index, int32_t status) { statuses[index] = status; }
