/* PLACEHOLDER: being written (STUN codec). */
#include "stun/stun.h"
#include <string.h>
bool np_stun_is_stun(const uint8_t *b, size_t l) { (void)b; (void)l; return false; }
int np_stun_read(const uint8_t *b, size_t l, np_stun_msg *m) { (void)b; (void)l; memset(m, 0, sizeof *m); return NP_ERR_UNSUPPORTED; }
int np_stun_check_integrity(const uint8_t *b, size_t l, const np_stun_msg *m, const uint8_t *k, size_t kl) { (void)b; (void)l; (void)m; (void)k; (void)kl; return NP_ERR_UNSUPPORTED; }
int np_stun_check_integrity_sha256(const uint8_t *b, size_t l, const np_stun_msg *m, const uint8_t *k, size_t kl) { (void)b; (void)l; (void)m; (void)k; (void)kl; return NP_ERR_UNSUPPORTED; }
int np_stun_long_term_key(const char *u, const char *r, const char *p, uint8_t o[16]) { (void)u; (void)r; (void)p; (void)o; return NP_ERR_UNSUPPORTED; }
void np_stun_writer_init(np_stun_writer *w, uint8_t *b, size_t c, uint16_t t, uint32_t k, const uint8_t x[NP_STUN_TXID_LEN]) { (void)t; (void)k; (void)x; w->buf = b; w->cap = c; w->len = 0; w->err = NP_ERR_UNSUPPORTED; }
void np_stun_put_addr(np_stun_writer *w, uint16_t t, const np_addr *a) { (void)w; (void)t; (void)a; }
void np_stun_put_xor_addr(np_stun_writer *w, uint16_t t, const np_addr *a) { (void)w; (void)t; (void)a; }
void np_stun_put_u32(np_stun_writer *w, uint16_t t, uint32_t v) { (void)w; (void)t; (void)v; }
void np_stun_put_response_port(np_stun_writer *w, uint16_t p) { (void)w; (void)p; }
void np_stun_put_bytes(np_stun_writer *w, uint16_t t, const void *d, size_t l) { (void)w; (void)t; (void)d; (void)l; }
void np_stun_put_error(np_stun_writer *w, uint16_t c, const char *r) { (void)w; (void)c; (void)r; }
void np_stun_put_unknown(np_stun_writer *w, const uint16_t *t, size_t n) { (void)w; (void)t; (void)n; }
void np_stun_put_integrity(np_stun_writer *w, const uint8_t *k, size_t l) { (void)w; (void)k; (void)l; }
void np_stun_put_integrity_sha256(np_stun_writer *w, const uint8_t *k, size_t l, size_t t) { (void)w; (void)k; (void)l; (void)t; }
void np_stun_put_fingerprint(np_stun_writer *w) { (void)w; }
int np_stun_writer_finish(np_stun_writer *w) { return w->err; }
const char *np_stun_attr_name(uint16_t t) { (void)t; return NULL; }
