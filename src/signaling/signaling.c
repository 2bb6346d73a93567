/*
 * Signaling codec (see signaling.h for the wire format and why it is so).
 *
 * Pure: no sockets, clocks or allocation. Fields are read byte by byte
 * (util/bytes.h), never through casts to packed structs, and every read is
 * bounds-checked first. The decoder is strict where leniency would create
 * ambiguity in signed data: a non-repeatable TLV given twice, a fixed-size
 * TLV of another size, non-zero padding or reserved bits are all errors, so
 * one set of fields has exactly one encoding the signer could have meant.
 */
#include "signaling/signaling.h"
#include "util/bytes.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <string.h>

#define TLV_HEADER_LEN 4
/* Addresses: family(1: 4 or 6) reserved(1) port(2) ip(4 or 16). */
#define ADDR_V4_LEN 8
#define ADDR_V6_LEN 20
#define ADDR_MAX_LEN ADDR_V6_LEN
#define FAMILY_V4 4
#define FAMILY_V6 6
#define TIMESTAMP_LEN 8
#define DELTA_LEN 4
#define NAT_LEN 2
#define STRIDE_LEN 8
/* STRIDE's kind: 1 cone .. 3 random (enum np_nat_kind; 0 is "not
 * classified", which is said by leaving the TLV out). */
#define STRIDE_KIND_MIN 1
#define STRIDE_KIND_MAX 3
#define STRIDE_VIEWS_MIN 2
#define STRIDE_VIEWS_MAX 8
#define FLAGS_LEN 4
/* ERROR value: u16 code, then the text. */
#define ERROR_FIXED_LEN 2
/* Codes read as three decimal digits, like HTTP's. */
#define ERROR_CODE_MIN 100
#define ERROR_CODE_MAX 999
/* The highest enum np_nat_behavior value a NAT TLV may carry. */
#define NAT_BEHAVIOR_MAX NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT
/* Highest TLV type we know; bit i of the "seen" mask is type i. */
#define TLV_KNOWN_MAX NP_SIG_T_FLAGS

/* Domain separation for REGISTER signatures: the NUL is included so no
 * other context string can be a prefix of this one. */
static const char register_context[] = "natpunch register v1";
#define REGISTER_PAYLOAD_MAX                                                                       \
  (sizeof register_context + NP_SIG_NONCE_LEN + NP_PUBKEY_LEN + NP_SIG_MAX_ALLOW * NP_PUBKEY_LEN)

_Static_assert(TLV_KNOWN_MAX < 32, "seen mask is 32 bits");

static size_t pad4(size_t n) {
  return (n + 3u) & ~(size_t)3u;
}

bool np__sig_is_peer_type(uint8_t type) {
  return type == NP_SIG_OFFER || type == NP_SIG_ANSWER || type == NP_SIG_READY;
}

static bool is_known_type(uint8_t type) {
  return type >= NP_SIG_HELLO && type <= NP_SIG_READY;
}

static bool is_signed_type(uint8_t type) {
  return type == NP_SIG_REGISTER || np__sig_is_peer_type(type);
}

const char *np__sig_type_name(uint8_t type) {
  switch (type) {
  case NP_SIG_HELLO:
    return "HELLO";
  case NP_SIG_CHALLENGE:
    return "CHALLENGE";
  case NP_SIG_REGISTER:
    return "REGISTER";
  case NP_SIG_REGISTERED:
    return "REGISTERED";
  case NP_SIG_OFFER:
    return "OFFER";
  case NP_SIG_ANSWER:
    return "ANSWER";
  case NP_SIG_ERROR:
    return "ERROR";
  case NP_SIG_PING:
    return "PING";
  case NP_SIG_PONG:
    return "PONG";
  case NP_SIG_READY:
    return "READY";
  default:
    return "?";
  }
}

/* Copies up to n bytes of error text into out (NUL-terminated, out has room
 * for NP_SIG_MAX_TEXT + 1), replacing control characters (including NUL,
 * which would cut the C string, and ESC, which would let a server drive a
 * terminal) with '?', cutting at NP_SIG_MAX_TEXT bytes and then back to a
 * UTF-8 character boundary so no half character is left at the end. */
static size_t clean_text(const uint8_t *in, size_t n, char *out) {
  size_t len = n > NP_SIG_MAX_TEXT ? NP_SIG_MAX_TEXT : n;
  /* When the first byte not kept continues a sequence (10xxxxxx), back off
   * to that sequence's lead byte, which is then not kept either. A UTF-8
   * sequence has at most three continuation bytes; beyond that the text is
   * not UTF-8 and a plain cut is as good as any. */
  for (int back = 0; len < n && len > 0 && back < 3 && (in[len] & 0xC0) == 0x80; back++)
    len--;
  if (len < n && len > 0 && (in[len] & 0xC0) == 0x80)
    len = n > NP_SIG_MAX_TEXT ? NP_SIG_MAX_TEXT : n;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = in[i];
    out[i] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
  }
  out[len] = '\0';
  return len;
}

/* ------------------------------------------------------------------------ */
/* Framing                                                                   */
/* ------------------------------------------------------------------------ */

int np__sig_frame_check(const uint8_t *buf, size_t avail, size_t max_frame, size_t *body_len) {
  /* 0 or anything above the protocol's own limit means the protocol limit. */
  if (max_frame == 0 || max_frame > NP_SIG_MAX_FRAME)
    max_frame = NP_SIG_MAX_FRAME;
  if (!buf || avail < NP_SIG_LEN_PREFIX)
    return NP_ERR_NOSPACE;
  /* Judge the announced size before waiting for the body: a peer that
   * announces too much is refused at once, not after we buffered it. */
  size_t body = rd32(buf);
  if (body > max_frame || body < NP_SIG_HEADER_LEN)
    return NP_ERR_PROTO;
  if (avail - NP_SIG_LEN_PREFIX < body)
    return NP_ERR_NOSPACE;
  if (body_len)
    *body_len = body;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                   */
/* ------------------------------------------------------------------------ */

static int read_addr(const uint8_t *v, size_t vlen, np_addr *out) {
  memset(out, 0, sizeof *out);
  if (vlen < 4 || v[1] != 0)
    return NP_ERR_PROTO;
  uint16_t port = rd16(v + 2);
  if (v[0] == FAMILY_V4 && vlen == ADDR_V4_LEN) {
    out->u.in4.sin_family = AF_INET;
    out->u.in4.sin_port = htons(port);
    memcpy(&out->u.in4.sin_addr, v + 4, 4);
    return 0;
  }
  if (v[0] == FAMILY_V6 && vlen == ADDR_V6_LEN) {
    out->u.in6.sin6_family = AF_INET6;
    out->u.in6.sin6_port = htons(port);
    memcpy(&out->u.in6.sin6_addr, v + 4, 16);
    return 0;
  }
  return NP_ERR_PROTO;
}

static int read_fixed(const uint8_t *v, size_t vlen, uint8_t *out, size_t size) {
  if (vlen != size)
    return NP_ERR_PROTO;
  memcpy(out, v, size);
  return 0;
}

/* Interprets one TLV whose value v[0..vlen) lies inside the body. Known
 * non-repeatable types were already checked for duplicates. */
static int read_tlv(np_sig_msg *msg, uint16_t t, const uint8_t *v, size_t vlen) {
  switch (t) {
  case NP_SIG_T_PUBKEY:
    msg->has_pubkey = true;
    return read_fixed(v, vlen, msg->pubkey, NP_PUBKEY_LEN);
  case NP_SIG_T_NONCE:
    msg->has_nonce = true;
    return read_fixed(v, vlen, msg->nonce, NP_SIG_NONCE_LEN);
  case NP_SIG_T_SIGNATURE:
    msg->has_signature = true;
    return read_fixed(v, vlen, msg->signature, NP_SIGNATURE_LEN);
  case NP_SIG_T_FROM:
    msg->has_from = true;
    return read_fixed(v, vlen, msg->from, NP_PUBKEY_LEN);
  case NP_SIG_T_TO:
    msg->has_to = true;
    return read_fixed(v, vlen, msg->to, NP_PUBKEY_LEN);
  case NP_SIG_T_SESSION:
    msg->has_session = true;
    return read_fixed(v, vlen, msg->session, NP_SIG_SESSION_LEN);
  case NP_SIG_T_TIMESTAMP:
    if (vlen != TIMESTAMP_LEN)
      return NP_ERR_PROTO;
    msg->has_timestamp = true;
    msg->timestamp_ms = rd64(v);
    return 0;
  case NP_SIG_T_PRIVATE:
    if (msg->cand.n_private >= NP_SIG_MAX_PRIVATE)
      return NP_ERR_PROTO;
    return read_addr(v, vlen, &msg->cand.private_addrs[msg->cand.n_private++]);
  case NP_SIG_T_MAPPED:
    if (msg->cand.n_mapped >= NP_SIG_MAX_MAPPED)
      return NP_ERR_PROTO;
    return read_addr(v, vlen, &msg->cand.mapped[msg->cand.n_mapped++]);
  case NP_SIG_T_DELTA:
    if (vlen != DELTA_LEN)
      return NP_ERR_PROTO;
    msg->cand.have_delta = true;
    /* Two's complement on the wire; the conversion is exact for every
     * int32_t value. */
    msg->cand.delta = (int32_t)rd32(v);
    return 0;
  case NP_SIG_T_STRIDE:
    if (vlen != STRIDE_LEN || v[4] < STRIDE_KIND_MIN || v[4] > STRIDE_KIND_MAX ||
        v[5] < STRIDE_VIEWS_MIN || v[5] > STRIDE_VIEWS_MAX)
      return NP_ERR_PROTO;
    msg->cand.have_stride = true;
    msg->cand.stride = (int32_t)rd32(v); /* two's complement, as DELTA */
    msg->cand.nat_kind = v[4];
    msg->cand.n_views = v[5];
    msg->cand.stride_base = rd16(v + 6);
    return 0;
  case NP_SIG_T_NAT:
    if (vlen != NAT_LEN || v[0] > NAT_BEHAVIOR_MAX || v[1] > NAT_BEHAVIOR_MAX)
      return NP_ERR_PROTO;
    msg->cand.have_nat = true;
    msg->cand.mapping = v[0];
    msg->cand.filtering = v[1];
    return 0;
  case NP_SIG_T_PORTMAP:
    return read_addr(v, vlen, &msg->cand.portmap);
  case NP_SIG_T_PEER_SEEN:
    return read_addr(v, vlen, &msg->peer_seen);
  case NP_SIG_T_KX:
    msg->cand.has_kx = true;
    return read_fixed(v, vlen, msg->cand.kx, NP_SIG_KX_LEN);
  case NP_SIG_T_FLAGS:
    if (vlen != FLAGS_LEN)
      return NP_ERR_PROTO;
    msg->cand.flags = rd32(v);
    return 0;
  case NP_SIG_T_OBSERVED:
    return read_addr(v, vlen, &msg->observed);
  case NP_SIG_T_ERROR: {
    if (vlen < ERROR_FIXED_LEN)
      return NP_ERR_PROTO;
    uint16_t code = rd16(v);
    if (code < ERROR_CODE_MIN || code > ERROR_CODE_MAX)
      return NP_ERR_PROTO;
    msg->error_code = code;
    clean_text(v + ERROR_FIXED_LEN, vlen - ERROR_FIXED_LEN, msg->error_text);
    return 0;
  }
  case NP_SIG_T_ALLOW:
    if (msg->n_allow >= NP_SIG_MAX_ALLOW)
      return NP_ERR_PROTO;
    return read_fixed(v, vlen, msg->allow[msg->n_allow++], NP_PUBKEY_LEN);
  default:
    /* Unknown types are skipped: room for later versions. */
    return 0;
  }
}

static bool is_repeatable(uint16_t t) {
  return t == NP_SIG_T_PRIVATE || t == NP_SIG_T_MAPPED || t == NP_SIG_T_ALLOW;
}

/* The fields each type cannot do without. */
static bool has_required(const np_sig_msg *m) {
  switch (m->type) {
  case NP_SIG_HELLO:
    return m->has_pubkey;
  case NP_SIG_CHALLENGE:
    return m->has_nonce;
  case NP_SIG_REGISTER:
    return m->has_pubkey && m->has_signature;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    return m->has_from && m->has_to && m->has_session && m->has_timestamp && m->has_signature;
  case NP_SIG_ERROR:
    return m->error_code != 0;
  default:
    return true;
  }
}

/*
 *   body    = version(1) type(1) reserved(2, zero) tlv*
 *   tlv     = type(2) length(2) value(length) pad-to-4(zero)
 */
static int decode(const uint8_t *body, size_t len, np_sig_msg *msg) {
  if (!body || len < NP_SIG_HEADER_LEN)
    return NP_ERR_PROTO;
  /* The version is judged before anything else, so a newer peer gets a
   * "505 version not supported" instead of a "400 bad request" for a
   * layout we cannot know. */
  if (body[0] != NP_SIG_VERSION)
    return NP_ERR_UNSUPPORTED;
  if (len > NP_SIG_MAX_FRAME || !is_known_type(body[1]) || rd16(body + 2) != 0)
    return NP_ERR_PROTO;
  msg->type = body[1];
  bool signed_type = is_signed_type(msg->type);

  uint32_t seen = 0;
  bool after_signature = false;
  size_t pos = NP_SIG_HEADER_LEN;
  while (pos < len) {
    if (len - pos < TLV_HEADER_LEN)
      return NP_ERR_PROTO;
    uint16_t t = rd16(body + pos);
    size_t vlen = rd16(body + pos + 2);
    size_t room = len - pos - TLV_HEADER_LEN;
    /* The padding must be there too: every TLV, the last included, ends on
     * a 4-byte boundary, so a body has no tail to hide bytes in. */
    if (pad4(vlen) > room)
      return NP_ERR_PROTO;
    const uint8_t *v = body + pos + TLV_HEADER_LEN;
    for (size_t i = vlen; i < pad4(vlen); i++)
      if (v[i] != 0)
        return NP_ERR_PROTO;

    if (t <= TLV_KNOWN_MAX && t != 0 && !is_repeatable(t)) {
      if (seen & (1u << t))
        return NP_ERR_PROTO;
      seen |= 1u << t;
    }
    if (t == NP_SIG_T_MAC) {
      /* Only server-made frames carry one, and it is the last TLV, so
       * nothing unauthenticated can follow what it covers (and it cannot
       * appear twice). */
      if (signed_type || vlen != NP_SIG_MAC_LEN || pos + TLV_HEADER_LEN + NP_SIG_MAC_LEN != len)
        return NP_ERR_PROTO;
      msg->has_mac = true;
      msg->mac_len = pos;
      memcpy(msg->mac, v, NP_SIG_MAC_LEN);
      pos += TLV_HEADER_LEN + NP_SIG_MAC_LEN;
      continue;
    }
    if (t == NP_SIG_T_SIGNATURE) {
      if (!signed_type)
        return NP_ERR_PROTO;
      after_signature = true;
      /* REGISTER's signature covers np__sig_register_payload(), not body
       * bytes, so only OFFER/ANSWER/READY get a signed_len. */
      if (msg->type != NP_SIG_REGISTER)
        msg->signed_len = pos;
    } else if (after_signature && t != NP_SIG_T_OBSERVED) {
      /* Only the server's stamp may follow the signature: anything else
       * would be unsigned data posing as the sender's. */
      return NP_ERR_PROTO;
    } else if (signed_type && t == NP_SIG_T_OBSERVED && !after_signature) {
      /* Before the signature it would be the sender's claim, not the
       * server's word. */
      return NP_ERR_PROTO;
    }
    int rc = read_tlv(msg, t, v, vlen);
    if (rc)
      return rc;
    pos += TLV_HEADER_LEN + pad4(vlen);
  }
  return has_required(msg) ? 0 : NP_ERR_PROTO;
}

int np__sig_decode(const uint8_t *body, size_t len, np_sig_msg *msg) {
  if (!msg)
    return NP_ERR_INVAL;
  memset(msg, 0, sizeof *msg);
  int rc = decode(body, len, msg);
  if (rc)
    memset(msg, 0, sizeof *msg); /* never half a message */
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                   */
/* ------------------------------------------------------------------------ */

/* Writes into buf[0..cap); the first failure sticks, so callers check once. */
typedef struct writer {
  uint8_t *buf;
  size_t cap, len;
  int err;
} writer;

static uint8_t *put_tlv(writer *w, uint16_t t, size_t vlen) {
  if (w->err)
    return NULL;
  size_t need = TLV_HEADER_LEN + pad4(vlen);
  if (vlen > UINT16_MAX || w->cap - w->len < need ||
      w->len + need - NP_SIG_LEN_PREFIX > NP_SIG_MAX_FRAME) {
    w->err = NP_ERR_NOSPACE;
    return NULL;
  }
  uint8_t *p = w->buf + w->len;
  wr16(p, t);
  wr16(p + 2, (uint16_t)vlen);
  memset(p + TLV_HEADER_LEN + vlen, 0, pad4(vlen) - vlen);
  w->len += need;
  return p + TLV_HEADER_LEN;
}

static void put_bytes(writer *w, uint16_t t, const void *v, size_t vlen) {
  uint8_t *p = put_tlv(w, t, vlen);
  if (p && vlen)
    memcpy(p, v, vlen);
}

static bool addr_is_set(const np_addr *a) {
  return a->u.sa.sa_family == AF_INET || a->u.sa.sa_family == AF_INET6;
}

static size_t addr_wire_len(const np_addr *a) {
  return a->u.sa.sa_family == AF_INET ? ADDR_V4_LEN : ADDR_V6_LEN;
}

static void put_addr(writer *w, uint16_t t, const np_addr *a) {
  uint8_t *p = put_tlv(w, t, addr_wire_len(a));
  if (!p)
    return;
  if (a->u.sa.sa_family == AF_INET) {
    p[0] = FAMILY_V4;
    p[1] = 0;
    memcpy(p + 2, &a->u.in4.sin_port, 2); /* already network order */
    memcpy(p + 4, &a->u.in4.sin_addr, 4);
  } else {
    p[0] = FAMILY_V6;
    p[1] = 0;
    memcpy(p + 2, &a->u.in6.sin6_port, 2);
    memcpy(p + 4, &a->u.in6.sin6_addr, 16);
  }
}

/* An address field is either unset (AF_UNSPEC: not written) or IPv4/IPv6. */
static bool addr_ok_or_unset(const np_addr *a) {
  return a->u.sa.sa_family == AF_UNSPEC || addr_is_set(a);
}

/* Rejects a message the decoder would refuse, so we never send one. */
static int check_encodable(const np_sig_msg *m, const np_identity *id) {
  if (!is_known_type(m->type))
    return NP_ERR_INVAL;
  const np_sig_candidates *c = &m->cand;
  if (c->n_private < 0 || c->n_private > NP_SIG_MAX_PRIVATE || c->n_mapped < 0 ||
      c->n_mapped > NP_SIG_MAX_MAPPED || m->n_allow < 0 || m->n_allow > NP_SIG_MAX_ALLOW)
    return NP_ERR_INVAL;
  for (int i = 0; i < c->n_private; i++)
    if (!addr_is_set(&c->private_addrs[i]))
      return NP_ERR_INVAL;
  for (int i = 0; i < c->n_mapped; i++)
    if (!addr_is_set(&c->mapped[i]))
      return NP_ERR_INVAL;
  if (!addr_ok_or_unset(&c->portmap) || !addr_ok_or_unset(&m->peer_seen) ||
      !addr_ok_or_unset(&m->observed))
    return NP_ERR_INVAL;
  if (c->have_nat && (c->mapping > NAT_BEHAVIOR_MAX || c->filtering > NAT_BEHAVIOR_MAX))
    return NP_ERR_INVAL;
  if (c->have_stride && (c->nat_kind < STRIDE_KIND_MIN || c->nat_kind > STRIDE_KIND_MAX ||
                         c->n_views < STRIDE_VIEWS_MIN || c->n_views > STRIDE_VIEWS_MAX))
    return NP_ERR_INVAL;
  if (m->error_code != 0 && (m->error_code < ERROR_CODE_MIN || m->error_code > ERROR_CODE_MAX))
    return NP_ERR_INVAL;

  uint8_t pk[NP_PUBKEY_LEN];
  switch (m->type) {
  case NP_SIG_HELLO:
    return m->has_pubkey ? 0 : NP_ERR_INVAL;
  case NP_SIG_CHALLENGE:
    return m->has_nonce ? 0 : NP_ERR_INVAL;
  case NP_SIG_REGISTER:
    if (!id || !m->has_nonce)
      return NP_ERR_INVAL;
    np_identity_public_key(id, pk);
    /* PUBKEY comes from id; a different one in msg is a caller mistake. */
    if (m->has_pubkey && memcmp(pk, m->pubkey, NP_PUBKEY_LEN) != 0)
      return NP_ERR_INVAL;
    return 0;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    if (!id || !m->has_from || !m->has_to || !m->has_session || !m->has_timestamp)
      return NP_ERR_INVAL;
    np_identity_public_key(id, pk);
    return memcmp(pk, m->from, NP_PUBKEY_LEN) == 0 ? 0 : NP_ERR_INVAL;
  case NP_SIG_ERROR:
    return m->error_code != 0 ? 0 : NP_ERR_INVAL;
  default:
    return 0;
  }
}

int np__sig_encode(const np_sig_msg *msg, const np_identity *id, uint8_t *buf, size_t cap) {
  if (!msg || (!buf && cap))
    return NP_ERR_INVAL;
  int rc = check_encodable(msg, id);
  if (rc)
    return rc;
  writer w = {.buf = buf, .cap = cap, .len = 0, .err = 0};
  if (cap < NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN)
    return NP_ERR_NOSPACE;
  buf[NP_SIG_LEN_PREFIX + 0] = NP_SIG_VERSION;
  buf[NP_SIG_LEN_PREFIX + 1] = msg->type;
  wr16(buf + NP_SIG_LEN_PREFIX + 2, 0);
  w.len = NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN;

  uint8_t pk[NP_PUBKEY_LEN];
  if (msg->type == NP_SIG_REGISTER) {
    np_identity_public_key(id, pk);
    put_bytes(&w, NP_SIG_T_PUBKEY, pk, NP_PUBKEY_LEN);
  } else if (msg->has_pubkey) {
    put_bytes(&w, NP_SIG_T_PUBKEY, msg->pubkey, NP_PUBKEY_LEN);
  }
  /* REGISTER signs the nonce but does not echo it: the server must check
   * against the nonce it issued, never one the peer hands back. */
  if (msg->has_nonce && msg->type != NP_SIG_REGISTER)
    put_bytes(&w, NP_SIG_T_NONCE, msg->nonce, NP_SIG_NONCE_LEN);
  if (msg->has_from)
    put_bytes(&w, NP_SIG_T_FROM, msg->from, NP_PUBKEY_LEN);
  if (msg->has_to)
    put_bytes(&w, NP_SIG_T_TO, msg->to, NP_PUBKEY_LEN);
  if (msg->has_session)
    put_bytes(&w, NP_SIG_T_SESSION, msg->session, NP_SIG_SESSION_LEN);
  if (msg->has_timestamp) {
    uint8_t *p = put_tlv(&w, NP_SIG_T_TIMESTAMP, TIMESTAMP_LEN);
    if (p)
      wr64(p, msg->timestamp_ms);
  }
  const np_sig_candidates *c = &msg->cand;
  for (int i = 0; i < c->n_private; i++)
    put_addr(&w, NP_SIG_T_PRIVATE, &c->private_addrs[i]);
  for (int i = 0; i < c->n_mapped; i++)
    put_addr(&w, NP_SIG_T_MAPPED, &c->mapped[i]);
  if (c->have_delta) {
    uint8_t *p = put_tlv(&w, NP_SIG_T_DELTA, DELTA_LEN);
    if (p)
      wr32(p, (uint32_t)c->delta);
  }
  if (c->have_stride) {
    uint8_t *p = put_tlv(&w, NP_SIG_T_STRIDE, STRIDE_LEN);
    if (p) {
      wr32(p, (uint32_t)c->stride);
      p[4] = c->nat_kind;
      p[5] = c->n_views;
      wr16(p + 6, c->stride_base);
    }
  }
  if (c->have_nat) {
    uint8_t *p = put_tlv(&w, NP_SIG_T_NAT, NAT_LEN);
    if (p) {
      p[0] = c->mapping;
      p[1] = c->filtering;
    }
  }
  if (addr_is_set(&c->portmap))
    put_addr(&w, NP_SIG_T_PORTMAP, &c->portmap);
  if (addr_is_set(&msg->peer_seen))
    put_addr(&w, NP_SIG_T_PEER_SEEN, &msg->peer_seen);
  if (c->has_kx)
    put_bytes(&w, NP_SIG_T_KX, c->kx, NP_SIG_KX_LEN);
  /* Only when set: a message without flags encodes as it always did. */
  if (c->flags != 0) {
    uint8_t *p = put_tlv(&w, NP_SIG_T_FLAGS, FLAGS_LEN);
    if (p)
      wr32(p, c->flags);
  }
  if (msg->error_code != 0) {
    char text[NP_SIG_MAX_TEXT + 1];
    size_t n = clean_text((const uint8_t *)msg->error_text,
                          strnlen(msg->error_text, sizeof msg->error_text), text);
    uint8_t *p = put_tlv(&w, NP_SIG_T_ERROR, ERROR_FIXED_LEN + n);
    if (p) {
      wr16(p, msg->error_code);
      memcpy(p + ERROR_FIXED_LEN, text, n);
    }
  }
  for (int i = 0; i < msg->n_allow; i++)
    put_bytes(&w, NP_SIG_T_ALLOW, msg->allow[i], NP_PUBKEY_LEN);

  if (w.err)
    return w.err;
  uint8_t sig[NP_SIGNATURE_LEN];
  if (np__sig_is_peer_type(msg->type)) {
    /* Every body byte so far: header and all TLVs. */
    np_identity_sign(id, buf + NP_SIG_LEN_PREFIX, w.len - NP_SIG_LEN_PREFIX, sig);
    put_bytes(&w, NP_SIG_T_SIGNATURE, sig, NP_SIGNATURE_LEN);
  } else if (msg->type == NP_SIG_REGISTER) {
    uint8_t payload[REGISTER_PAYLOAD_MAX];
    int n =
        np__sig_register_payload(msg->nonce, pk, msg->allow, msg->n_allow, payload, sizeof payload);
    if (n < 0)
      return n;
    np_identity_sign(id, payload, (size_t)n, sig);
    put_bytes(&w, NP_SIG_T_SIGNATURE, sig, NP_SIGNATURE_LEN);
  }
  if (addr_is_set(&msg->observed))
    put_addr(&w, NP_SIG_T_OBSERVED, &msg->observed);
  if (w.err)
    return w.err;
  if (w.len > INT32_MAX)
    return NP_ERR_NOSPACE;
  wr32(buf, (uint32_t)(w.len - NP_SIG_LEN_PREFIX));
  return (int)w.len;
}

/* ------------------------------------------------------------------------ */
/* Signatures                                                                */
/* ------------------------------------------------------------------------ */

int np__sig_verify(const uint8_t *body, size_t len, const np_sig_msg *msg) {
  if (!body || !msg || !np__sig_is_peer_type(msg->type) ||
      !msg->has_signature || !msg->has_from || msg->signed_len < NP_SIG_HEADER_LEN ||
      msg->signed_len > len)
    return NP_ERR_AUTH;
  return np_signature_verify(msg->from, body, msg->signed_len, msg->signature);
}

/*
 *   payload = "natpunch register v1" NUL  nonce(32)  pubkey(32)  allow(32)*
 *
 * Everything before the allow list has a fixed size, so the list's length
 * is implied and no two inputs give the same bytes.
 */
int np__sig_register_payload(const uint8_t nonce[NP_SIG_NONCE_LEN],
                            const uint8_t pubkey[NP_PUBKEY_LEN],
                            const uint8_t (*allow)[NP_PUBKEY_LEN], int n_allow, uint8_t *out,
                            size_t cap) {
  if (!nonce || !pubkey || !out || n_allow < 0 || n_allow > NP_SIG_MAX_ALLOW ||
      (n_allow > 0 && !allow))
    return NP_ERR_INVAL;
  size_t need =
      sizeof register_context + NP_SIG_NONCE_LEN + NP_PUBKEY_LEN + (size_t)n_allow * NP_PUBKEY_LEN;
  if (cap < need)
    return NP_ERR_NOSPACE;
  size_t o = 0;
  memcpy(out + o, register_context, sizeof register_context);
  o += sizeof register_context;
  memcpy(out + o, nonce, NP_SIG_NONCE_LEN);
  o += NP_SIG_NONCE_LEN;
  memcpy(out + o, pubkey, NP_PUBKEY_LEN);
  o += NP_PUBKEY_LEN;
  for (int i = 0; i < n_allow; i++, o += NP_PUBKEY_LEN)
    memcpy(out + o, allow[i], NP_PUBKEY_LEN);
  return (int)o;
}

int np__sig_verify_register(const np_sig_msg *msg, const uint8_t nonce[NP_SIG_NONCE_LEN]) {
  if (!msg || !nonce || msg->type != NP_SIG_REGISTER || !msg->has_pubkey || !msg->has_signature)
    return NP_ERR_AUTH;
  uint8_t payload[REGISTER_PAYLOAD_MAX];
  int n = np__sig_register_payload(nonce, msg->pubkey, msg->allow, msg->n_allow, payload,
                                  sizeof payload);
  if (n < 0)
    return NP_ERR_AUTH;
  return np_signature_verify(msg->pubkey, payload, (size_t)n, msg->signature);
}

/* ------------------------------------------------------------------------ */
/* Server stamp                                                              */
/* ------------------------------------------------------------------------ */

int np__sig_stamp_observed(uint8_t *buf, size_t len, size_t cap, const np_addr *observed) {
  if (!buf || !observed || !addr_is_set(observed) || cap < len)
    return NP_ERR_INVAL;
  size_t body_len;
  if (np__sig_frame_check(buf, len, NP_SIG_MAX_FRAME, &body_len) != 0 ||
      body_len != len - NP_SIG_LEN_PREFIX)
    return NP_ERR_PROTO;
  /* Only a frame we would accept gets stamped: the stamp must never turn
   * garbage into something that looks server-vouched. */
  np_sig_msg msg;
  if (np__sig_decode(buf + NP_SIG_LEN_PREFIX, body_len, &msg) != 0)
    return NP_ERR_PROTO;

  /* Find an existing OBSERVED (at most one: the decoder refuses two). */
  const uint8_t *body = buf + NP_SIG_LEN_PREFIX;
  size_t pos = NP_SIG_HEADER_LEN, old_at = 0, old_size = 0;
  while (pos < body_len) {
    size_t size = TLV_HEADER_LEN + pad4(rd16(body + pos + 2));
    if (rd16(body + pos) == NP_SIG_T_OBSERVED) {
      old_at = pos;
      old_size = size;
      break;
    }
    pos += size;
  }
  size_t add = TLV_HEADER_LEN + addr_wire_len(observed);
  size_t new_body = body_len - old_size + add;
  /* Check before touching anything, so a failed stamp leaves the frame as
   * it was. */
  if (new_body > NP_SIG_MAX_FRAME || NP_SIG_LEN_PREFIX + new_body > cap)
    return NP_ERR_NOSPACE;
  if (old_size) {
    uint8_t *at = buf + NP_SIG_LEN_PREFIX + old_at;
    memmove(at, at + old_size, body_len - old_at - old_size);
  }
  writer w = {.buf = buf, .cap = cap, .len = NP_SIG_LEN_PREFIX + body_len - old_size, .err = 0};
  put_addr(&w, NP_SIG_T_OBSERVED, observed);
  if (w.err)
    return w.err;
  wr32(buf, (uint32_t)(w.len - NP_SIG_LEN_PREFIX));
  return (int)w.len;
}

/* ------------------------------------------------------------------------ */
/* Channel authentication                                                    */
/* ------------------------------------------------------------------------ */

static const char channel_context[] = "natpunch channel v1";

int np__sig_kx_keypair(uint8_t pk[NP_SIG_KX_LEN], uint8_t sk[NP_SIG_KX_LEN]) {
  _Static_assert(NP_SIG_KX_LEN == crypto_kx_PUBLICKEYBYTES, "X25519 key size");
  _Static_assert(NP_SIG_KX_LEN == crypto_kx_SECRETKEYBYTES, "X25519 key size");
  if (!pk || !sk || sodium_init() < 0)
    return NP_ERR_SYS;
  return crypto_kx_keypair(pk, sk) == 0 ? 0 : NP_ERR_SYS;
}

int np__sig_channel_key(bool server, const uint8_t my_pk[NP_SIG_KX_LEN],
                       const uint8_t my_sk[NP_SIG_KX_LEN], const uint8_t peer_pk[NP_SIG_KX_LEN],
                       const uint8_t nonce[NP_SIG_NONCE_LEN],
                       uint8_t key[NP_SIG_CHANNEL_KEY_LEN]) {
  if (!my_pk || !my_sk || !peer_pk || !nonce || !key)
    return NP_ERR_INVAL;
  uint8_t rx[crypto_kx_SESSIONKEYBYTES], tx[crypto_kx_SESSIONKEYBYTES];
  /* crypto_kx hashes the shared secret with both public keys, so either
   * side's substituted key gives another result. The server's tx key is the
   * client's rx key: the direction server -> client. */
  int rc = server ? crypto_kx_server_session_keys(rx, tx, my_pk, my_sk, peer_pk)
                  : crypto_kx_client_session_keys(rx, tx, my_pk, my_sk, peer_pk);
  if (rc != 0) {
    sodium_memzero(rx, sizeof rx);
    sodium_memzero(tx, sizeof tx);
    return NP_ERR_AUTH;
  }
  const uint8_t *dir = server ? tx : rx;
  /* Bound to this connection's challenge too, and to its use. */
  crypto_generichash_state st;
  crypto_generichash_init(&st, dir, crypto_kx_SESSIONKEYBYTES, NP_SIG_CHANNEL_KEY_LEN);
  crypto_generichash_update(&st, (const uint8_t *)channel_context, sizeof channel_context);
  crypto_generichash_update(&st, nonce, NP_SIG_NONCE_LEN);
  crypto_generichash_final(&st, key, NP_SIG_CHANNEL_KEY_LEN);
  sodium_memzero(rx, sizeof rx);
  sodium_memzero(tx, sizeof tx);
  sodium_memzero(&st, sizeof st);
  return 0;
}

static void mac_compute(const uint8_t *body, size_t len, const uint8_t key[NP_SIG_CHANNEL_KEY_LEN],
                        uint64_t seq, uint8_t out[NP_SIG_MAC_LEN]) {
  uint8_t ctr[8];
  wr64(ctr, seq);
  crypto_generichash_state st;
  crypto_generichash_init(&st, key, NP_SIG_CHANNEL_KEY_LEN, NP_SIG_MAC_LEN);
  crypto_generichash_update(&st, ctr, sizeof ctr);
  crypto_generichash_update(&st, body, len);
  crypto_generichash_final(&st, out, NP_SIG_MAC_LEN);
}

int np__sig_append_mac(uint8_t *buf, size_t len, size_t cap,
                      const uint8_t key[NP_SIG_CHANNEL_KEY_LEN], uint64_t seq) {
  if (!buf || !key || len < NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN || len > cap)
    return NP_ERR_INVAL;
  if (rd32(buf) != len - NP_SIG_LEN_PREFIX)
    return NP_ERR_PROTO;
  if (is_signed_type(buf[NP_SIG_LEN_PREFIX + 1]))
    return NP_ERR_INVAL;
  size_t need = TLV_HEADER_LEN + NP_SIG_MAC_LEN;
  if (cap - len < need || len - NP_SIG_LEN_PREFIX + need > NP_SIG_MAX_FRAME)
    return NP_ERR_NOSPACE;
  uint8_t mac[NP_SIG_MAC_LEN];
  mac_compute(buf + NP_SIG_LEN_PREFIX, len - NP_SIG_LEN_PREFIX, key, seq, mac);
  wr16(buf + len, NP_SIG_T_MAC);
  wr16(buf + len + 2, NP_SIG_MAC_LEN);
  memcpy(buf + len + TLV_HEADER_LEN, mac, NP_SIG_MAC_LEN);
  len += need;
  wr32(buf, (uint32_t)(len - NP_SIG_LEN_PREFIX));
  return (int)len;
}

int np__sig_verify_mac(const uint8_t *body, size_t len, const np_sig_msg *msg,
                      const uint8_t key[NP_SIG_CHANNEL_KEY_LEN], uint64_t seq) {
  if (!body || !msg || !key || !msg->has_mac || msg->mac_len < NP_SIG_HEADER_LEN ||
      msg->mac_len > len)
    return NP_ERR_AUTH;
  uint8_t mac[NP_SIG_MAC_LEN];
  mac_compute(body, msg->mac_len, key, seq, mac);
  return sodium_memcmp(mac, msg->mac, NP_SIG_MAC_LEN) == 0 ? 0 : NP_ERR_AUTH;
}
