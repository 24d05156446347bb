/* imgpipe.processor._jpeg: JPEG -> JPEG in the DCT domain with libjpeg(-turbo).
 *
 * requantize(data, quality, icc) reads a JPEG's quantised DCT coefficients (no inverse
 * DCT, no colour conversion, no pixels), rescales them from the source's quantisation
 * tables to the tables libjpeg's jpeg_set_quality(quality) gives, keeping a source table
 * entry wherever it is already coarser than the target's, and writes a baseline JPEG with
 * Huffman optimisation and the given ICC profile (or none), nothing else. Sources it takes:
 * 8-bit YCbCr with 4:2:0 sampling (what the pixel path writes, so the output is never of
 * another form). It returns None for any other source, and for a source libjpeg finds
 * corrupt (even one it would only warn about): the caller then takes the pixel path, whose
 * errors say what is wrong. The GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

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
    if (src->data_precision != 8 || src->jpeg_color_space != JCS_YCbCr ||
        src->num_components != 3) {
        return 0;
    }
    const jpeg_component_info *c = src->comp_info;
    return c[0].h_samp_factor == 2 && c[0].v_samp_factor == 2 && c[1].h_samp_factor == 1 &&
           c[1].v_samp_factor == 1 && c[2].h_samp_factor == 1 && c[2].v_samp_factor == 1;
}

/* Rescales every coefficient of component ci from table `from` to table `to`. */
static void rescale(j_decompress_ptr src, jvirt_barray_ptr array,
                    const jpeg_component_info *comp, const UINT16 *from, const UINT16 *to) {
    float ratio[DCTSIZE2];
    int changed = 0;
    for (int k = 0; k < DCTSIZE2; k++) {
        ratio[k] = (float)from[k] / (float)to[k];
        changed |= from[k] != to[k];
    }
    if (!changed) {
        return;
    }
    for (JDIMENSION row = 0; row < comp->height_in_blocks; row += comp->v_samp_factor) {
        JBLOCKARRAY rows = (*src->mem->access_virt_barray)((j_common_ptr)src, array, row,
                                                           (JDIMENSION)comp->v_samp_factor, TRUE);
        for (int r = 0; r < comp->v_samp_factor && row + r < comp->height_in_blocks; r++) {
            JBLOCKROW blocks = rows[r];
            for (JDIMENSION b = 0; b < comp->width_in_blocks; b++) {
                JCOEF *coef = blocks[b];
                for (int k = 0; k < DCTSIZE2; k++) {
                    if (coef[k]) {
                        float scaled = (float)coef[k] * ratio[k];
                        coef[k] = (JCOEF)(scaled < 0 ? -floorf(ROUNDING - scaled)
                                                     : floorf(ROUNDING + scaled));
                    }
                }
            }
        }
    }
}

struct job {
    const unsigned char *data;
    unsigned long size;
    int quality;
    const unsigned char *icc;
    unsigned int icc_size;
    unsigned char *out;
    unsigned long out_size;
};

/* 1: job->out holds the JPEG; 0: the source is not taken (or corrupt). */
static int run(struct job *job) {
    struct jpeg_decompress_struct src;
    struct jpeg_compress_struct dst;
    struct error_manager src_err, dst_err;
    volatile int dst_created = 0;
    volatile int done = 0;

    init_errors(&src_err);
    init_errors(&dst_err);
    src.err = &src_err.pub;
    dst.err = &dst_err.pub;
    jpeg_create_decompress(&src);
    if (setjmp(src_err.escape) || setjmp(dst_err.escape)) {
        if (dst_created) {
            jpeg_destroy_compress(&dst);
        }
        jpeg_destroy_decompress(&src);
        free(job->out);
        job->out = NULL;
        return 0;
    }
    jpeg_mem_src(&src, job->data, job->size);
    jpeg_read_header(&src, TRUE);
    if (takes(&src)) {
        jvirt_barray_ptr *coefficients = jpeg_read_coefficients(&src);
        UINT16 from[MAX_COMPONENTS][DCTSIZE2], target[2][DCTSIZE2];
        for (int ci = 0; ci < src.num_components; ci++) {
            const JQUANT_TBL *table = src.comp_info[ci].quant_table;
            if (table == NULL) {
                longjmp(src_err.escape, 1);
            }
            for (int k = 0; k < DCTSIZE2; k++) {
                from[ci][k] = table->quantval[k];
            }
        }
        jpeg_create_compress(&dst);
        dst_created = 1;
        jpeg_copy_critical_parameters(&src, &dst);
        jpeg_set_quality(&dst, job->quality, TRUE);
        for (int t = 0; t < 2; t++) {
            for (int k = 0; k < DCTSIZE2; k++) {
                target[t][k] = dst.quant_tbl_ptrs[t]->quantval[k];
            }
        }
        for (int ci = 0; ci < dst.num_components; ci++) {
            /* A table per component, but one for both chroma components when theirs are
             * the same (as they nearly always are). */
            int slot = ci == 2 && memcmp(from[1], from[2], sizeof from[1]) == 0 ? 1 : ci;
            const UINT16 *wanted = target[ci == 0 ? 0 : 1];
            if (dst.quant_tbl_ptrs[slot] == NULL) {
                dst.quant_tbl_ptrs[slot] = jpeg_alloc_quant_table((j_common_ptr)&dst);
            }
            JQUANT_TBL *table = dst.quant_tbl_ptrs[slot];
            for (int k = 0; k < DCTSIZE2; k++) {
                table->quantval[k] = from[ci][k] > wanted[k] ? from[ci][k] : wanted[k];
            }
            table->sent_table = FALSE;
            dst.comp_info[ci].quant_tbl_no = slot;
            rescale(&src, coefficients[ci], &src.comp_info[ci], from[ci], table->quantval);
        }
        dst.optimize_coding = TRUE;
        jpeg_mem_dest(&dst, &job->out, &job->out_size);
        jpeg_write_coefficients(&dst, coefficients);
        if (job->icc != NULL) {
            jpeg_write_icc_profile(&dst, job->icc, job->icc_size);
        }
        jpeg_finish_compress(&dst);
        jpeg_finish_decompress(&src);
        jpeg_destroy_compress(&dst);
        done = 1;
    }
    jpeg_destroy_decompress(&src);
    return done;
}

static PyObject *requantize(PyObject *self, PyObject *args) {
    Py_buffer data, icc = {0};
    int quality;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*i|z*", &data, &quality, &icc)) {
        return NULL;
    }
    if (quality < 1 || quality > 100 || icc.len > 0xFFFFFF) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&icc);
        PyErr_SetString(PyExc_ValueError, "quality must be 1-100, the ICC profile < 16 MiB");
        return NULL;
    }
    struct job job = {data.buf, (unsigned long)data.len, quality,
                      icc.buf, (unsigned int)icc.len, NULL, 0};
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = run(&job);
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

static PyMethodDef methods[] = {
    {"requantize", requantize, METH_VARARGS,
     "requantize(data, quality, icc=None) -> bytes | None: a 4:2:0 YCbCr JPEG's "
     "coefficients rescaled to the quality's tables, Huffman-optimised; None if not taken."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg", "JPEG to JPEG in the DCT domain (libjpeg).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
