/* Big-endian (network order) field access over byte buffers, for every codec. */
#ifndef NP_BYTES_H
#define NP_BYTES_H

#include <stdint.h>

/* Reads and writes go byte by byte, never through a cast to a wider type:
 * network input is not aligned, and a packed-struct cast would be undefined
 * behaviour that UBSan reports. Compilers fold these into one load and a
 * byte swap. */

/* The 16-bit big-endian value at p[0..1]. */
static inline uint16_t rd16(const uint8_t *p) {
  return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

/* The 32-bit big-endian value at p[0..3]. */
static inline uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The 64-bit big-endian value at p[0..7]. */
static inline uint64_t rd64(const uint8_t *p) {
  return (uint64_t)rd32(p) << 32 | rd32(p + 4);
}

/* Stores v big-endian at p[0..1]. */
static inline void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* Stores v big-endian at p[0..3]. */
static inline void wr32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Stores v big-endian at p[0..7]. */
static inline void wr64(uint8_t *p, uint64_t v) {
  wr32(p, (uint32_t)(v >> 32));
  wr32(p + 4, (uint32_t)v);
}

#endif
