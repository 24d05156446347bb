/* imgpipe.processor._jpeg: JPEG -> JPEG with libjpeg(-turbo), without RGB pixels.
 *
 * transcode(data, quality, icc, orientation) is the pixel path for the 8-bit YCbCr JPEGs
 * requantize does not take (4:4:4, 4:2:2, 4:4:0, and turned ones that are not whole MCUs;
 * not turned 4:4:4, which Pillow's pixel path turns faster):
 * it decodes the source to its Y, Cb and Cr planes (raw data: no upsampling, no colour
 * conversion), turns them upright when the EXIF orientation says so (whole planes then),
 * halves the chroma planes where they are finer than 4:2:0 (box averages rounded as
 * libjpeg's downsamplers round), and encodes them at the quality as 4:2:0 with optimal
 * Huffman tables, an iMCU row at a time, with the ICC profile given. It does not take a
 * turn that would mirror subsampled chroma along an odd length (each chroma sample would
 * land half a sample off its luma). libjpeg's optimize_coding makes the tables, but its
 * statistics pass is replaced by requantize's symbol counting (the same tables, byte for
 * byte, in about a third of the instructions). It returns None for other sources and on any libjpeg
 * warning or error, as requantize does.
 *
 * requantize(data, quality, icc, orientation) reads a JPEG's quantised DCT coefficients
 * (no inverse DCT, no colour conversion, no pixels), rescales them from the source's quantisation
 * tables to the tables libjpeg's jpeg_set_quality(quality) gives, keeping a source table
 * entry wherever it is already coarser than the target's, and writes a baseline JPEG with
 * the given ICC profile (or none), nothing else. Its Huffman tables are optimal, made from
 * the symbols counted while rescaling, in the order the encoder will write them (the same
 * tables libjpeg's optimize_coding makes, without its separate statistics pass over every
 * block). Sources it takes: 8-bit YCbCr with 4:2:0 sampling (what the pixel path writes,
 * so the output is never of another form) and 8-bit greyscale (written as greyscale: one
 * component, smaller than the pixel path's three). It returns None for any other source,
 * for a source libjpeg finds corrupt (even one it would only warn about) and for one with a
 * coefficient too large for a baseline JPEG: the caller then takes the pixel path, whose
 * errors say what is wrong. An EXIF orientation other than 1 turns the coefficients upright
 * (lossless: blocks moved, transposed, signs flipped) when the image is whole MCUs (none
 * partial at the right or bottom edge, which would land on the top or left); otherwise
 * the source is not taken either. The GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jpegint.h (the encoder's entropy module, to replace its statistics pass) and jerror.h
 * come with jpeglib.h when JPEG_INTERNALS is defined. */
#define JPEG_INTERNALS
#include <jpeglib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Optimal Huffman table for symbol frequencies (freq[256] must be 0; it is set to 1 for
 * the reserved code): exported by libjpeg(-turbo) but declared in its internal jchuff.h. */
void jpeg_gen_optimal_table(j_compress_ptr cinfo, JHUFF_TBL *htbl, long freq[]);

/* Rounding to the nearest step with a tie going towards zero: a coefficient halved lands
 * on a tie, and rounding those up keeps as many non-zero coefficients as before. */
#define ROUNDING 0.499f

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
};

static void error_exit(j_common_ptr cinfo) {
    struct error_manager *err = (struct error_manager *)cinfo->err;
    longjmp(err->escape, 1);
}

/* A warning (corrupt data, a premature end) ends the work as an error would. */
static void emit_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level < 0) {
        error_exit(cinfo);
    }
}

static void output_message(j_common_ptr cinfo) { (void)cinfo; }

static void init_errors(struct error_manager *err) {
    jpeg_std_error(&err->pub);
    err->pub.error_exit = error_exit;
    err->pub.emit_message = emit_message;
    err->pub.output_message = output_message;
}

static int takes(const struct jpeg_decompress_struct *src) {
    if (src->data_precision != 8) {
        return 0;
    }
    if (src->jpeg_color_space == JCS_GRAYSCALE) {
        return src->num_components == 1;
    }
    if (src->jpeg_color_space != JCS_YCbCr || src->num_components != 3) {
        return 0;
    }
    const jpeg_component_info *c = src->comp_info;
    return c[0].h_samp_factor == 2 && c[0].v_samp_factor == 2 && c[1].h_samp_factor == 1 &&
           c[1].v_samp_factor == 1 && c[2].h_samp_factor == 1 && c[2].v_samp_factor == 1;
}

/* Zigzag position of each coefficient, by its natural (row-major) index. */
static const unsigned char zigzag[DCTSIZE2] = {
    0,  1,  5,  6,  14, 15, 27, 28, 2,  4,  7,  13, 16, 26, 29, 42,
    3,  8,  12, 17, 25, 30, 41, 43, 9,  11, 18, 24, 31, 40, 44, 53,
    10, 19, 23, 32, 39, 45, 52, 54, 20, 22, 33, 38, 46, 51, 55, 60,
    21, 34, 37, 47, 50, 56, 59, 61, 35, 36, 48, 49, 57, 58, 62, 63,
};

/* The largest magnitude category a baseline 8-bit JPEG codes: a DC difference, an AC. */
#define MAX_DC_BITS 11
#define MAX_AC_BITS 10
#define EOB 0x00
#define ZRL 0xF0

/* Huffman symbol frequencies of one component's blocks in scan order, for
 * jpeg_gen_optimal_table (one more entry than symbols: it reserves the last). */
struct symbols {
    long *dc;
    long *ac;
    int last_dc;
};

/* The magnitude category of a value: how many bits its magnitude takes (0 for 0). */
static int bits(int value) { return 31 - __builtin_clz(2 * (unsigned)abs(value) + 1); }

/* Counts the symbols the encoder will write for one block, given which of its AC
 * coefficients are not zero (bit k for natural index k); 0 if a coefficient is out of the
 * range baseline coding takes (the encoder would write garbage, not fail). */
static int count(struct symbols *sym, const JCOEF *coef, uint64_t natural) {
    int dc_bits = bits(coef[0] - sym->last_dc);
    if (dc_bits > MAX_DC_BITS) {
        return 0;
    }
    sym->dc[dc_bits]++;
    sym->last_dc = coef[0];
    uint64_t order = 0;
    JCOEF zigzagged[DCTSIZE2];
    for (; natural; natural &= natural - 1) {
        int n = __builtin_ctzll(natural);
        order |= (uint64_t)1 << zigzag[n];
        zigzagged[zigzag[n]] = coef[n];
    }
    int last = 0;
    for (; order; order &= order - 1) {
        int k = __builtin_ctzll(order);
        int run = k - last - 1;
        int ac_bits = bits(zigzagged[k]);
        if (ac_bits > MAX_AC_BITS) {
            return 0;
        }
        for (; run > 15; run -= 16) {
            sym->ac[ZRL]++;
        }
        sym->ac[(run << 4) | ac_bits]++;
        last = k;
    }
    if (last != DCTSIZE2 - 1) {
        sym->ac[EOB]++;
    }
    return 1;
}

/* A block the encoder adds to fill an MCU at the right or bottom edge: the DC of the one
 * before it, no AC. */
static void count_dummy(struct symbols *sym) {
    sym->dc[0]++;
    sym->ac[EOB]++;
}

/* Rescales a block by ratio (unless NULL), rounding to the nearest with ties towards zero,
 * and returns which of its coefficients are not zero: bit k for natural index k. */
#ifdef __SSE2__
static uint64_t rescale(JCOEF *coef, const float *ratio) {
    const __m128 rounding = _mm_set1_ps(ROUNDING), sign = _mm_set1_ps(-0.0f);
    const __m128i zero = _mm_setzero_si128();
    uint64_t zeros = 0;
    for (int k = 0; k < DCTSIZE2; k += 16) {
        __m128i half[2];
        for (int h = 0; h < 2; h++) {
            __m128i v = _mm_loadu_si128((const __m128i *)&coef[k + 8 * h]);
            if (ratio != NULL) {
                __m128 low = _mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(v, v), 16));
                __m128 high = _mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpackhi_epi16(v, v), 16));
                low = _mm_mul_ps(low, _mm_loadu_ps(&ratio[k + 8 * h]));
                high = _mm_mul_ps(high, _mm_loadu_ps(&ratio[k + 8 * h + 4]));
                low = _mm_add_ps(low, _mm_or_ps(rounding, _mm_and_ps(low, sign)));
                high = _mm_add_ps(high, _mm_or_ps(rounding, _mm_and_ps(high, sign)));
                v = _mm_packs_epi32(_mm_cvttps_epi32(low), _mm_cvttps_epi32(high));
                _mm_storeu_si128((__m128i *)&coef[k + 8 * h], v);
            }
            half[h] = _mm_cmpeq_epi16(v, zero);
        }
        zeros |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_packs_epi16(half[0], half[1])) << k;
    }
    return ~zeros;
}
#else
static uint64_t rescale(JCOEF *coef, const float *ratio) {
    uint64_t nonzero = 0;
    for (int k = 0; k < DCTSIZE2; k++) {
        if (ratio != NULL) {
            float scaled = (float)coef[k] * ratio[k];
            coef[k] = (JCOEF)(int)(scaled + (scaled < 0 ? -ROUNDING : ROUNDING));
        }
        nonzero |= (uint64_t)(coef[k] != 0) << k;
    }
    return nonzero;
}
#endif

/* Rescales a component from table `from` to table `to` and counts its symbols, block by
 * block in the order the encoder takes them for an image of width x height (MCU by MCU,
 * each MCU's blocks row by row, with its dummy blocks); 0 if a coefficient is out of
 * range. */
static int convert(j_decompress_ptr src, jvirt_barray_ptr array, const jpeg_component_info *comp,
                   JDIMENSION width, JDIMENSION height, const UINT16 *from, const UINT16 *to,
                   struct symbols *sym) {
    float ratio[DCTSIZE2];
    int changed = 0;
    for (int k = 0; k < DCTSIZE2; k++) {
        ratio[k] = (float)from[k] / (float)to[k];
        changed |= from[k] != to[k];
    }
    /* One component is coded alone, a block per MCU; several are interleaved. */
    int alone = src->num_components == 1;
    JDIMENSION mcu_width = alone ? 1 : (JDIMENSION)comp->h_samp_factor;
    JDIMENSION mcu_height = alone ? 1 : (JDIMENSION)comp->v_samp_factor;
    JDIMENSION mcu_pixels = DCTSIZE * (JDIMENSION)src->max_h_samp_factor;
    JDIMENSION mcus = alone ? comp->width_in_blocks : (width + mcu_pixels - 1) / mcu_pixels;
    JDIMENSION mcu_rows_pixels = DCTSIZE * (JDIMENSION)src->max_v_samp_factor;
    JDIMENSION mcu_rows = alone ? comp->height_in_blocks
                                : (height + mcu_rows_pixels - 1) / mcu_rows_pixels;
    for (JDIMENSION mcu_row = 0; mcu_row < mcu_rows; mcu_row++) {
        JDIMENSION row = mcu_row * mcu_height;
        JDIMENSION rows = comp->height_in_blocks - row < mcu_height ? comp->height_in_blocks - row
                                                                    : mcu_height;
        JBLOCKARRAY blocks = (*src->mem->access_virt_barray)((j_common_ptr)src, array, row,
                                                             rows, TRUE);
        for (JDIMENSION mcu = 0; mcu < mcus; mcu++) {
            for (JDIMENSION r = 0; r < mcu_height; r++) {
                for (JDIMENSION c = 0; c < mcu_width; c++) {
                    JDIMENSION column = mcu * mcu_width + c;
                    if (r >= rows || column >= comp->width_in_blocks) {
                        count_dummy(sym);
                        continue;
                    }
                    JCOEF *coef = blocks[r][column];
                    uint64_t nonzero = rescale(coef, changed ? ratio : NULL);
                    if (!count(sym, coef, nonzero & ~(uint64_t)1)) {
                        return 0;
                    }
                }
            }
        }
    }
    return 1;
}

/* An EXIF orientation (2-8) as the transform that makes the image upright: the output's
 * x and y are the source's, swapped if transposed, then each mirrored if flipped. */
struct turn {
    int transpose, flip_x, flip_y;
};

static const struct turn turns[9] = {
    [1] = {0, 0, 0}, [2] = {0, 1, 0}, [3] = {0, 1, 1}, [4] = {0, 0, 1},
    [5] = {1, 0, 0}, [6] = {1, 0, 1}, [7] = {1, 1, 1}, [8] = {1, 1, 0},
};

/* A component turned upright, block by block, in a new array. In the DCT domain mirroring
 * a block negates its coefficients of odd frequency along that axis, and transposing it
 * transposes them. Whole MCUs only: the source's blocks fill its MCUs exactly. comp is a
 * copy of the source component's, given the turned size. */
static jvirt_barray_ptr turned(j_decompress_ptr src, jvirt_barray_ptr array,
                               jpeg_component_info *comp, struct turn turn) {
    JDIMENSION width = comp->width_in_blocks, height = comp->height_in_blocks;
    if (turn.transpose) {
        comp->width_in_blocks = height;
        comp->height_in_blocks = width;
    }
    jvirt_barray_ptr out = (*src->mem->request_virt_barray)(
        (j_common_ptr)src, JPOOL_IMAGE, FALSE, comp->width_in_blocks, comp->height_in_blocks,
        (JDIMENSION)comp->v_samp_factor);
    (*src->mem->realize_virt_arrays)((j_common_ptr)src);
    for (JDIMENSION y = 0; y < comp->height_in_blocks; y++) {
        JBLOCKROW row = (*src->mem->access_virt_barray)((j_common_ptr)src, out, y, 1, TRUE)[0];
        for (JDIMENSION x = 0; x < comp->width_in_blocks; x++) {
            JDIMENSION a = turn.transpose ? y : x, b = turn.transpose ? x : y;
            JDIMENSION from_x = turn.flip_x ? width - 1 - a : a;
            JDIMENSION from_y = turn.flip_y ? height - 1 - b : b;
            const JCOEF *in = (*src->mem->access_virt_barray)((j_common_ptr)src, array, from_y,
                                                              1, FALSE)[0][from_x];
            for (int v = 0; v < DCTSIZE; v++) {
                for (int u = 0; u < DCTSIZE; u++) {
                    int from_u = turn.transpose ? v : u, from_v = turn.transpose ? u : v;
                    JCOEF c = in[from_v * DCTSIZE + from_u];
                    int negate = (turn.flip_x & from_u) ^ (turn.flip_y & from_v);
                    row[x][v * DCTSIZE + u] = (JCOEF)(negate ? -c : c);
                }
            }
        }
    }
    return out;
}

/* 1 if the image is whole MCUs: turned, no partial MCU lands on the top or left edge. */
static int whole_mcus(const struct jpeg_decompress_struct *src) {
    return src->image_width % (DCTSIZE * (JDIMENSION)src->max_h_samp_factor) == 0 &&
           src->image_height % (DCTSIZE * (JDIMENSION)src->max_v_samp_factor) == 0;
}

/* A quantisation table as the turn leaves it (mirroring changes only signs). */
static void turn_table(UINT16 table[DCTSIZE2], struct turn turn) {
    if (turn.transpose) {
        UINT16 copy[DCTSIZE2];
        memcpy(copy, table, sizeof copy);
        for (int k = 0; k < DCTSIZE2; k++) {
            table[k] = copy[k % DCTSIZE * DCTSIZE + k / DCTSIZE];
        }
    }
}

struct job {
    const unsigned char *data;
    unsigned long size;
    int quality;
    int orientation;
    const unsigned char *icc;
    unsigned int icc_size;
    unsigned char *out;
    unsigned long out_size;
};

/* A source and a destination, created; the destination only once *created is set; and
 * buffers of the work's own (malloc), freed with them unless the work freed them first. */
struct codecs {
    struct jpeg_decompress_struct src;
    struct jpeg_compress_struct dst;
    volatile int dst_created;
    void *volatile owned[3];
};

/* Work on a source whose header is read: 1 once job->out holds the JPEG (the work need not
 * destroy what it made), 0 if the source is not taken; a libjpeg error or warning ends
 * it as 0 too (longjmp). */
typedef int (*codec_work)(struct job *job, struct codecs *c);

/* Ends the work as a libjpeg error would. */
static void fail(j_decompress_ptr src) { (*src->err->error_exit)((j_common_ptr)src); }

/* Runs work with libjpeg's errors caught, and destroys what it made. */
static int with_codecs(struct job *job, codec_work work) {
    struct codecs c;
    struct error_manager src_err, dst_err;
    c.dst_created = 0;
    memset((void *)c.owned, 0, sizeof c.owned);
    init_errors(&src_err);
    init_errors(&dst_err);
    c.src.err = &src_err.pub;
    c.dst.err = &dst_err.pub;
    jpeg_create_decompress(&c.src);
    volatile int done = 0;
    if (setjmp(src_err.escape) || setjmp(dst_err.escape)) {
        free(job->out);
        job->out = NULL;
    } else {
        jpeg_mem_src(&c.src, job->data, job->size);
        jpeg_read_header(&c.src, TRUE);
        done = work(job, &c);
    }
    if (c.dst_created) {
        jpeg_destroy_compress(&c.dst);
    }
    jpeg_destroy_decompress(&c.src);
    for (int k = 0; k < 3; k++) {
        free(c.owned[k]);
    }
    return done;
}

static int requantize_work(struct job *job, struct codecs *c) {
    j_decompress_ptr src = &c->src;
    j_compress_ptr dst = &c->dst;
    struct turn turn = turns[job->orientation];
    if (!takes(src) || (job->orientation != 1 && !whole_mcus(src))) {
        return 0;
    }
    jvirt_barray_ptr *coefficients = jpeg_read_coefficients(src);
    jvirt_barray_ptr upright[MAX_COMPONENTS];
    UINT16 from[MAX_COMPONENTS][DCTSIZE2], target[2][DCTSIZE2];
    for (int ci = 0; ci < src->num_components; ci++) {
        const JQUANT_TBL *table = src->comp_info[ci].quant_table;
        if (table == NULL) {
            fail(src);
        }
        for (int k = 0; k < DCTSIZE2; k++) {
            from[ci][k] = table->quantval[k];
        }
        turn_table(from[ci], turn);
    }
    long dc[NUM_HUFF_TBLS][257] = {{0}}, ac[NUM_HUFF_TBLS][257] = {{0}};
    int dc_used = 0, ac_used = 0;
    jpeg_create_compress(dst);
    c->dst_created = 1;
    jpeg_copy_critical_parameters(src, dst);
    if (turn.transpose) {
        dst->image_width = src->image_height;
        dst->image_height = src->image_width;
        dst->X_density = src->Y_density;
        dst->Y_density = src->X_density;
    }
    jpeg_set_quality(dst, job->quality, TRUE);
    for (int t = 0; t < 2; t++) {
        for (int k = 0; k < DCTSIZE2; k++) {
            target[t][k] = dst->quant_tbl_ptrs[t]->quantval[k];
        }
    }
    for (int ci = 0; ci < dst->num_components; ci++) {
        /* A table per component, but one for both chroma components when theirs are
         * the same (as they nearly always are). */
        int slot = ci == 2 && memcmp(from[1], from[2], sizeof from[1]) == 0 ? 1 : ci;
        const UINT16 *wanted = target[ci == 0 ? 0 : 1];
        if (dst->quant_tbl_ptrs[slot] == NULL) {
            dst->quant_tbl_ptrs[slot] = jpeg_alloc_quant_table((j_common_ptr)dst);
        }
        JQUANT_TBL *table = dst->quant_tbl_ptrs[slot];
        for (int k = 0; k < DCTSIZE2; k++) {
            table->quantval[k] = from[ci][k] > wanted[k] ? from[ci][k] : wanted[k];
        }
        table->sent_table = FALSE;
        dst->comp_info[ci].quant_tbl_no = slot;
        const jpeg_component_info *comp = &dst->comp_info[ci];
        struct symbols sym = {dc[comp->dc_tbl_no], ac[comp->ac_tbl_no], 0};
        dc_used |= 1 << comp->dc_tbl_no;
        ac_used |= 1 << comp->ac_tbl_no;
        jpeg_component_info shape = src->comp_info[ci];
        upright[ci] = job->orientation == 1 ? coefficients[ci]
                                            : turned(src, coefficients[ci], &shape, turn);
        if (!convert(src, upright[ci], &shape, dst->image_width, dst->image_height, from[ci],
                     table->quantval, &sym)) {
            fail(src);
        }
    }
    /* The encoder's tables, made from the counts: no statistics pass of its own. */
    for (int t = 0; t < NUM_HUFF_TBLS; t++) {
        if (dc_used >> t & 1) {
            jpeg_gen_optimal_table(dst, dst->dc_huff_tbl_ptrs[t], dc[t]);
        }
        if (ac_used >> t & 1) {
            jpeg_gen_optimal_table(dst, dst->ac_huff_tbl_ptrs[t], ac[t]);
        }
    }
    dst->optimize_coding = FALSE;
    jpeg_mem_dest(dst, &job->out, &job->out_size);
    jpeg_write_coefficients(dst, upright);
    if (job->icc != NULL) {
        jpeg_write_icc_profile(dst, job->icc, job->icc_size);
    }
    jpeg_finish_compress(dst);
    jpeg_finish_decompress(src);
    return 1;
}

/* 1: job->out holds the JPEG; 0: the source is not taken (or corrupt). */
static int run(struct job *job) { return with_codecs(job, requantize_work); }

/* -- transcode: the pixel path for the YCbCr JPEGs requantize does not take ----------- */

/* Rows of luma in one group: an iMCU row of the 4:2:0 output. */
#define GROUP_ROWS (2 * DCTSIZE)

/* 1 if the source is 8-bit YCbCr with full-size luma, both chroma components alike and
 * each at full or half the luma's size in each direction (4:4:4, 4:2:2, 4:4:0, 4:2:0). */
static int transcode_takes(const struct jpeg_decompress_struct *src) {
    if (src->data_precision != 8 || src->jpeg_color_space != JCS_YCbCr ||
        src->num_components != 3) {
        return 0;
    }
    const jpeg_component_info *c = src->comp_info;
    int h = src->max_h_samp_factor, v = src->max_v_samp_factor;
    return h <= 2 && v <= 2 && c[0].h_samp_factor == h && c[0].v_samp_factor == v &&
           c[1].h_samp_factor == c[2].h_samp_factor && c[1].v_samp_factor == c[2].v_samp_factor &&
           (h == c[1].h_samp_factor || h == 2 * c[1].h_samp_factor) &&
           (v == c[1].v_samp_factor || v == 2 * c[1].v_samp_factor);
}

/* Fills a plane's rows from width on with the last sample, and its rows from valid on
 * with the last valid row, as libjpeg's own encoder pads an image to whole blocks. */
static void pad_plane(JSAMPARRAY rows, int count, JDIMENSION width, JDIMENSION stride,
                      int valid) {
    for (int r = 0; r < valid; r++) {
        memset(rows[r] + width, rows[r][width - 1], stride - width);
    }
    for (int r = valid; r < count; r++) {
        memcpy(rows[r], rows[valid - 1], stride);
    }
}

#ifdef __SSE2__
/* The start of a row downsample takes with SSE2: 16 outputs at a time, the same sums and
 * biases as its loop (outputs at even x have the first bias, at odd x the second). */
static JDIMENSION downsample_row_sse2(const JSAMPLE *a, const JSAMPLE *b, JSAMPLE *o,
                                      JDIMENSION out_width, int step_h, int step_v) {
    const __m128i zero = _mm_setzero_si128(), low_bytes = _mm_set1_epi16(0x00FF);
    const int shift = step_h + step_v - 2;
    const __m128i bias = shift == 2 ? _mm_set1_epi32(0x00020001) : _mm_set1_epi32(0x00010000);
    JDIMENSION x = 0;
    for (; x + 16 <= out_width; x += 16) {
        __m128i sum[2];
        if (step_h == 2) {
            for (int h = 0; h < 2; h++) {
                __m128i va = _mm_loadu_si128((const __m128i *)(a + 2 * x + 16 * h));
                sum[h] = _mm_add_epi16(_mm_and_si128(va, low_bytes), _mm_srli_epi16(va, 8));
                if (step_v == 2) {
                    __m128i vb = _mm_loadu_si128((const __m128i *)(b + 2 * x + 16 * h));
                    sum[h] = _mm_add_epi16(sum[h], _mm_add_epi16(_mm_and_si128(vb, low_bytes),
                                                                 _mm_srli_epi16(vb, 8)));
                }
            }
        } else {
            __m128i va = _mm_loadu_si128((const __m128i *)(a + x));
            __m128i vb = _mm_loadu_si128((const __m128i *)(b + x));
            sum[0] = _mm_add_epi16(_mm_unpacklo_epi8(va, zero), _mm_unpacklo_epi8(vb, zero));
            sum[1] = _mm_add_epi16(_mm_unpackhi_epi8(va, zero), _mm_unpackhi_epi8(vb, zero));
        }
        for (int h = 0; h < 2; h++) {
            sum[h] = _mm_srli_epi16(_mm_add_epi16(sum[h], bias), shift);
        }
        _mm_storeu_si128((__m128i *)(o + x), _mm_packus_epi16(sum[0], sum[1]));
    }
    return x;
}
#else
static JDIMENSION downsample_row_sse2(const JSAMPLE *a, const JSAMPLE *b, JSAMPLE *o,
                                      JDIMENSION out_width, int step_h, int step_v) {
    (void)a, (void)b, (void)o, (void)out_width, (void)step_h, (void)step_v;
    return 0;
}
#endif

/* Halves a chroma plane's resolution where it is finer than 4:2:0: a box average of 2x2,
 * 2x1 or 1x2 samples, with the alternating rounding bias of libjpeg's downsamplers, or a
 * copy where it is 4:2:0 already. */
static void downsample(JSAMPARRAY in, JSAMPARRAY out, JDIMENSION out_width, int step_h,
                       int step_v) {
    for (int r = 0; r < DCTSIZE; r++) {
        const JSAMPLE *a = in[r * step_v], *b = in[r * step_v + step_v - 1];
        JSAMPLE *o = out[r];
        if (step_h == 1 && step_v == 1) {
            memcpy(o, a, out_width);
            continue;
        }
        JDIMENSION x = downsample_row_sse2(a, b, o, out_width, step_h, step_v);
        for (; x < out_width; x++) {
            int odd = (int)(x & 1);
            if (step_h == 2 && step_v == 2) {
                o[x] = (JSAMPLE)((a[2 * x] + a[2 * x + 1] + b[2 * x] + b[2 * x + 1] + 1 + odd) >> 2);
            } else if (step_h == 2) {
                o[x] = (JSAMPLE)((a[2 * x] + a[2 * x + 1] + odd) >> 1);
            } else {
                o[x] = (JSAMPLE)((a[x] + b[x] + odd) >> 1);
            }
        }
    }
}

/* The statistics pass of libjpeg's optimize_coding, replaced: its own looks at each of a
 * block's 64 coefficients in plain C, a fifth of a whole transcode's instructions; this
 * finds the non-zero ones with SSE2 and counts only those, as requantize does. Installed
 * on an encoder that has started its first pass (optimize_coding, one sequential scan):
 * libjpeg's own encoder writes the output pass with the tables this makes. */
struct gather {
    long dc[NUM_HUFF_TBLS][257];
    long ac[NUM_HUFF_TBLS][257];
    struct symbols sym[MAX_COMPS_IN_SCAN];
};

static boolean gather_mcu(j_compress_ptr cinfo, JBLOCKROW *MCU_data) {
    struct gather *g = cinfo->client_data;
    for (int b = 0; b < cinfo->blocks_in_MCU; b++) {
        JCOEF *coef = MCU_data[b][0];
        if (!count(&g->sym[cinfo->MCU_membership[b]], coef, rescale(coef, NULL) & ~(uint64_t)1)) {
            ERREXIT(cinfo, JERR_BAD_DCT_COEF);
        }
    }
    return TRUE;
}

static void gather_finish(j_compress_ptr cinfo) {
    struct gather *g = cinfo->client_data;
    int dc_done = 0, ac_done = 0;
    for (int ci = 0; ci < cinfo->comps_in_scan; ci++) {
        int dc = cinfo->cur_comp_info[ci]->dc_tbl_no, ac = cinfo->cur_comp_info[ci]->ac_tbl_no;
        if (!(dc_done >> dc & 1)) {
            if (cinfo->dc_huff_tbl_ptrs[dc] == NULL) {
                cinfo->dc_huff_tbl_ptrs[dc] = jpeg_alloc_huff_table((j_common_ptr)cinfo);
            }
            jpeg_gen_optimal_table(cinfo, cinfo->dc_huff_tbl_ptrs[dc], g->dc[dc]);
            dc_done |= 1 << dc;
        }
        if (!(ac_done >> ac & 1)) {
            if (cinfo->ac_huff_tbl_ptrs[ac] == NULL) {
                cinfo->ac_huff_tbl_ptrs[ac] = jpeg_alloc_huff_table((j_common_ptr)cinfo);
            }
            jpeg_gen_optimal_table(cinfo, cinfo->ac_huff_tbl_ptrs[ac], g->ac[ac]);
            ac_done |= 1 << ac;
        }
    }
}

static void install_gather(j_compress_ptr cinfo) {
    struct gather *g =
        (*cinfo->mem->alloc_small)((j_common_ptr)cinfo, JPOOL_IMAGE, sizeof(struct gather));
    memset(g, 0, sizeof *g);
    for (int ci = 0; ci < cinfo->comps_in_scan; ci++) {
        g->sym[ci].dc = g->dc[cinfo->cur_comp_info[ci]->dc_tbl_no];
        g->sym[ci].ac = g->ac[cinfo->cur_comp_info[ci]->ac_tbl_no];
    }
    cinfo->client_data = g;
    cinfo->entropy->encode_mcu = gather_mcu;
    cinfo->entropy->finish_pass = gather_finish;
}

/* Reading a source's planes as 4:2:0: an iMCU row of the output (GROUP_ROWS of luma, a
 * block row of chroma) at a time, padded to whole blocks. */
struct reader {
    j_decompress_ptr src;
    JDIMENSION width, height, chroma_width, luma_stride, chroma_stride;
    int step_h, step_v;
    JSAMPARRAY luma, in_chroma[2], out_chroma[2];
};

static void start_reading(struct reader *r, j_decompress_ptr src) {
    src->raw_data_out = TRUE;
    jpeg_start_decompress(src);
    r->src = src;
    r->width = src->output_width;
    r->height = src->output_height;
    r->step_h = src->max_h_samp_factor / src->comp_info[1].h_samp_factor;
    r->step_v = src->max_v_samp_factor / src->comp_info[1].v_samp_factor;
    /* Strides: whole blocks of the source, and of the output's 16x16 MCUs. */
    r->chroma_width = (r->width + 1) / 2;
    r->luma_stride = ((r->width + 15) / 16) * 16;
    r->chroma_stride = ((r->chroma_width + 7) / 8) * 8;
    JDIMENSION in_stride = src->comp_info[1].width_in_blocks * DCTSIZE + DCTSIZE;
    JDIMENSION source_luma = src->comp_info[0].width_in_blocks * DCTSIZE;
    j_common_ptr pool = (j_common_ptr)src;
    r->luma = (*src->mem->alloc_sarray)(
        pool, JPOOL_IMAGE, source_luma > r->luma_stride ? source_luma : r->luma_stride,
        GROUP_ROWS);
    for (int k = 0; k < 2; k++) {
        r->in_chroma[k] =
            (*src->mem->alloc_sarray)(pool, JPOOL_IMAGE, in_stride, GROUP_ROWS / r->step_v);
        r->out_chroma[k] =
            (*src->mem->alloc_sarray)(pool, JPOOL_IMAGE, r->chroma_stride, DCTSIZE);
    }
}

/* Reads the group of rows from top on into r->luma and r->out_chroma; how many of its
 * luma rows are the image's (the rest repeat the last). */
static int read_group(struct reader *r, JDIMENSION top) {
    j_decompress_ptr src = r->src;
    int valid = r->height - top < GROUP_ROWS ? (int)(r->height - top) : GROUP_ROWS;
    const int read_rows = DCTSIZE * src->max_v_samp_factor;
    for (int row = 0; row < GROUP_ROWS && src->output_scanline < r->height; row += read_rows) {
        JSAMPARRAY planes[3] = {r->luma + row, r->in_chroma[0] + row / r->step_v,
                                r->in_chroma[1] + row / r->step_v};
        jpeg_read_raw_data(src, planes, (JDIMENSION)read_rows);
    }
    pad_plane(r->luma, GROUP_ROWS, r->width, r->luma_stride, valid);
    JDIMENSION in_width = (r->width + r->step_h - 1) / r->step_h;
    for (int k = 0; k < 2; k++) {
        pad_plane(r->in_chroma[k], GROUP_ROWS / r->step_v, in_width,
                  in_width + (JDIMENSION)r->step_h, (valid + r->step_v - 1) / r->step_v);
        downsample(r->in_chroma[k], r->out_chroma[k], r->chroma_width, 2 / r->step_h,
                   2 / r->step_v);
        pad_plane(r->out_chroma[k], DCTSIZE, r->chroma_width, r->chroma_stride, DCTSIZE);
    }
    return valid;
}

/* A 4:2:0 YCbCr encoder of width x height with optimal Huffman tables, started. */
static void start_writing(struct job *job, struct codecs *c, JDIMENSION width,
                          JDIMENSION height, int transposed) {
    j_decompress_ptr src = &c->src;
    j_compress_ptr dst = &c->dst;
    jpeg_create_compress(dst);
    c->dst_created = 1;
    dst->image_width = width;
    dst->image_height = height;
    dst->input_components = 3;
    dst->in_color_space = JCS_YCbCr;
    jpeg_set_defaults(dst);
    jpeg_set_quality(dst, job->quality, TRUE);
    dst->raw_data_in = TRUE;
    dst->optimize_coding = TRUE;
    dst->density_unit = src->density_unit;
    dst->X_density = transposed ? src->Y_density : src->X_density;
    dst->Y_density = transposed ? src->X_density : src->Y_density;
    jpeg_mem_dest(dst, &job->out, &job->out_size);
    jpeg_start_compress(dst, TRUE);
    install_gather(dst);
    if (job->icc != NULL) {
        jpeg_write_icc_profile(dst, job->icc, job->icc_size);
    }
}

/* A whole plane of width x height samples, rows stride apart. */
struct plane {
    JSAMPLE *data;
    JDIMENSION width, height, stride;
};

/* A plane from the libjpeg pool, freed with the codecs. */
static struct plane pool_plane(j_common_ptr pool, JDIMENSION width, JDIMENSION height,
                               JDIMENSION stride) {
    struct plane p = {NULL, width, height, stride};
    p.data = (*pool->mem->alloc_large)(pool, JPOOL_PERMANENT, (size_t)stride * height);
    return p;
}

/* A plane of the work's own, freed as soon as it is not needed (owned[k] = NULL then). */
static struct plane owned_plane(struct codecs *c, int k, JDIMENSION width, JDIMENSION height) {
    struct plane p = {NULL, width, height, width};
    p.data = malloc((size_t)width * height);
    if (p.data == NULL) {
        ERREXIT1(&c->src, JERR_OUT_OF_MEMORY, 0);
    }
    c->owned[k] = p.data;
    return p;
}

/* count row pointers into a plane from row top on; rows past the last repeat it. */
static void plane_rows(const struct plane *p, JDIMENSION top, int count, JSAMPROW *rows) {
    for (int r = 0; r < count; r++) {
        JDIMENSION y = top + (JDIMENSION)r < p->height ? top + (JDIMENSION)r : p->height - 1;
        rows[r] = p->data + (size_t)y * p->stride;
    }
}

/* Tiles of TURN_TILE x TURN_TILE samples keep a transposition's reads and writes within a
 * few cache lines. */
#define TURN_TILE 32

/* from turned upright into to: to's sample at (x', y') is from's at (x, y), where (x', y')
 * is (x, y) mirrored along each source axis the turn flips, then swapped if it
 * transposes (as requantize turns blocks). Pads each of to's rows right to its stride with
 * the row's last sample. */
static void turn_plane(const struct plane *from, struct plane *to, struct turn turn) {
    /* Where a source row's first sample lands, and the step between its samples'. */
    const ptrdiff_t along = turn.transpose ? (ptrdiff_t)to->stride : 1;
    const ptrdiff_t across = turn.transpose ? 1 : (ptrdiff_t)to->stride;
    const ptrdiff_t step = turn.flip_x ? -along : along;
    for (JDIMENSION ty = 0; ty < from->height; ty += TURN_TILE) {
        JDIMENSION y_end = ty + TURN_TILE < from->height ? ty + TURN_TILE : from->height;
        for (JDIMENSION tx = 0; tx < from->width; tx += TURN_TILE) {
            JDIMENSION x_end = tx + TURN_TILE < from->width ? tx + TURN_TILE : from->width;
            for (JDIMENSION y = ty; y < y_end; y++) {
                const JSAMPLE *row = from->data + (size_t)y * from->stride;
                ptrdiff_t a = turn.flip_x ? (ptrdiff_t)(from->width - 1 - tx) : (ptrdiff_t)tx;
                ptrdiff_t b = turn.flip_y ? (ptrdiff_t)(from->height - 1 - y) : (ptrdiff_t)y;
                JSAMPLE *out = to->data + a * along + b * across;
                for (JDIMENSION x = tx; x < x_end; x++, out += step) {
                    *out = row[x];
                }
            }
        }
    }
    for (JDIMENSION y = 0; y < to->height; y++) {
        JSAMPLE *row = to->data + (size_t)y * to->stride;
        memset(row + to->width, row[to->width - 1], to->stride - to->width);
    }
}

/* Whether a turned source's chroma stays aligned with its luma: along an axis where chroma
 * is subsampled and the image is an odd number of pixels long, mirroring would put each
 * chroma sample half a sample off the luma it covers. */
static int turn_keeps_chroma(const struct jpeg_decompress_struct *src, struct turn turn) {
    const jpeg_component_info *chroma = &src->comp_info[1];
    int halved_x = chroma->h_samp_factor < src->max_h_samp_factor;
    int halved_y = chroma->v_samp_factor < src->max_v_samp_factor;
    return !(turn.flip_x && halved_x && src->image_width % 2) &&
           !(turn.flip_y && halved_y && src->image_height % 2);
}

/* Upright: each group of rows is encoded as it is read. */
static void transcode_upright(struct job *job, struct codecs *c, struct reader *r) {
    start_writing(job, c, r->width, r->height, 0);
    for (JDIMENSION top = 0; top < r->height; top += GROUP_ROWS) {
        read_group(r, top);
        JSAMPARRAY planes[3] = {r->luma, r->out_chroma[0], r->out_chroma[1]};
        jpeg_write_raw_data(&c->dst, planes, GROUP_ROWS);
    }
}

/* Turned: the whole planes are read at the source's own sampling (the decoder's buffers
 * are freed then), turned upright into a second set (the first freed then), and encoded
 * from those, the chroma halved to 4:2:0 an MCU row at a time. At most 6 bytes a pixel
 * (4:4:4) beside the encoder's coefficients. */
static void transcode_turned(struct job *job, struct codecs *c, struct turn turn) {
    j_decompress_ptr src = &c->src;
    src->raw_data_out = TRUE;
    jpeg_start_decompress(src);
    const JDIMENSION width = src->output_width, height = src->output_height;
    const int step_h = src->max_h_samp_factor / src->comp_info[1].h_samp_factor;
    const int step_v = src->max_v_samp_factor / src->comp_info[1].v_samp_factor;
    const JDIMENSION chroma_w = (width + step_h - 1) / step_h;
    const JDIMENSION chroma_h = (height + step_v - 1) / step_v;
    /* The decoder's rows: whole blocks, an iMCU row at a time. */
    const int rows_per_read = DCTSIZE * src->max_v_samp_factor;
    j_common_ptr pool = (j_common_ptr)src;
    JSAMPARRAY buffer[3];
    for (int k = 0; k < 3; k++) {
        JDIMENSION w = src->comp_info[k].width_in_blocks * DCTSIZE;
        buffer[k] = (*src->mem->alloc_sarray)(pool, JPOOL_IMAGE, w,
                                              (JDIMENSION)(k ? rows_per_read / step_v
                                                             : rows_per_read));
    }
    struct plane read[3] = {owned_plane(c, 0, width, height),
                            owned_plane(c, 1, chroma_w, chroma_h),
                            owned_plane(c, 2, chroma_w, chroma_h)};
    while (src->output_scanline < height) {
        JDIMENSION top = src->output_scanline;
        jpeg_read_raw_data(src, buffer, (JDIMENSION)rows_per_read);
        for (int k = 0; k < 3; k++) {
            JDIMENSION first = k ? top / (JDIMENSION)step_v : top;
            JDIMENSION rows = (JDIMENSION)(k ? rows_per_read / step_v : rows_per_read);
            for (JDIMENSION row = 0; row < rows && first + row < read[k].height; row++) {
                memcpy(read[k].data + (size_t)(first + row) * read[k].stride, buffer[k][row],
                       read[k].width);
            }
        }
    }
    jpeg_finish_decompress(src);

    const JDIMENSION out_w = turn.transpose ? height : width;
    const JDIMENSION out_h = turn.transpose ? width : height;
    /* The turned chroma's sampling, and its rows padded for a box average of 2. */
    const int turned_h = turn.transpose ? step_v : step_h;
    const int turned_v = turn.transpose ? step_h : step_v;
    const JDIMENSION turned_cw = turn.transpose ? chroma_h : chroma_w;
    const JDIMENSION turned_ch = turn.transpose ? chroma_w : chroma_h;
    struct plane upright[3] = {
        pool_plane(pool, out_w, out_h, ((out_w + 15) / 16) * 16),
        pool_plane(pool, turned_cw, turned_ch, turned_cw + 2),
        pool_plane(pool, turned_cw, turned_ch, turned_cw + 2),
    };
    for (int k = 0; k < 3; k++) {
        turn_plane(&read[k], &upright[k], turn);
        free(c->owned[k]);
        c->owned[k] = NULL;
    }

    start_writing(job, c, out_w, out_h, turn.transpose);
    const JDIMENSION out_cw = (out_w + 1) / 2;
    const JDIMENSION out_stride = ((out_cw + 7) / 8) * 8;
    JSAMPARRAY out_chroma[2];
    for (int k = 0; k < 2; k++) {
        out_chroma[k] = (*src->mem->alloc_sarray)(pool, JPOOL_PERMANENT, out_stride, DCTSIZE);
    }
    for (JDIMENSION top = 0; top < out_h; top += GROUP_ROWS) {
        JSAMPROW luma[GROUP_ROWS], chroma[GROUP_ROWS];
        plane_rows(&upright[0], top, GROUP_ROWS, luma);
        for (int k = 0; k < 2; k++) {
            plane_rows(&upright[k + 1], top / (JDIMENSION)turned_v, GROUP_ROWS / turned_v,
                       chroma);
            downsample(chroma, out_chroma[k], out_cw, 2 / turned_h, 2 / turned_v);
            pad_plane(out_chroma[k], DCTSIZE, out_cw, out_stride, DCTSIZE);
        }
        JSAMPARRAY planes[3] = {luma, out_chroma[0], out_chroma[1]};
        jpeg_write_raw_data(&c->dst, planes, GROUP_ROWS);
    }
}

/* Whether a turned source's chroma is subsampled at all: turning three full planes
 * costs more than Pillow's pixel path saves (12 MP 4:4:4, orientation 6: 157 ms against
 * 122 ms; 4:2:2 109 against 142, 4:2:0 81 against 115, measured with a codec worker's
 * malloc settings). */
static int turn_pays(const struct jpeg_decompress_struct *src) {
    const jpeg_component_info *chroma = &src->comp_info[1];
    return chroma->h_samp_factor < src->max_h_samp_factor ||
           chroma->v_samp_factor < src->max_v_samp_factor;
}

static int transcode_work(struct job *job, struct codecs *c) {
    struct turn turn = turns[job->orientation];
    if (!transcode_takes(&c->src) ||
        (job->orientation != 1 && (!turn_pays(&c->src) || !turn_keeps_chroma(&c->src, turn)))) {
        return 0;
    }
    if (job->orientation == 1) {
        struct reader r;
        start_reading(&r, &c->src);
        transcode_upright(job, c, &r);
    } else {
        transcode_turned(job, c, turn);
    }
    jpeg_finish_compress(&c->dst);
    return 1;
}

/* 1: job->out holds the JPEG; 0: the source is not taken (or corrupt). */
static int run_transcode(struct job *job) { return with_codecs(job, transcode_work); }

/* The Python side of requantize and transcode: the same arguments, the work with the GIL
 * released. */
static PyObject *call(PyObject *args, int (*run_job)(struct job *)) {
    Py_buffer data, icc = {0};
    int quality, orientation = 1;
    if (!PyArg_ParseTuple(args, "y*i|z*i", &data, &quality, &icc, &orientation)) {
        return NULL;
    }
    if (quality < 1 || quality > 100 || icc.len > 0xFFFFFF || orientation < 1 ||
        orientation > 8) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&icc);
        PyErr_SetString(PyExc_ValueError,
                        "quality must be 1-100, the ICC profile < 16 MiB, the orientation 1-8");
        return NULL;
    }
    struct job job = {data.buf, (unsigned long)data.len, quality, orientation,
                      icc.buf, (unsigned int)icc.len, NULL, 0};
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = run_job(&job);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&icc);
    if (!done) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)job.out, (Py_ssize_t)job.out_size);
    free(job.out);
    return out;
}

static PyObject *requantize(PyObject *self, PyObject *args) {
    (void)self;
    return call(args, run);
}

static PyObject *transcode(PyObject *self, PyObject *args) {
    (void)self;
    return call(args, run_transcode);
}

/* scan_count(data): the scans (SOS markers) of a JPEG without decoding it: the segments up
 * to the first scan are walked (an EXIF thumbnail's scans are not counted), then every SOS
 * marker after it is counted (entropy-coded data never holds one: an 0xFF in it is followed
 * by 0x00 or a restart marker); 0 before any scan. With memchr: a few GB/s, where Python's
 * bytes.count of the two bytes did about 1 GB/s, twice per image in the processor. */
static PyObject *scan_count(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) {
        return NULL;
    }
    const unsigned char *bytes = data.buf, *end = bytes + data.len;
    size_t size = (size_t)data.len, position = 2;
    long scans = 0;
    while (position + 4 <= size && bytes[position] == 0xFF) {
        unsigned char marker = bytes[position + 1];
        if (marker == 0xFF) { /* a fill byte */
            position++;
            continue;
        }
        if (marker == 0xDA) {
            scans = 1;
            const unsigned char *at = bytes + position + 2;
            while (at < end && (at = memchr(at, 0xFF, (size_t)(end - at))) != NULL) {
                if (at + 1 < end && at[1] == 0xDA) {
                    scans++;
                }
                at++;
            }
            break;
        }
        position += 2 + (size_t)((bytes[position + 2] << 8) | bytes[position + 3]);
    }
    PyBuffer_Release(&data);
    return PyLong_FromLong(scans);
}

static PyMethodDef methods[] = {
    {"scan_count", scan_count, METH_VARARGS,
     "scan_count(data) -> int: the scans (SOS markers) of a JPEG after its header, counted "
     "without decoding."},
    {"requantize", requantize, METH_VARARGS,
     "requantize(data, quality, icc=None, orientation=1) -> bytes | None: a 4:2:0 YCbCr or "
     "greyscale JPEG's coefficients turned upright per the EXIF orientation, rescaled to the "
     "quality's tables, Huffman-optimised; None if not taken."},
    {"transcode", transcode, METH_VARARGS,
     "transcode(data, quality, icc=None, orientation=1) -> bytes | None: a YCbCr JPEG "
     "decoded to its planes (no colour conversion), turned upright per the EXIF orientation, "
     "its chroma halved to 4:2:0, encoded at the quality, Huffman-optimised; None if not "
     "taken."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg", "JPEG to JPEG with libjpeg, without RGB pixels.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
