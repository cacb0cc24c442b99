/* image.c — see image.h. The PNG is the smallest valid one: IHDR, one IDAT holding a zlib
 * stream of stored (uncompressed) deflate blocks of at most 65535 bytes, IEND. */
#include "image.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t to_u8(float x) {
    float v;
    if (x < -1.0f) x = -1.0f; /* runner.generate clips the samples first */
    if (x > 1.0f) x = 1.0f;
    v = (x + 1.0f) * 127.5f; /* float32 arithmetic, one rounding per operation, as numpy */
    v = v + 0.5f;
    if (!(v >= 0.0f)) v = 0.0f;
    if (v > 255.0f) v = 255.0f;
    return (uint8_t)v; /* astype(uint8) truncates */
}

int edd_image_grid(const float *samples, size_t n, size_t c, size_t h, size_t w, edd_image *img) {
    size_t ncols, nrows, gw, gh, scale, k, y, x, ch, half, side;
    uint8_t *grid;
    memset(img, 0, sizeof *img);
    if (!samples || n < 1 || (c != 1 && c != 3) || h < 1 || w < 1) return -1;
    ncols = (size_t)ceil(sqrt((double)n));
    nrows = (n + ncols - 1) / ncols;
    gh = nrows * (h + 1) + 1;
    gw = ncols * (w + 1) + 1;
    /* scale = max(1, 256 // H // max(1, ceil(sqrt(n)) // 2)) */
    side = (size_t)ceil(sqrt((double)n));
    half = side / 2 ? side / 2 : 1;
    scale = 256 / h / half;
    if (scale < 1) scale = 1;
    grid = (uint8_t *)calloc(gh * gw * c, 1);
    if (!grid) return -1;
    for (k = 0; k < n; k++) {
        size_t r = k / ncols, q = k % ncols;
        const float *s = samples + k * c * h * w;
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++)
                for (ch = 0; ch < c; ch++)
                    grid[((1 + r * (h + 1) + y) * gw + 1 + q * (w + 1) + x) * c + ch] = to_u8(s[(ch * h + y) * w + x]);
    }
    img->width = gw * scale;
    img->height = gh * scale;
    img->channels = c;
    if (scale == 1) {
        img->pixels = grid;
        return 0;
    }
    img->pixels = (uint8_t *)malloc(img->width * img->height * c);
    if (!img->pixels) {
        free(grid);
        return -1;
    }
    for (y = 0; y < img->height; y++)
        for (x = 0; x < img->width; x++)
            memcpy(img->pixels + (y * img->width + x) * c, grid + ((y / scale) * gw + x / scale) * c, c);
    free(grid);
    return 0;
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    size_t i;
    int b;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (b = 0; b < 8; b++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* length, type, data, CRC over type + data */
static uint8_t *chunk(uint8_t *p, const char *type, const uint8_t *data, size_t n) {
    uint32_t crc;
    be32(p, (uint32_t)n);
    memcpy(p + 4, type, 4);
    if (n) memcpy(p + 8, data, n);
    crc = crc32_update(0, p + 4, n + 4);
    be32(p + 8 + n, crc);
    return p + 12 + n;
}

int edd_image_encode_png(const edd_image *img, uint8_t **out, size_t *out_len) {
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    size_t row = img->width * img->channels + 1, raw_len = row * img->height, nblocks, z_len, total, y, k;
    uint8_t ihdr[13], *raw, *z, *png, *p;
    uint32_t a = 1, b = 0;
    *out = NULL;
    if (img->channels != 1 && img->channels != 3) return -1;
    raw = (uint8_t *)malloc(raw_len ? raw_len : 1);
    if (!raw) return -1;
    for (y = 0; y < img->height; y++) {
        raw[y * row] = 0; /* filter: none */
        memcpy(raw + y * row + 1, img->pixels + y * (row - 1), row - 1);
    }
    nblocks = raw_len ? (raw_len + 65534) / 65535 : 1;
    z_len = 2 + nblocks * 5 + raw_len + 4;
    z = (uint8_t *)malloc(z_len);
    if (!z) {
        free(raw);
        return -1;
    }
    p = z;
    *p++ = 0x78; /* zlib: deflate, 32K window */
    *p++ = 0x01; /* no preset dictionary, fastest; (0x78 << 8 | 0x01) % 31 == 0 */
    for (k = 0; k < nblocks; k++) {
        size_t off = k * 65535, len = raw_len - off < 65535 ? raw_len - off : 65535;
        *p++ = (uint8_t)(k + 1 == nblocks); /* BFINAL, BTYPE = 00 (stored) */
        *p++ = (uint8_t)len;
        *p++ = (uint8_t)(len >> 8);
        *p++ = (uint8_t)~len;
        *p++ = (uint8_t)(~len >> 8);
        memcpy(p, raw + off, len);
        p += len;
    }
    for (k = 0; k < raw_len; k++) { /* Adler-32 */
        a = (a + raw[k]) % 65521u;
        b = (b + a) % 65521u;
    }
    be32(p, (b << 16) | a);
    free(raw);
    be32(ihdr, (uint32_t)img->width);
    be32(ihdr + 4, (uint32_t)img->height);
    ihdr[8] = 8;                          /* bit depth */
    ihdr[9] = img->channels == 1 ? 0 : 2; /* gray / RGB */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;   /* deflate, adaptive filtering, no interlace */
    total = 8 + (12 + 13) + (12 + z_len) + 12;
    png = (uint8_t *)malloc(total);
    if (!png) {
        free(z);
        return -1;
    }
    memcpy(png, signature, 8);
    p = chunk(png + 8, "IHDR", ihdr, 13);
    p = chunk(p, "IDAT", z, z_len);
    chunk(p, "IEND", NULL, 0);
    free(z);
    *out = png;
    *out_len = total;
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix), i;
    if (n < m) return 0;
    for (i = 0; i < m; i++) {
        char c = s[n - m + i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != suffix[i]) return 0;
    }
    return 1;
}

int edd_image_write(const edd_image *img, const char *path, char *err, size_t err_size) {
    FILE *f;
    uint8_t *data = NULL;
    size_t len = 0, ok;
    int png = ends_with(path, ".png"), ppm = ends_with(path, ".ppm"), pgm = ends_with(path, ".pgm");
    if (!png && !ppm && !pgm) {
        snprintf(err, err_size, "%s: output must end in .png, .pgm or .ppm", path);
        return -1;
    }
    if (pgm && img->channels != 1) {
        snprintf(err, err_size, "%s: a PGM is grayscale, these images have %lu channels (use .ppm or .png)", path,
                 (unsigned long)img->channels);
        return -1;
    }
    if (png && edd_image_encode_png(img, &data, &len)) {
        snprintf(err, err_size, "%s: out of memory encoding the PNG", path);
        return -1;
    }
    f = fopen(path, "wb");
    if (!f) {
        free(data);
        snprintf(err, err_size, "%s: cannot open for writing", path);
        return -1;
    }
    if (png) {
        ok = fwrite(data, 1, len, f) == len;
    } else {
        size_t i, n = img->width * img->height;
        ok = fprintf(f, "P%c\n%lu %lu\n255\n", pgm ? '5' : '6', (unsigned long)img->width, (unsigned long)img->height) >
             0;
        if (pgm || img->channels == 3) {
            ok = ok && fwrite(img->pixels, 1, n * img->channels, f) == n * img->channels;
        } else {
            for (i = 0; ok && i < n; i++) { /* gray -> RGB */
                uint8_t rgb[3];
                rgb[0] = rgb[1] = rgb[2] = img->pixels[i];
                ok = fwrite(rgb, 1, 3, f) == 3;
            }
        }
    }
    free(data);
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        snprintf(err, err_size, "%s: write error", path);
        return -1;
    }
    return 0;
}
