/* image.h — write 8-bit grayscale / RGB images as PNG (stored deflate, no compression
 * library) or PGM / PPM, and tile samples into a grid exactly as src/edgediff/runtimes/images.py does. */
#ifndef EDD_TOOLS_IMAGE_H
#define EDD_TOOLS_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct edd_image {
    size_t width, height, channels; /* channels 1 (gray) or 3 (RGB) */
    uint8_t *pixels;                /* height * width * channels, rows top to bottom */
} edd_image;

/* images.save_grid: n samples (C, H, W) in float32, values clipped to [-1, 1], to uint8 as
 * clip((x + 1) * 127.5 + 0.5, 0, 255) truncated, tiled ceil(sqrt(n)) per row with a 1-pixel
 * black border, enlarged by nearest neighbour with the same scale rule. C must be 1 or 3.
 * Returns 0, or -1 (out of memory / bad shape). Free img->pixels with free(). */
int edd_image_grid(const float *samples, size_t n, size_t c, size_t h, size_t w, edd_image *img);

/* The PNG bytes (zlib stream of stored blocks, CRC-32, Adler-32) into a new buffer. */
int edd_image_encode_png(const edd_image *img, uint8_t **out, size_t *out_len);

/* Write img to path: ".png", ".pgm" (gray) or ".ppm" (RGB; gray is expanded). Returns 0, or -1
 * with a message in err (unknown extension, cannot open, write error). */
int edd_image_write(const edd_image *img, const char *path, char *err, size_t err_size);

#endif
