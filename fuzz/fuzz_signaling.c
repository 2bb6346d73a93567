/*
 * libFuzzer harness for the signaling codec.
 *
 * The input is a frame as read from the stream: a 4-byte length prefix and
 * a body. np__sig_frame_check() must agree with the prefix, and the body
 * after the prefix is decoded whatever the prefix says. When decoding
 * succeeds, the decoded fields must respect every limit, signature checks
 * must answer 0 or NP_ERR_AUTH (never crash), the message must re-encode
 * to one that decodes to the same fields (unsigned types as they are,
 * signed types re-signed with the harness's own key, which must then
 * verify), and stamping OBSERVED must change nothing but OBSERVED. Any
 * broken invariant aborts, which libFuzzer (or the replay main) reports as
 * a crash.
 */
#include "fuzz_check.h"
#include "signaling/signaling.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FRAME_CAP (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME)

static const uint8_t fuzz_nonce[NP_SIG_NONCE_LEN] = {1, 2, 3, 4, 5, 6, 7, 8};

/* The harness's own key, made once: re-signing needs a secret key. */
static const np_identity *fuzz_identity(void) {
  static np_identity *id;
  if (!id)
    CHECK(np_identity_generate(&id) == 0);
  return id;
}

static bool addr_ok(const np_addr *a, bool may_be_unset) {
  sa_family_t f = a->u.sa.sa_family;
  return f == AF_INET || f == AF_INET6 || (may_be_unset && f == AF_UNSPEC);
}

static bool addr_same(const np_addr *a, const np_addr *b) {
  if (a->u.sa.sa_family != b->u.sa.sa_family)
    return false;
  return a->u.sa.sa_family == AF_UNSPEC || np_addr_equal(a, b);
}

/* Peer-to-peer types: signed by the sender, forwarded by the server.
 * Spelled out here rather than taken from the codec, so a new type the
 * harness does not know about fails check_fields() loudly. */
static bool is_peer(uint8_t type) {
  return type == NP_SIG_OFFER || type == NP_SIG_ANSWER || type == NP_SIG_READY;
}

static void check_fields(size_t len, const np_sig_msg *m) {
  CHECK(m->type >= NP_SIG_HELLO && m->type <= NP_SIG_READY);
  CHECK(np__sig_is_peer_type(m->type) == is_peer(m->type));
  CHECK(strcmp(np__sig_type_name(m->type), "?") != 0);
  const np_sig_candidates *c = &m->cand;
  CHECK(c->n_private >= 0 && c->n_private <= NP_SIG_MAX_PRIVATE);
  CHECK(c->n_mapped >= 0 && c->n_mapped <= NP_SIG_MAX_MAPPED);
  CHECK(m->n_allow >= 0 && m->n_allow <= NP_SIG_MAX_ALLOW);
  for (int i = 0; i < c->n_private; i++)
    CHECK(addr_ok(&c->private_addrs[i], false));
  for (int i = 0; i < c->n_mapped; i++)
    CHECK(addr_ok(&c->mapped[i], false));
  CHECK(addr_ok(&c->portmap, true) && addr_ok(&m->peer_seen, true) && addr_ok(&m->observed, true));
  if (c->have_nat)
    CHECK(c->mapping <= NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT &&
          c->filtering <= NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT);
  size_t tl = strnlen(m->error_text, sizeof m->error_text);
  CHECK(tl <= NP_SIG_MAX_TEXT);
  for (size_t i = 0; i < tl; i++)
    CHECK((uint8_t)m->error_text[i] >= 0x20 && (uint8_t)m->error_text[i] != 0x7F);
  if (m->error_code)
    CHECK(m->error_code >= 100 && m->error_code <= 999);
  else
    CHECK(tl == 0);

  bool is_signed = m->type == NP_SIG_REGISTER || is_peer(m->type);
  CHECK(m->has_signature == is_signed);
  switch (m->type) {
  case NP_SIG_HELLO:
    CHECK(m->has_pubkey);
    break;
  case NP_SIG_CHALLENGE:
    CHECK(m->has_nonce);
    break;
  case NP_SIG_REGISTER:
    CHECK(m->has_pubkey && m->signed_len == 0);
    break;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    CHECK(m->has_from && m->has_to && m->has_session && m->has_timestamp);
    CHECK(m->signed_len >= NP_SIG_HEADER_LEN && m->signed_len + 4 + NP_SIGNATURE_LEN <= len);
    break;
  case NP_SIG_ERROR:
    CHECK(m->error_code != 0);
    break;
  default:
    break;
  }
  if (!is_signed)
    CHECK(m->signed_len == 0);
}

static void check_same(const np_sig_msg *a, const np_sig_msg *b, bool with_observed) {
  CHECK(a->type == b->type);
  CHECK(a->has_pubkey == b->has_pubkey && a->has_nonce == b->has_nonce);
  CHECK(a->has_from == b->has_from && a->has_to == b->has_to);
  CHECK(a->has_session == b->has_session && a->has_timestamp == b->has_timestamp);
  CHECK(memcmp(a->pubkey, b->pubkey, NP_PUBKEY_LEN) == 0);
  CHECK(memcmp(a->nonce, b->nonce, NP_SIG_NONCE_LEN) == 0);
  CHECK(memcmp(a->from, b->from, NP_PUBKEY_LEN) == 0);
  CHECK(memcmp(a->to, b->to, NP_PUBKEY_LEN) == 0);
  CHECK(memcmp(a->session, b->session, NP_SIG_SESSION_LEN) == 0);
  CHECK(a->timestamp_ms == b->timestamp_ms);
  const np_sig_candidates *x = &a->cand, *y = &b->cand;
  CHECK(x->n_private == y->n_private && x->n_mapped == y->n_mapped);
  for (int i = 0; i < x->n_private; i++)
    CHECK(addr_same(&x->private_addrs[i], &y->private_addrs[i]));
  for (int i = 0; i < x->n_mapped; i++)
    CHECK(addr_same(&x->mapped[i], &y->mapped[i]));
  CHECK(x->have_delta == y->have_delta && x->delta == y->delta);
  CHECK(x->have_stride == y->have_stride && x->stride == y->stride &&
        x->nat_kind == y->nat_kind && x->n_views == y->n_views &&
        x->stride_base == y->stride_base);
  CHECK(x->have_nat == y->have_nat && x->mapping == y->mapping && x->filtering == y->filtering);
  CHECK(addr_same(&x->portmap, &y->portmap));
  CHECK(x->flags == y->flags);
  CHECK(addr_same(&a->peer_seen, &b->peer_seen));
  if (with_observed)
    CHECK(addr_same(&a->observed, &b->observed));
  CHECK(a->error_code == b->error_code && strcmp(a->error_text, b->error_text) == 0);
  CHECK(a->n_allow == b->n_allow);
  CHECK(a->n_allow == 0 || memcmp(a->allow, b->allow, (size_t)a->n_allow * NP_PUBKEY_LEN) == 0);
}

/* decode(encode(m)) == m. Signed types are re-signed by our key (FROM or
 * PUBKEY replaced by it), and must then verify. */
static void re_encode(const np_sig_msg *orig, size_t len) {
  static uint8_t out[FRAME_CAP];
  np_sig_msg m = *orig, r;
  const np_identity *id = NULL;
  if (is_peer(m.type)) {
    id = fuzz_identity();
    np_identity_public_key(id, m.from);
  } else if (m.type == NP_SIG_REGISTER) {
    id = fuzz_identity();
    np_identity_public_key(id, m.pubkey);
    /* REGISTER carries no nonce of its own when we send it. */
    m.has_nonce = true;
    memcpy(m.nonce, fuzz_nonce, NP_SIG_NONCE_LEN);
  }
  int n = np__sig_encode(&m, id, out, sizeof out);
  CHECK(n > NP_SIG_LEN_PREFIX);
  size_t body_len = 0;
  CHECK(np__sig_frame_check(out, (size_t)n, 0, &body_len) == 0);
  CHECK(body_len + NP_SIG_LEN_PREFIX == (size_t)n);
  /* Known TLVs keep their size and unknown ones are dropped; only error
   * text can shrink. A REGISTER we received with a NONCE loses it. */
  CHECK(body_len <= len);
  CHECK(np__sig_decode(out + NP_SIG_LEN_PREFIX, body_len, &r) == 0);
  if (m.type == NP_SIG_REGISTER) {
    CHECK(!r.has_nonce);
    CHECK(np__sig_verify_register(&r, fuzz_nonce) == 0);
    r.has_nonce = true;
    memcpy(r.nonce, fuzz_nonce, NP_SIG_NONCE_LEN);
  }
  if (is_peer(m.type))
    CHECK(np__sig_verify(out + NP_SIG_LEN_PREFIX, body_len, &r) == 0);
  check_same(&r, &m, true);
  /* One byte less room is never enough. */
  CHECK(np__sig_encode(&m, id, out, (size_t)n - 1) == NP_ERR_NOSPACE);

  /* A MAC appended to a server-made type verifies under its key and
   * counter only, and changes no field; peer-signed types refuse one. */
  static const uint8_t key[NP_SIG_CHANNEL_KEY_LEN] = {9, 8, 7};
  int k = np__sig_append_mac(out, (size_t)n, sizeof out, key, 5);
  if (is_peer(m.type) || m.type == NP_SIG_REGISTER) {
    CHECK(k == NP_ERR_INVAL);
    return;
  }
  if (k == NP_ERR_NOSPACE)
    return;
  CHECK(k == n + 4 + NP_SIG_MAC_LEN);
  np_sig_msg a;
  CHECK(np__sig_decode(out + NP_SIG_LEN_PREFIX, (size_t)k - NP_SIG_LEN_PREFIX, &a) == 0);
  CHECK(a.has_mac && a.mac_len == body_len);
  CHECK(np__sig_verify_mac(out + NP_SIG_LEN_PREFIX, (size_t)k - NP_SIG_LEN_PREFIX, &a, key, 5) ==
        0);
  CHECK(np__sig_verify_mac(out + NP_SIG_LEN_PREFIX, (size_t)k - NP_SIG_LEN_PREFIX, &a, key, 6) ==
        NP_ERR_AUTH);
  check_same(&a, &r, true);
}

/* Stamping OBSERVED changes nothing else, keeps the signature's verdict and
 * replaces rather than adds. */
static void stamp(const uint8_t *body, size_t len, const np_sig_msg *m) {
  static uint8_t frame[FRAME_CAP];
  frame[0] = (uint8_t)(len >> 24);
  frame[1] = (uint8_t)(len >> 16);
  frame[2] = (uint8_t)(len >> 8);
  frame[3] = (uint8_t)len;
  memcpy(frame + NP_SIG_LEN_PREFIX, body, len);
  np_addr obs;
  CHECK(np_addr_parse("[2001:db8::7]:4242", 0, &obs) == 0);
  int n = np__sig_stamp_observed(frame, NP_SIG_LEN_PREFIX + len, sizeof frame, &obs);
  if (n == NP_ERR_NOSPACE)
    return; /* a body at the size limit may have no room for it */
  CHECK(n > NP_SIG_LEN_PREFIX);
  np_sig_msg s;
  CHECK(np__sig_decode(frame + NP_SIG_LEN_PREFIX, (size_t)n - NP_SIG_LEN_PREFIX, &s) == 0);
  CHECK(addr_same(&s.observed, &obs));
  check_same(&s, m, false);
  if (is_peer(m->type)) {
    CHECK(s.signed_len == m->signed_len);
    CHECK(np__sig_verify(frame + NP_SIG_LEN_PREFIX, (size_t)n - NP_SIG_LEN_PREFIX, &s) ==
          np__sig_verify(body, len, m));
  }
  CHECK(np__sig_stamp_observed(frame, (size_t)n, sizeof frame, &obs) == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t body_len = 0;
  int frc = np__sig_frame_check(data, size, 0, &body_len);
  CHECK(frc == 0 || frc == NP_ERR_NOSPACE || frc == NP_ERR_PROTO);
  if (size < NP_SIG_LEN_PREFIX) {
    CHECK(frc == NP_ERR_NOSPACE);
    return 0;
  }
  if (frc == 0)
    CHECK(body_len >= NP_SIG_HEADER_LEN && body_len <= NP_SIG_MAX_FRAME &&
          body_len <= size - NP_SIG_LEN_PREFIX);

  const uint8_t *body = data + NP_SIG_LEN_PREFIX;
  size_t len = size - NP_SIG_LEN_PREFIX;
  np_sig_msg m;
  int rc = np__sig_decode(body, len, &m);
  if (rc != 0) {
    CHECK(rc == NP_ERR_PROTO || rc == NP_ERR_UNSUPPORTED);
    CHECK(m.type == 0 && !m.has_signature && m.signed_len == 0);
    return 0;
  }
  CHECK(len >= NP_SIG_HEADER_LEN && len <= NP_SIG_MAX_FRAME && len % 4 == 0);
  check_fields(len, &m);

  int v = np__sig_verify(body, len, &m);
  CHECK(v == 0 || v == NP_ERR_AUTH);
  if (!is_peer(m.type))
    CHECK(v == NP_ERR_AUTH);
  v = np__sig_verify_register(&m, fuzz_nonce);
  CHECK(v == 0 || v == NP_ERR_AUTH);
  if (m.type != NP_SIG_REGISTER)
    CHECK(v == NP_ERR_AUTH);

  v = np__sig_verify_mac(body, len, &m, fuzz_nonce, 0);
  CHECK(v == 0 || v == NP_ERR_AUTH);
  if (!m.has_mac)
    CHECK(v == NP_ERR_AUTH);
  else
    CHECK(!is_peer(m.type) && m.type != NP_SIG_REGISTER &&
          m.mac_len + 4 + NP_SIG_MAC_LEN == len);

  re_encode(&m, len);
  /* Only forwarded peer messages are stamped; a MAC'd frame never is (its
   * MAC must stay last). */
  if (!m.has_mac)
    stamp(body, len, &m);
  return 0;
}
