/*
 * Signaling codec tests: round trips of every message type, signatures
 * (every signed byte counts), OBSERVED stamping, framing at every split
 * point, and the decoder's refusals (truncation, version, reserved bits,
 * sizes, repeats, order, required fields), plus encoder overflow at every
 * capacity below what a message needs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "signaling/signaling.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_CAP (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME)

static np_identity *alice, *bob;
static uint8_t alice_pk[NP_PUBKEY_LEN], bob_pk[NP_PUBKEY_LEN];

static int group_setup(void **state) {
  (void)state;
  if (np_identity_generate(&alice) || np_identity_generate(&bob))
    return -1;
  np_identity_public_key(alice, alice_pk);
  np_identity_public_key(bob, bob_pk);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  np_identity_free(alice);
  np_identity_free(bob);
  return 0;
}

static np_addr addr(const char *text) {
  np_addr a;
  if (np_addr_parse(text, 0, &a) != 0)
    fail_msg("bad test address %s", text);
  return a;
}

static void fill(uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(seed + i * 7);
}

/* A message of the given type with every field set (addresses of the given
 * family), from alice to bob. */
static void full_msg(np_sig_msg *m, uint8_t type, bool v6) {
  memset(m, 0, sizeof *m);
  m->type = type;
  m->has_pubkey = m->has_nonce = m->has_from = m->has_to = m->has_session = true;
  m->has_timestamp = true;
  memcpy(m->pubkey, alice_pk, NP_PUBKEY_LEN);
  fill(m->nonce, NP_SIG_NONCE_LEN, 1);
  memcpy(m->from, alice_pk, NP_PUBKEY_LEN);
  memcpy(m->to, bob_pk, NP_PUBKEY_LEN);
  fill(m->session, NP_SIG_SESSION_LEN, 2);
  m->timestamp_ms = 0x0123456789abcdefULL;
  np_sig_candidates *c = &m->cand;
  c->n_private = NP_SIG_MAX_PRIVATE;
  for (int i = 0; i < c->n_private; i++) {
    char t[64];
    if (v6 && i % 2 == 0)
      snprintf(t, sizeof t, "[fd00::%d]:%d", i + 1, 40000 + i);
    else
      snprintf(t, sizeof t, "192.168.1.%d:%d", i + 1, 40000 + i);
    c->private_addrs[i] = addr(t);
  }
  c->n_mapped = NP_SIG_MAX_MAPPED;
  c->mapped[0] = addr(v6 ? "[2001:db8::10]:50000" : "203.0.113.10:50000");
  c->mapped[1] = addr(v6 ? "[2001:db8::10]:50007" : "203.0.113.10:50007");
  c->have_delta = true;
  c->delta = -7;
  c->have_stride = true;
  c->stride = -20011; /* negative and large: the full i32 and u16 ranges round trip */
  c->nat_kind = 2;
  c->n_views = 3;
  c->stride_base = 65000;
  c->have_nat = true;
  c->mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  c->filtering = NP_BEHAVIOR_ADDRESS_DEPENDENT;
  c->portmap = addr(v6 ? "[2001:db8::20]:6000" : "198.51.100.20:6000");
  c->has_kx = true;
  for (int i = 0; i < NP_SIG_KX_LEN; i++)
    c->kx[i] = (uint8_t)(0xA0 + i);
  c->flags = NP_SIG_CAND_FLAT | 0x80000000u; /* an unknown bit is carried too */
  m->peer_seen = addr(v6 ? "[2001:db8::30]:7000" : "198.51.100.30:7000");
  m->observed = addr(v6 ? "[2001:db8::40]:8000" : "198.51.100.40:8000");
  m->error_code = NP_SIG_E_UNKNOWN_PEER;
  snprintf(m->error_text, sizeof m->error_text, "no such peer: caf\xc3\xa9");
  m->n_allow = 3;
  memcpy(m->allow[0], bob_pk, NP_PUBKEY_LEN);
  fill(m->allow[1], NP_PUBKEY_LEN, 3);
  fill(m->allow[2], NP_PUBKEY_LEN, 4);
}

/* The identity a type needs for encoding. */
static const np_identity *signer(uint8_t type) {
  return (np__sig_is_peer_type(type) || type == NP_SIG_REGISTER) ? alice : NULL;
}

static int encode(const np_sig_msg *m, uint8_t *buf) {
  int n = np__sig_encode(m, signer(m->type), buf, BUF_CAP);
  assert_true(n > NP_SIG_LEN_PREFIX);
  return n;
}

/* Frame -> decoded message, asserting the frame is whole and valid. */
static void decode_frame(const uint8_t *buf, int n, np_sig_msg *d) {
  size_t body_len = 0;
  assert_int_equal(np__sig_frame_check(buf, (size_t)n, 0, &body_len), 0);
  assert_int_equal(body_len + NP_SIG_LEN_PREFIX, (size_t)n);
  assert_int_equal(np__sig_decode(buf + NP_SIG_LEN_PREFIX, body_len, d), 0);
}

static void assert_addr_equal(const np_addr *a, const np_addr *b) {
  assert_int_equal(a->u.sa.sa_family, b->u.sa.sa_family);
  if (a->u.sa.sa_family != AF_UNSPEC)
    assert_true(np_addr_equal(a, b));
}

static void assert_same_fields(const np_sig_msg *d, const np_sig_msg *m) {
  assert_int_equal(d->type, m->type);
  bool reg = m->type == NP_SIG_REGISTER;
  assert_int_equal(d->has_pubkey, m->has_pubkey || reg);
  assert_memory_equal(d->pubkey, reg ? alice_pk : m->pubkey, NP_PUBKEY_LEN);
  /* REGISTER signs the nonce but does not carry it. */
  assert_int_equal(d->has_nonce, m->has_nonce && !reg);
  if (!reg)
    assert_memory_equal(d->nonce, m->nonce, NP_SIG_NONCE_LEN);
  assert_int_equal(d->has_from, m->has_from);
  assert_memory_equal(d->from, m->from, NP_PUBKEY_LEN);
  assert_int_equal(d->has_to, m->has_to);
  assert_memory_equal(d->to, m->to, NP_PUBKEY_LEN);
  assert_int_equal(d->has_session, m->has_session);
  assert_memory_equal(d->session, m->session, NP_SIG_SESSION_LEN);
  assert_int_equal(d->has_timestamp, m->has_timestamp);
  assert_true(d->timestamp_ms == m->timestamp_ms);
  assert_int_equal(d->cand.n_private, m->cand.n_private);
  for (int i = 0; i < m->cand.n_private; i++)
    assert_addr_equal(&d->cand.private_addrs[i], &m->cand.private_addrs[i]);
  assert_int_equal(d->cand.n_mapped, m->cand.n_mapped);
  for (int i = 0; i < m->cand.n_mapped; i++)
    assert_addr_equal(&d->cand.mapped[i], &m->cand.mapped[i]);
  assert_int_equal(d->cand.have_delta, m->cand.have_delta);
  assert_int_equal(d->cand.delta, m->cand.delta);
  assert_int_equal(d->cand.have_stride, m->cand.have_stride);
  assert_int_equal(d->cand.stride, m->cand.stride);
  assert_int_equal(d->cand.nat_kind, m->cand.nat_kind);
  assert_int_equal(d->cand.n_views, m->cand.n_views);
  assert_int_equal(d->cand.stride_base, m->cand.stride_base);
  assert_int_equal(d->cand.have_nat, m->cand.have_nat);
  assert_int_equal(d->cand.mapping, m->cand.mapping);
  assert_int_equal(d->cand.filtering, m->cand.filtering);
  assert_addr_equal(&d->cand.portmap, &m->cand.portmap);
  assert_int_equal(d->cand.has_kx, m->cand.has_kx);
  if (m->cand.has_kx)
    assert_memory_equal(d->cand.kx, m->cand.kx, NP_SIG_KX_LEN);
  assert_int_equal(d->cand.flags, m->cand.flags);
  assert_addr_equal(&d->peer_seen, &m->peer_seen);
  assert_addr_equal(&d->observed, &m->observed);
  assert_int_equal(d->error_code, m->error_code);
  assert_string_equal(d->error_text, m->error_text);
  assert_int_equal(d->n_allow, m->n_allow);
  for (int i = 0; i < m->n_allow; i++)
    assert_memory_equal(d->allow[i], m->allow[i], NP_PUBKEY_LEN);
}

static void test_round_trip_every_type(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  for (int v6 = 0; v6 <= 1; v6++) {
    for (uint8_t t = NP_SIG_HELLO; t <= NP_SIG_READY; t++) {
      np_sig_msg m, d;
      full_msg(&m, t, v6);
      int n = encode(&m, buf);
      decode_frame(buf, n, &d);
      assert_same_fields(&d, &m);
      bool is_signed = np__sig_is_peer_type(t) || t == NP_SIG_REGISTER;
      assert_int_equal(d.has_signature, is_signed);
      if (np__sig_is_peer_type(t)) {
        assert_true(d.signed_len > NP_SIG_HEADER_LEN);
        assert_int_equal(np__sig_verify(buf + NP_SIG_LEN_PREFIX, (size_t)n - 4, &d), 0);
      } else {
        assert_int_equal(d.signed_len, 0);
        assert_int_equal(np__sig_verify(buf + NP_SIG_LEN_PREFIX, (size_t)n - 4, &d), NP_ERR_AUTH);
      }
      if (t == NP_SIG_REGISTER)
        assert_int_equal(np__sig_verify_register(&d, m.nonce), 0);
    }
  }
}

/* The smallest message of each type: only what the type requires. */
static void minimal_msg(np_sig_msg *m, uint8_t type) {
  np_sig_msg full;
  full_msg(&full, type, false);
  memset(m, 0, sizeof *m);
  m->type = type;
  switch (type) {
  case NP_SIG_HELLO:
    m->has_pubkey = true;
    memcpy(m->pubkey, full.pubkey, NP_PUBKEY_LEN);
    break;
  case NP_SIG_CHALLENGE:
  case NP_SIG_REGISTER:
    m->has_nonce = true;
    memcpy(m->nonce, full.nonce, NP_SIG_NONCE_LEN);
    break;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    m->has_from = m->has_to = m->has_session = m->has_timestamp = true;
    memcpy(m->from, full.from, NP_PUBKEY_LEN);
    memcpy(m->to, full.to, NP_PUBKEY_LEN);
    memcpy(m->session, full.session, NP_SIG_SESSION_LEN);
    m->timestamp_ms = 1;
    break;
  case NP_SIG_ERROR:
    m->error_code = NP_SIG_E_BAD_REQUEST;
    break;
  default:
    break;
  }
}

static void test_minimal_round_trip(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  for (uint8_t t = NP_SIG_HELLO; t <= NP_SIG_READY; t++) {
    np_sig_msg m, d;
    minimal_msg(&m, t);
    int n = encode(&m, buf);
    decode_frame(buf, n, &d);
    assert_same_fields(&d, &m);
    assert_string_equal(d.error_text, "");
  }
  /* PING is the header alone. */
  np_sig_msg m;
  minimal_msg(&m, NP_SIG_PING);
  assert_int_equal(encode(&m, buf), NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN);
  static const uint8_t ping[] = {0, 0, 0, 4, NP_SIG_VERSION, NP_SIG_PING, 0, 0};
  assert_memory_equal(buf, ping, sizeof ping);
}

/* Flips every bit of every signed body byte and of the signature: the
 * result must not both decode and verify. */
static void test_offer_signature_every_byte(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  for (uint8_t t = NP_SIG_OFFER; t <= NP_SIG_ANSWER; t++) {
    np_sig_msg m, d;
    full_msg(&m, t, t == NP_SIG_ANSWER);
    m.observed.u.sa.sa_family = AF_UNSPEC;
    int n = encode(&m, buf);
    decode_frame(buf, n, &d);
    uint8_t *body = buf + NP_SIG_LEN_PREFIX;
    size_t len = (size_t)n - NP_SIG_LEN_PREFIX;
    assert_int_equal(np__sig_verify(body, len, &d), 0);
    assert_int_equal(len, d.signed_len + 4 + NP_SIGNATURE_LEN);
    for (size_t i = 0; i < len; i++) {
      for (int bit = 0; bit < 8; bit++) {
        body[i] ^= (uint8_t)(1u << bit);
        np_sig_msg x;
        int rc = np__sig_decode(body, len, &x);
        if (rc == 0 && np__sig_verify(body, len, &x) == 0)
          fail_msg("%s: flipping bit %d of byte %zu still verifies", np__sig_type_name(t), bit, i);
        body[i] ^= (uint8_t)(1u << bit);
      }
    }
    /* Another key. */
    memcpy(d.from, bob_pk, NP_PUBKEY_LEN);
    assert_int_equal(np__sig_verify(body, len, &d), NP_ERR_AUTH);
    /* Only the signed bytes: a shorter signed_len fails. */
    decode_frame(buf, n, &d);
    d.signed_len--;
    assert_int_equal(np__sig_verify(body, len, &d), NP_ERR_AUTH);
    /* signed_len beyond the body. */
    decode_frame(buf, n, &d);
    assert_int_equal(np__sig_verify(body, d.signed_len - 1, &d), NP_ERR_AUTH);
  }
}

static void test_offer_signed_by_other_key(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  np_sig_msg m, d;
  full_msg(&m, NP_SIG_OFFER, false);
  /* The identity must be FROM's. */
  assert_int_equal(np__sig_encode(&m, bob, buf, BUF_CAP), NP_ERR_INVAL);
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  /* Bob signs a message claiming to be from Bob, then FROM is rewritten to
   * Alice (a forgery attempt): it decodes, but does not verify. */
  memcpy(m.from, bob_pk, NP_PUBKEY_LEN);
  int n = np__sig_encode(&m, bob, buf, BUF_CAP);
  assert_true(n > 0);
  decode_frame(buf, n, &d);
  uint8_t *body = buf + NP_SIG_LEN_PREFIX;
  assert_int_equal(np__sig_verify(body, (size_t)n - 4, &d), 0);
  uint8_t *from = memmem(body, (size_t)n - 4, bob_pk, NP_PUBKEY_LEN);
  assert_non_null(from);
  memcpy(from, alice_pk, NP_PUBKEY_LEN);
  decode_frame(buf, n, &d);
  assert_memory_equal(d.from, alice_pk, NP_PUBKEY_LEN);
  assert_int_equal(np__sig_verify(body, (size_t)n - 4, &d), NP_ERR_AUTH);
}

static void test_register_signature(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  np_sig_msg m, d;
  full_msg(&m, NP_SIG_REGISTER, false);
  int n = encode(&m, buf);
  decode_frame(buf, n, &d);
  assert_int_equal(np__sig_verify_register(&d, m.nonce), 0);
  /* Any other nonce. */
  for (int i = 0; i < NP_SIG_NONCE_LEN; i++) {
    uint8_t other[NP_SIG_NONCE_LEN];
    memcpy(other, m.nonce, sizeof other);
    other[i] ^= 0x10;
    assert_int_equal(np__sig_verify_register(&d, other), NP_ERR_AUTH);
  }
  /* The allow list is covered: dropping or changing an entry fails. */
  np_sig_msg x = d;
  x.n_allow--;
  assert_int_equal(np__sig_verify_register(&x, m.nonce), NP_ERR_AUTH);
  x = d;
  x.allow[1][5] ^= 1;
  assert_int_equal(np__sig_verify_register(&x, m.nonce), NP_ERR_AUTH);
  /* The key is covered: bob cannot claim alice's signature. */
  x = d;
  memcpy(x.pubkey, bob_pk, NP_PUBKEY_LEN);
  assert_int_equal(np__sig_verify_register(&x, m.nonce), NP_ERR_AUTH);
  x = d;
  x.signature[63] ^= 0x80;
  assert_int_equal(np__sig_verify_register(&x, m.nonce), NP_ERR_AUTH);
  /* Not a REGISTER. */
  x = d;
  x.type = NP_SIG_HELLO;
  assert_int_equal(np__sig_verify_register(&x, m.nonce), NP_ERR_AUTH);
  /* A REGISTER's signature is not an OFFER signature. */
  assert_int_equal(np__sig_verify(buf + 4, (size_t)n - 4, &d), NP_ERR_AUTH);

  /* The payload: context, nonce, key, allow list; exact size needed. */
  uint8_t payload[8192];
  int plen =
      np__sig_register_payload(m.nonce, alice_pk, m.allow, m.n_allow, payload, sizeof payload);
  assert_true(plen > 0);
  assert_int_equal(plen, (int)(sizeof "natpunch register v1" + 32 + 32 + 3 * 32));
  assert_memory_equal(payload, "natpunch register v1", sizeof "natpunch register v1");
  assert_int_equal(
      np__sig_register_payload(m.nonce, alice_pk, m.allow, m.n_allow, payload, (size_t)plen - 1),
      NP_ERR_NOSPACE);
  assert_int_equal(
      np__sig_register_payload(m.nonce, alice_pk, m.allow, NP_SIG_MAX_ALLOW + 1, payload, 99999),
      NP_ERR_INVAL);
  /* Encoding REGISTER needs the identity and the nonce, and a PUBKEY in msg
   * must be the identity's. */
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  memcpy(m.pubkey, bob_pk, NP_PUBKEY_LEN);
  assert_int_equal(np__sig_encode(&m, alice, buf, BUF_CAP), NP_ERR_INVAL);
  m.has_pubkey = false;
  assert_true(np__sig_encode(&m, alice, buf, BUF_CAP) > 0);
  m.has_nonce = false;
  assert_int_equal(np__sig_encode(&m, alice, buf, BUF_CAP), NP_ERR_INVAL);
}

/* Counts TLVs of type t in a frame. */
static int count_tlv(const uint8_t *frame, int n, uint16_t t) {
  int count = 0;
  for (int pos = NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN; pos + 4 <= n;) {
    uint16_t type = (uint16_t)(frame[pos] << 8 | frame[pos + 1]);
    int vlen = frame[pos + 2] << 8 | frame[pos + 3];
    count += type == t;
    pos += 4 + ((vlen + 3) & ~3);
  }
  return count;
}

static void test_stamp_observed(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  np_sig_msg m, d;
  full_msg(&m, NP_SIG_OFFER, false);
  m.observed.u.sa.sa_family = AF_UNSPEC;
  int n = encode(&m, buf);
  int unstamped = n;

  np_addr v4 = addr("198.51.100.99:4444"), v6 = addr("[2001:db8::99]:6666");
  int n1 = np__sig_stamp_observed(buf, (size_t)n, BUF_CAP, &v4);
  assert_int_equal(n1, n + 4 + 8);
  decode_frame(buf, n1, &d);
  assert_addr_equal(&d.observed, &v4);
  assert_int_equal(np__sig_verify(buf + 4, (size_t)n1 - 4, &d), 0);

  /* Replacing: still one OBSERVED, the new one, signature intact. */
  int n2 = np__sig_stamp_observed(buf, (size_t)n1, BUF_CAP, &v6);
  assert_int_equal(n2, n + 4 + 20);
  decode_frame(buf, n2, &d);
  assert_addr_equal(&d.observed, &v6);
  assert_int_equal(count_tlv(buf, n2, NP_SIG_T_OBSERVED), 1);
  assert_int_equal(np__sig_verify(buf + 4, (size_t)n2 - 4, &d), 0);
  int n3 = np__sig_stamp_observed(buf, (size_t)n2, BUF_CAP, &v4);
  assert_int_equal(n3, n1);
  decode_frame(buf, n3, &d);
  assert_addr_equal(&d.observed, &v4);
  assert_int_equal(count_tlv(buf, n3, NP_SIG_T_OBSERVED), 1);
  assert_int_equal(np__sig_verify(buf + 4, (size_t)n3 - 4, &d), 0);
  /* Everything else is as sent. */
  m.observed = v4;
  assert_same_fields(&d, &m);

  /* Not enough room: NOSPACE and the frame untouched. */
  uint8_t copy[BUF_CAP];
  memcpy(copy, buf, (size_t)n3);
  assert_int_equal(np__sig_stamp_observed(buf, (size_t)n3, (size_t)n3 + 11, &v6), NP_ERR_NOSPACE);
  assert_memory_equal(copy, buf, (size_t)n3);
  /* Exactly enough room. */
  assert_int_equal(np__sig_stamp_observed(buf, (size_t)n3, (size_t)n3 + 12, &v6), n + 24);

  /* Unsigned types whose OBSERVED sits before other TLVs are stamped too. */
  full_msg(&m, NP_SIG_CHALLENGE, true);
  n = encode(&m, buf);
  n1 = np__sig_stamp_observed(buf, (size_t)n, BUF_CAP, &v4);
  assert_int_equal(n1, n - 20 + 8);
  decode_frame(buf, n1, &d);
  assert_addr_equal(&d.observed, &v4);
  m.observed = v4;
  assert_same_fields(&d, &m);

  /* Malformed frames are not stamped. */
  full_msg(&m, NP_SIG_OFFER, false);
  n = encode(&m, buf);
  buf[n - 30] ^= 1; /* inside the signature: still decodes; stamping allowed */
  assert_true(np__sig_stamp_observed(buf, (size_t)n, BUF_CAP, &v4) > 0);
  n = encode(&m, buf);
  buf[4] = 2; /* version */
  assert_int_equal(np__sig_stamp_observed(buf, (size_t)n, BUF_CAP, &v4), NP_ERR_PROTO);
  n = encode(&m, buf);
  assert_int_equal(np__sig_stamp_observed(buf, (size_t)n - 1, BUF_CAP, &v4), NP_ERR_PROTO);
  assert_int_equal(np__sig_stamp_observed(buf, 3, BUF_CAP, &v4), NP_ERR_PROTO);
  np_addr unset;
  memset(&unset, 0, sizeof unset);
  assert_int_equal(np__sig_stamp_observed(buf, (size_t)n, BUF_CAP, &unset), NP_ERR_INVAL);
  (void)unstamped;
}

/* A hand-built unsigned body whose OBSERVED sits between other TLVs (a
 * peer or another server may order them so): stamping removes it from the
 * middle and appends the new one. */
static void test_stamp_observed_in_the_middle(void **state) {
  (void)state;
  static uint8_t frame[BUF_CAP];
  static const uint8_t v4[8] = {4, 0, 0x1f, 0x90, 10, 0, 0, 1};
  static const uint8_t delta[4] = {0, 0, 0, 9};
  uint8_t *b = frame + NP_SIG_LEN_PREFIX;
  size_t len = 0;
  b[len++] = NP_SIG_VERSION;
  b[len++] = NP_SIG_REGISTERED;
  b[len++] = 0;
  b[len++] = 0;
  const struct {
    uint16_t t;
    const uint8_t *v;
    size_t n;
  } tlvs[] = {{NP_SIG_T_PRIVATE, v4, 8}, {NP_SIG_T_OBSERVED, v4, 8}, {NP_SIG_T_DELTA, delta, 4}};
  for (size_t i = 0; i < 3; i++) {
    b[len++] = (uint8_t)(tlvs[i].t >> 8);
    b[len++] = (uint8_t)tlvs[i].t;
    b[len++] = 0;
    b[len++] = (uint8_t)tlvs[i].n;
    memcpy(b + len, tlvs[i].v, tlvs[i].n);
    len += tlvs[i].n;
  }
  uint32_t be = htonl((uint32_t)len);
  memcpy(frame, &be, 4);
  np_addr v6 = addr("[2001:db8::5]:5555"), p = addr("10.0.0.1:8080");
  int n = np__sig_stamp_observed(frame, 4 + len, BUF_CAP, &v6);
  assert_int_equal(n, (int)(4 + len - 12 + 24));
  np_sig_msg d;
  decode_frame(frame, n, &d);
  assert_addr_equal(&d.observed, &v6);
  assert_int_equal(d.cand.n_private, 1);
  assert_addr_equal(&d.cand.private_addrs[0], &p);
  assert_true(d.cand.have_delta);
  assert_int_equal(d.cand.delta, 9);
  assert_int_equal(count_tlv(frame, n, NP_SIG_T_OBSERVED), 1);
  /* The new OBSERVED is last. */
  assert_int_equal(frame[n - 24 + 1], NP_SIG_T_OBSERVED);
}

static void test_framing(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP + 8];
  np_sig_msg m;
  full_msg(&m, NP_SIG_OFFER, true);
  int n = encode(&m, buf);
  size_t body_len = 12345;
  for (int avail = 0; avail < n; avail++) {
    assert_int_equal(np__sig_frame_check(buf, (size_t)avail, 0, &body_len), NP_ERR_NOSPACE);
    assert_int_equal(body_len, 12345);
  }
  assert_int_equal(np__sig_frame_check(buf, (size_t)n, 0, &body_len), 0);
  assert_int_equal(body_len, (size_t)n - 4);
  /* The start of the next frame after it does not matter. */
  assert_int_equal(np__sig_frame_check(buf, (size_t)n + 3, 0, &body_len), 0);
  assert_int_equal(body_len, (size_t)n - 4);
  /* A configured maximum below the body refuses it, from the prefix alone. */
  assert_int_equal(np__sig_frame_check(buf, 4, (size_t)n - 5, &body_len), NP_ERR_PROTO);
  assert_int_equal(np__sig_frame_check(buf, 4, (size_t)n - 4, &body_len), NP_ERR_NOSPACE);

  /* Announced sizes around the protocol maximum and below a header. */
  uint8_t hdr[4];
  struct {
    uint32_t len;
    size_t max;
    int rc;
  } cases[] = {
      {NP_SIG_MAX_FRAME, 0, NP_ERR_NOSPACE},
      {NP_SIG_MAX_FRAME + 1, 0, NP_ERR_PROTO},
      {NP_SIG_MAX_FRAME + 1, NP_SIG_MAX_FRAME * 4, NP_ERR_PROTO}, /* capped */
      {0xffffffffu, 0, NP_ERR_PROTO},
      {0x80000000u, 0, NP_ERR_PROTO},
      {100, 99, NP_ERR_PROTO},
      {100, 100, NP_ERR_NOSPACE},
      {3, 0, NP_ERR_PROTO},
      {0, 0, NP_ERR_PROTO},
      {4, 0, NP_ERR_NOSPACE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint32_t be = htonl(cases[i].len);
    memcpy(hdr, &be, 4);
    assert_int_equal(np__sig_frame_check(hdr, 4, cases[i].max, &body_len), cases[i].rc);
  }
}

/* Offsets (from the body start) at which a TLV ends, for a frame. */
static bool at_tlv_boundary(const uint8_t *frame, int n, size_t body_off) {
  int pos = NP_SIG_LEN_PREFIX + NP_SIG_HEADER_LEN;
  if ((size_t)pos - NP_SIG_LEN_PREFIX == body_off)
    return true;
  while (pos + 4 <= n) {
    int vlen = frame[pos + 2] << 8 | frame[pos + 3];
    pos += 4 + ((vlen + 3) & ~3);
    if ((size_t)pos - NP_SIG_LEN_PREFIX == body_off)
      return true;
  }
  return false;
}

static void test_every_truncation(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  for (int v6 = 0; v6 <= 1; v6++) {
    for (uint8_t t = NP_SIG_HELLO; t <= NP_SIG_READY; t++) {
      for (int minimal = 0; minimal <= 1; minimal++) {
        np_sig_msg m, d;
        if (minimal)
          minimal_msg(&m, t);
        else
          full_msg(&m, t, v6);
        bool is_signed = np__sig_is_peer_type(t) || t == NP_SIG_REGISTER;
        if (is_signed)
          m.observed.u.sa.sa_family = AF_UNSPEC; /* SIGNATURE is then last */
        int n = encode(&m, buf);
        size_t len = (size_t)n - NP_SIG_LEN_PREFIX;
        for (size_t cut = 0; cut < len; cut++) {
          /* An exact-size copy, so a read past the end is an ASan error. */
          uint8_t *body = malloc(cut ? cut : 1);
          assert_non_null(body);
          memcpy(body, buf + NP_SIG_LEN_PREFIX, cut);
          int rc = np__sig_decode(body, cut, &d);
          free(body);
          /* Only a cut between TLVs can leave a well-formed message, and
           * never one that lost its signature. */
          if (rc == 0 && !(at_tlv_boundary(buf, n, cut) && !is_signed))
            fail_msg("%s %s v6=%d: body cut to %zu of %zu accepted", np__sig_type_name(t),
                     minimal ? "minimal" : "full", v6, cut, len);
          if (rc != 0) {
            assert_int_equal(rc, NP_ERR_PROTO);
            assert_int_equal(d.type, 0); /* nothing half-decoded */
          }
        }
      }
    }
  }
}

/* ---- hand-built bodies for the refusal tests ---------------------------- */

typedef struct body {
  uint8_t b[NP_SIG_MAX_FRAME + 64];
  size_t len;
} body;

static void body_init(body *x, uint8_t type) {
  x->b[0] = NP_SIG_VERSION;
  x->b[1] = type;
  x->b[2] = x->b[3] = 0;
  x->len = 4;
}

static void tlv(body *x, uint16_t t, const void *v, size_t vlen) {
  x->b[x->len++] = (uint8_t)(t >> 8);
  x->b[x->len++] = (uint8_t)t;
  x->b[x->len++] = (uint8_t)(vlen >> 8);
  x->b[x->len++] = (uint8_t)vlen;
  if (vlen)
    memcpy(x->b + x->len, v, vlen);
  x->len += vlen;
  while (x->len % 4)
    x->b[x->len++] = 0;
}

static void tlv_fill(body *x, uint16_t t, size_t vlen) {
  uint8_t v[256];
  assert_true(vlen <= sizeof v);
  fill(v, vlen, (uint8_t)t);
  tlv(x, t, v, vlen);
}

static const uint8_t v4_wire[8] = {4, 0, 0x1f, 0x90, 10, 0, 0, 1};
static const uint8_t v6_wire[20] = {6, 0, 0x1f, 0x90, 0x20, 0x01, 0x0d, 0xb8, [19] = 1};

/* Signs everything so far (as np__sig_encode does) and appends SIGNATURE. */
static void sign(body *x, const np_identity *id) {
  uint8_t sig[NP_SIGNATURE_LEN];
  np_identity_sign(id, x->b, x->len, sig);
  tlv(x, NP_SIG_T_SIGNATURE, sig, sizeof sig);
}

/* OFFER fields before the signature. */
static void offer_fields(body *x) {
  uint8_t session[NP_SIG_SESSION_LEN] = {1}, ts[8] = {0, 0, 1};
  tlv(x, NP_SIG_T_FROM, alice_pk, NP_PUBKEY_LEN);
  tlv(x, NP_SIG_T_TO, bob_pk, NP_PUBKEY_LEN);
  tlv(x, NP_SIG_T_SESSION, session, sizeof session);
  tlv(x, NP_SIG_T_TIMESTAMP, ts, sizeof ts);
}

static int dec(const body *x) {
  np_sig_msg m;
  return np__sig_decode(x->b, x->len, &m);
}

static void test_header_checks(void **state) {
  (void)state;
  body x;
  body_init(&x, NP_SIG_PING);
  assert_int_equal(dec(&x), 0);
  for (int v = 0; v < 256; v++) {
    x.b[0] = (uint8_t)v;
    assert_int_equal(dec(&x), v == NP_SIG_VERSION ? 0 : NP_ERR_UNSUPPORTED);
  }
  x.b[0] = NP_SIG_VERSION;
  /* The version wins over every other fault, so the answer can be 505. */
  x.b[0] = 2;
  x.b[1] = 0;
  x.b[2] = 0xff;
  assert_int_equal(dec(&x), NP_ERR_UNSUPPORTED);
  body_init(&x, NP_SIG_PING);
  x.b[2] = 1;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  x.b[2] = 0;
  x.b[3] = 0x80;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  static const uint8_t bad_types[] = {0, NP_SIG_READY + 1, 0x7f, 0xff};
  for (size_t i = 0; i < sizeof bad_types; i++) {
    body_init(&x, bad_types[i]);
    assert_int_equal(dec(&x), NP_ERR_PROTO);
  }
  /* Too short for a header. */
  np_sig_msg m;
  static const uint8_t three[] = {NP_SIG_VERSION, NP_SIG_PING, 0};
  assert_int_equal(np__sig_decode(three, 3, &m), NP_ERR_PROTO);
  assert_int_equal(np__sig_decode(NULL, 0, &m), NP_ERR_PROTO);
  assert_int_equal(np__sig_decode(three, 3, NULL), NP_ERR_INVAL);
  /* Type names. */
  assert_string_equal(np__sig_type_name(NP_SIG_OFFER), "OFFER");
  assert_string_equal(np__sig_type_name(NP_SIG_REGISTERED), "REGISTERED");
  assert_string_equal(np__sig_type_name(NP_SIG_PONG), "PONG");
  assert_string_equal(np__sig_type_name(NP_SIG_READY), "READY");
  assert_string_equal(np__sig_type_name(0), "?");
  assert_string_equal(np__sig_type_name(NP_SIG_READY + 1), "?");
}

static void test_required_fields(void **state) {
  (void)state;
  body x;
  uint8_t k[32] = {9}, sig[64] = {0};
  body_init(&x, NP_SIG_HELLO);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  tlv(&x, NP_SIG_T_PUBKEY, k, 32);
  assert_int_equal(dec(&x), 0);

  body_init(&x, NP_SIG_CHALLENGE);
  tlv(&x, NP_SIG_T_PUBKEY, k, 32);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  tlv(&x, NP_SIG_T_NONCE, k, 32);
  assert_int_equal(dec(&x), 0);

  /* REGISTER: PUBKEY and SIGNATURE (validity is the verifier's job). */
  body_init(&x, NP_SIG_REGISTER);
  tlv(&x, NP_SIG_T_SIGNATURE, sig, 64);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  body_init(&x, NP_SIG_REGISTER);
  tlv(&x, NP_SIG_T_PUBKEY, k, 32);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  tlv(&x, NP_SIG_T_SIGNATURE, sig, 64);
  assert_int_equal(dec(&x), 0);

  /* OFFER/ANSWER: leave out each of the five in turn. */
  for (uint8_t t = NP_SIG_OFFER; t <= NP_SIG_ANSWER; t++) {
    for (int skip = 0; skip <= 5; skip++) {
      body_init(&x, t);
      uint8_t session[16] = {1}, ts[8] = {0};
      if (skip != 0)
        tlv(&x, NP_SIG_T_FROM, alice_pk, 32);
      if (skip != 1)
        tlv(&x, NP_SIG_T_TO, bob_pk, 32);
      if (skip != 2)
        tlv(&x, NP_SIG_T_SESSION, session, 16);
      if (skip != 3)
        tlv(&x, NP_SIG_T_TIMESTAMP, ts, 8);
      if (skip != 4)
        sign(&x, alice);
      assert_int_equal(dec(&x), skip == 5 ? 0 : NP_ERR_PROTO);
    }
  }

  body_init(&x, NP_SIG_ERROR);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  static const uint8_t err[] = {0x01, 0x94, 'n', 'o'}; /* 404 "no" */
  tlv(&x, NP_SIG_T_ERROR, err, sizeof err);
  assert_int_equal(dec(&x), 0);

  static const uint8_t none_needed[] = {NP_SIG_REGISTERED, NP_SIG_PING, NP_SIG_PONG};
  for (size_t i = 0; i < sizeof none_needed; i++) {
    body_init(&x, none_needed[i]);
    assert_int_equal(dec(&x), 0);
  }
}

static void test_fixed_sizes(void **state) {
  (void)state;
  static const struct {
    uint16_t t;
    size_t size;
  } fixed[] = {
      {NP_SIG_T_PUBKEY, 32}, {NP_SIG_T_NONCE, 32},   {NP_SIG_T_FROM, 32},
      {NP_SIG_T_TO, 32},     {NP_SIG_T_SESSION, 16}, {NP_SIG_T_TIMESTAMP, 8},
      {NP_SIG_T_DELTA, 4},   {NP_SIG_T_NAT, 2},      {NP_SIG_T_ALLOW, 32},
      {NP_SIG_T_FLAGS, 4},
  };
  /* STRIDE: exactly 8 bytes (a valid kind and view count). */
  for (size_t size = 0; size <= 16; size++) {
    body x0;
    body_init(&x0, NP_SIG_PING);
    uint8_t v[16] = {0, 0, 0, 7, 2, 3, 0x4e, 0x20};
    tlv(&x0, NP_SIG_T_STRIDE, v, size);
    assert_int_equal(dec(&x0), size == 8 ? 0 : NP_ERR_PROTO);
  }
  body x;
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    for (size_t size = 0; size <= fixed[i].size + 8; size++) {
      body_init(&x, NP_SIG_PING);
      uint8_t v[64] = {0}; /* zeros: valid NAT behaviours too */
      tlv(&x, fixed[i].t, v, size);
      int rc = dec(&x);
      if (rc != (size == fixed[i].size ? 0 : NP_ERR_PROTO))
        fail_msg("TLV 0x%04x of %zu bytes gave %d", fixed[i].t, size, rc);
    }
  }
  /* SIGNATURE: exactly 64 bytes. */
  for (size_t size = 60; size <= 68; size++) {
    body_init(&x, NP_SIG_REGISTER);
    tlv_fill(&x, NP_SIG_T_PUBKEY, 32);
    tlv_fill(&x, NP_SIG_T_SIGNATURE, size);
    assert_int_equal(dec(&x), size == 64 ? 0 : NP_ERR_PROTO);
  }
  /* ERROR: at least the code. */
  for (size_t size = 0; size < 2; size++) {
    body_init(&x, NP_SIG_ERROR);
    static const uint8_t err[2] = {0x01, 0x90};
    tlv(&x, NP_SIG_T_ERROR, err, size);
    assert_int_equal(dec(&x), NP_ERR_PROTO);
  }
}

static void test_addresses(void **state) {
  (void)state;
  static const uint16_t addr_tlvs[] = {NP_SIG_T_PRIVATE, NP_SIG_T_MAPPED, NP_SIG_T_PORTMAP,
                                       NP_SIG_T_PEER_SEEN, NP_SIG_T_OBSERVED};
  body x;
  np_sig_msg m;
  for (size_t i = 0; i < sizeof addr_tlvs / sizeof addr_tlvs[0]; i++) {
    uint16_t t = addr_tlvs[i];
    body_init(&x, NP_SIG_PING);
    tlv(&x, t, v4_wire, sizeof v4_wire);
    assert_int_equal(dec(&x), 0);
    body_init(&x, NP_SIG_PING);
    tlv(&x, t, v6_wire, sizeof v6_wire);
    assert_int_equal(dec(&x), 0);
    uint8_t v[24];
    /* Family and length must agree. */
    memcpy(v, v4_wire, 8);
    memset(v + 8, 0, 16);
    for (size_t len = 0; len <= 24; len++) {
      body_init(&x, NP_SIG_PING);
      tlv(&x, t, v, len);
      assert_int_equal(dec(&x), len == 8 ? 0 : NP_ERR_PROTO);
    }
    memcpy(v, v6_wire, 20);
    for (size_t len = 0; len <= 24; len++) {
      body_init(&x, NP_SIG_PING);
      tlv(&x, t, v, len);
      assert_int_equal(dec(&x), len == 20 ? 0 : NP_ERR_PROTO);
    }
    /* Unknown families and a non-zero reserved byte. */
    static const uint8_t families[] = {0, 1, 2, 5, 7, AF_INET, AF_INET6, 0xff};
    for (size_t f = 0; f < sizeof families; f++) {
      if (families[f] == 4 || families[f] == 6)
        continue;
      memcpy(v, v4_wire, 8);
      v[0] = families[f];
      body_init(&x, NP_SIG_PING);
      tlv(&x, t, v, 8);
      assert_int_equal(dec(&x), NP_ERR_PROTO);
      body_init(&x, NP_SIG_PING);
      tlv(&x, t, v, 20);
      assert_int_equal(dec(&x), NP_ERR_PROTO);
    }
    memcpy(v, v4_wire, 8);
    v[1] = 1;
    body_init(&x, NP_SIG_PING);
    tlv(&x, t, v, 8);
    assert_int_equal(dec(&x), NP_ERR_PROTO);
  }
  /* Values land where they belong. */
  body_init(&x, NP_SIG_PING);
  tlv(&x, NP_SIG_T_PEER_SEEN, v6_wire, sizeof v6_wire);
  tlv(&x, NP_SIG_T_PORTMAP, v4_wire, sizeof v4_wire);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  np_addr e6 = addr("[2001:db8::1]:8080"), e4 = addr("10.0.0.1:8080");
  assert_addr_equal(&m.peer_seen, &e6);
  assert_addr_equal(&m.cand.portmap, &e4);
  assert_int_equal(m.observed.u.sa.sa_family, AF_UNSPEC);
}

static void test_repeat_limits(void **state) {
  (void)state;
  body x;
  np_sig_msg m;
  static const struct {
    uint16_t t;
    int max;
  } rep[] = {{NP_SIG_T_PRIVATE, NP_SIG_MAX_PRIVATE},
             {NP_SIG_T_MAPPED, NP_SIG_MAX_MAPPED},
             {NP_SIG_T_ALLOW, NP_SIG_MAX_ALLOW}};
  for (size_t i = 0; i < sizeof rep / sizeof rep[0]; i++) {
    for (int count = 0; count <= rep[i].max + 1; count++) {
      body_init(&x, NP_SIG_PING);
      for (int j = 0; j < count; j++) {
        if (rep[i].t == NP_SIG_T_ALLOW)
          tlv_fill(&x, rep[i].t, 32);
        else
          tlv(&x, rep[i].t, j % 2 ? v6_wire : v4_wire, j % 2 ? 20 : 8);
      }
      int rc = np__sig_decode(x.b, x.len, &m);
      assert_int_equal(rc, count <= rep[i].max ? 0 : NP_ERR_PROTO);
      if (rc == 0) {
        int got = rep[i].t == NP_SIG_T_PRIVATE  ? m.cand.n_private
                  : rep[i].t == NP_SIG_T_MAPPED ? m.cand.n_mapped
                                                : m.n_allow;
        assert_int_equal(got, count);
      }
    }
  }
  /* Every other known TLV may appear once. */
  static const uint16_t once[] = {NP_SIG_T_PUBKEY,    NP_SIG_T_NONCE,    NP_SIG_T_FROM,
                                  NP_SIG_T_TO,        NP_SIG_T_SESSION,  NP_SIG_T_TIMESTAMP,
                                  NP_SIG_T_DELTA,     NP_SIG_T_NAT,      NP_SIG_T_PORTMAP,
                                  NP_SIG_T_PEER_SEEN, NP_SIG_T_OBSERVED, NP_SIG_T_ERROR,
                                  NP_SIG_T_STRIDE};
  for (size_t i = 0; i < sizeof once / sizeof once[0]; i++) {
    uint16_t t = once[i];
    uint8_t v[32] = {0};
    size_t size = t == NP_SIG_T_SESSION     ? 16
                  : t == NP_SIG_T_TIMESTAMP ? 8
                  : t == NP_SIG_T_DELTA     ? 4
                  : t == NP_SIG_T_NAT       ? 2
                  : t == NP_SIG_T_STRIDE    ? 8
                  : t == NP_SIG_T_ERROR     ? 5
                                            : 32;
    if (t == NP_SIG_T_ERROR) {
      v[0] = 0x01;
      v[1] = 0x90;
    }
    if (t == NP_SIG_T_STRIDE) {
      v[4] = 2;
      v[5] = 3;
    }
    body_init(&x, NP_SIG_PING);
    if (t == NP_SIG_T_PORTMAP || t == NP_SIG_T_PEER_SEEN || t == NP_SIG_T_OBSERVED)
      tlv(&x, t, v4_wire, 8);
    else
      tlv(&x, t, v, size);
    assert_int_equal(dec(&x), 0);
    if (t == NP_SIG_T_PORTMAP || t == NP_SIG_T_PEER_SEEN || t == NP_SIG_T_OBSERVED)
      tlv(&x, t, v6_wire, 20);
    else
      tlv(&x, t, v, size);
    if (dec(&x) != NP_ERR_PROTO)
      fail_msg("TLV 0x%04x twice accepted", t);
  }
}

static void test_signature_placement(void **state) {
  (void)state;
  body x;
  np_sig_msg m;
  /* A valid OFFER, then an OBSERVED after it: fine, still verifies. */
  body_init(&x, NP_SIG_OFFER);
  offer_fields(&x);
  sign(&x, alice);
  assert_int_equal(dec(&x), 0);
  tlv(&x, NP_SIG_T_OBSERVED, v4_wire, 8);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(np__sig_verify(x.b, x.len, &m), 0);
  /* Anything else after the signature is refused: known, unknown, a
   * second OBSERVED, a second SIGNATURE. */
  static const uint16_t after[] = {NP_SIG_T_PRIVATE,  NP_SIG_T_PEER_SEEN, 0x7777, 0,
                                   NP_SIG_T_OBSERVED, NP_SIG_T_SIGNATURE};
  for (size_t i = 0; i < sizeof after / sizeof after[0]; i++) {
    body_init(&x, NP_SIG_OFFER);
    offer_fields(&x);
    sign(&x, alice);
    if (after[i] == NP_SIG_T_OBSERVED)
      tlv(&x, NP_SIG_T_OBSERVED, v4_wire, 8);
    if (after[i] == NP_SIG_T_SIGNATURE)
      tlv_fill(&x, NP_SIG_T_SIGNATURE, 64);
    else
      tlv(&x, after[i], v4_wire, 8);
    if (dec(&x) != NP_ERR_PROTO)
      fail_msg("TLV 0x%04x after SIGNATURE accepted", after[i]);
  }
  /* OBSERVED before the signature would be the sender's claim. */
  body_init(&x, NP_SIG_OFFER);
  offer_fields(&x);
  tlv(&x, NP_SIG_T_OBSERVED, v4_wire, 8);
  sign(&x, alice);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  body_init(&x, NP_SIG_REGISTER);
  tlv(&x, NP_SIG_T_PUBKEY, alice_pk, 32);
  tlv(&x, NP_SIG_T_OBSERVED, v4_wire, 8);
  tlv_fill(&x, NP_SIG_T_SIGNATURE, 64);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  /* SIGNATURE in a type that is not signed. */
  static const uint8_t unsigned_types[] = {NP_SIG_HELLO, NP_SIG_CHALLENGE, NP_SIG_REGISTERED,
                                           NP_SIG_ERROR, NP_SIG_PING,      NP_SIG_PONG};
  for (size_t i = 0; i < sizeof unsigned_types; i++) {
    body_init(&x, unsigned_types[i]);
    tlv_fill(&x, NP_SIG_T_PUBKEY, 32);
    tlv_fill(&x, NP_SIG_T_NONCE, 32);
    static const uint8_t err[2] = {0x01, 0x90};
    tlv(&x, NP_SIG_T_ERROR, err, 2);
    assert_int_equal(dec(&x), 0);
    tlv_fill(&x, NP_SIG_T_SIGNATURE, 64);
    assert_int_equal(dec(&x), NP_ERR_PROTO);
  }
}

static void test_unknown_tlv_skipped(void **state) {
  (void)state;
  body x;
  np_sig_msg m;
  body_init(&x, NP_SIG_PING);
  tlv_fill(&x, 0x1234, 5);
  tlv_fill(&x, 0, 0);
  tlv_fill(&x, 0xffff, 200);
  tlv_fill(&x, 0x001f, 3); /* the top of the seen mask, unassigned */
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(m.type, NP_SIG_PING);
  /* Unknown TLVs may repeat. */
  tlv_fill(&x, 0x1234, 5);
  assert_int_equal(dec(&x), 0);
  /* Inside a signed OFFER they are covered by the signature. */
  body_init(&x, NP_SIG_OFFER);
  offer_fields(&x);
  tlv_fill(&x, 0x4321, 7);
  sign(&x, alice);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(np__sig_verify(x.b, x.len, &m), 0);
  x.b[x.len - 68 - 4] ^= 1; /* a byte of the unknown TLV's value */
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(np__sig_verify(x.b, x.len, &m), NP_ERR_AUTH);
}

static void test_padding(void **state) {
  (void)state;
  body x;
  body_init(&x, NP_SIG_PING);
  tlv_fill(&x, 0x1234, 5);
  assert_int_equal(dec(&x), 0);
  for (size_t i = 1; i <= 3; i++) {
    x.b[x.len - i] = 1; /* non-zero padding */
    assert_int_equal(dec(&x), NP_ERR_PROTO);
    x.b[x.len - i] = 0;
  }
  /* The last TLV's padding must be there. */
  x.len -= 1;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  /* A TLV header cut short, and a length running past the body. */
  body_init(&x, NP_SIG_PING);
  x.b[4] = 0x12;
  x.b[5] = 0x34;
  x.len = 6;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  body_init(&x, NP_SIG_PING);
  tlv_fill(&x, 0x1234, 8);
  x.b[7] = 12;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  x.b[6] = 0xff;
  x.b[7] = 0xff;
  assert_int_equal(dec(&x), NP_ERR_PROTO);
  /* A body over the protocol maximum. */
  body_init(&x, NP_SIG_PING);
  while (x.len + 4 + 252 <= NP_SIG_MAX_FRAME)
    tlv_fill(&x, 0x1234, 252);
  tlv_fill(&x, 0x1234, NP_SIG_MAX_FRAME - x.len - 4);
  assert_int_equal(x.len, NP_SIG_MAX_FRAME);
  assert_int_equal(dec(&x), 0);
  tlv_fill(&x, 0x1234, 0);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
}

static void test_values(void **state) {
  (void)state;
  body x;
  np_sig_msg m;
  /* NAT behaviours beyond the enum. */
  for (int a = 0; a <= 5; a++) {
    for (int b = 0; b <= 5; b++) {
      uint8_t v[2] = {(uint8_t)a, (uint8_t)b};
      body_init(&x, NP_SIG_PING);
      tlv(&x, NP_SIG_T_NAT, v, 2);
      assert_int_equal(dec(&x), (a <= 3 && b <= 3) ? 0 : NP_ERR_PROTO);
    }
  }
  /* STRIDE: i32 stride, kind 1..3, views 2..8, u16 base. */
  for (int kind = 0; kind <= 4; kind++) {
    for (int views = 0; views <= 9; views++) {
      uint8_t v[8] = {0xff, 0xff, 0xb1, 0xd5, (uint8_t)kind, (uint8_t)views, 0xfd, 0xe8};
      body_init(&x, NP_SIG_PING);
      tlv(&x, NP_SIG_T_STRIDE, v, 8);
      bool ok = kind >= 1 && kind <= 3 && views >= 2 && views <= 8;
      assert_int_equal(np__sig_decode(x.b, x.len, &m), ok ? 0 : NP_ERR_PROTO);
      if (ok) {
        assert_true(m.cand.have_stride);
        assert_int_equal(m.cand.stride, -20011);
        assert_int_equal(m.cand.nat_kind, kind);
        assert_int_equal(m.cand.n_views, views);
        assert_int_equal(m.cand.stride_base, 65000);
      }
    }
  }
  /* DELTA is signed; TIMESTAMP is 64-bit big-endian. */
  static const uint8_t delta[4] = {0xff, 0xff, 0xff, 0xfe};
  static const uint8_t ts[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  body_init(&x, NP_SIG_PING);
  tlv(&x, NP_SIG_T_DELTA, delta, 4);
  tlv(&x, NP_SIG_T_TIMESTAMP, ts, 8);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(m.cand.delta, -2);
  assert_true(m.timestamp_ms == 0x0102030405060708ULL);
  /* Error codes outside 100..999. */
  static const uint16_t codes[] = {0, 99, 100, 404, 999, 1000, 0xffff};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    uint8_t v[2] = {(uint8_t)(codes[i] >> 8), (uint8_t)codes[i]};
    body_init(&x, NP_SIG_ERROR);
    tlv(&x, NP_SIG_T_ERROR, v, 2);
    assert_int_equal(dec(&x), codes[i] >= 100 && codes[i] <= 999 ? 0 : NP_ERR_PROTO);
  }
}

static void test_error_text(void **state) {
  (void)state;
  body x;
  np_sig_msg m;
  /* Control characters (NUL, ESC, DEL, newline) become '?'. */
  static const uint8_t v[] = {0x01, 0x93, 'a', 0, 'b', 0x1b, '[', '2', 'J', 0x7f, '\n', 'z'};
  body_init(&x, NP_SIG_ERROR);
  tlv(&x, NP_SIG_T_ERROR, v, sizeof v);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(m.error_code, 403);
  assert_string_equal(m.error_text, "a?b?[2J??z");

  /* Long text is cut to NP_SIG_MAX_TEXT bytes... */
  uint8_t big[2 + 400];
  big[0] = 0x01;
  big[1] = 0x90;
  memset(big + 2, 'x', 400);
  body_init(&x, NP_SIG_ERROR);
  tlv(&x, NP_SIG_T_ERROR, big, sizeof big);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(strlen(m.error_text), NP_SIG_MAX_TEXT);
  /* ...and back to a character boundary: a 2-byte character straddling the
   * cut is dropped whole. */
  /* 'x' then "\xc3\xa9" (e acute) repeated: text byte 200 is the second
   * byte of a character. */
  big[2] = 'x';
  for (int i = 1; i + 1 < 400; i += 2) {
    big[2 + i] = 0xc3;
    big[3 + i] = 0xa9;
  }
  body_init(&x, NP_SIG_ERROR);
  tlv(&x, NP_SIG_T_ERROR, big, sizeof big);
  assert_int_equal(np__sig_decode(x.b, x.len, &m), 0);
  assert_int_equal(strlen(m.error_text), NP_SIG_MAX_TEXT - 1);
  assert_int_equal((uint8_t)m.error_text[NP_SIG_MAX_TEXT - 2], 0xa9);

  /* The encoder applies the same rules, so the server never sends control
   * characters either. */
  static uint8_t buf[BUF_CAP];
  np_sig_msg e, d;
  memset(&e, 0, sizeof e);
  e.type = NP_SIG_ERROR;
  e.error_code = NP_SIG_E_RATE;
  snprintf(e.error_text, sizeof e.error_text, "slow\tdown\x1b");
  int n = encode(&e, buf);
  decode_frame(buf, n, &d);
  assert_string_equal(d.error_text, "slow?down?");
  /* A message about a session carries it with the error. */
  e.has_session = true;
  fill(e.session, 16, 9);
  n = encode(&e, buf);
  decode_frame(buf, n, &d);
  assert_true(d.has_session);
  assert_memory_equal(d.session, e.session, 16);
}

static void test_encode_overflow_every_capacity(void **state) {
  (void)state;
  static uint8_t ref[BUF_CAP];
  for (uint8_t t = NP_SIG_HELLO; t <= NP_SIG_READY; t++) {
    for (int minimal = 0; minimal <= 1; minimal++) {
      np_sig_msg m;
      if (minimal)
        minimal_msg(&m, t);
      else
        full_msg(&m, t, true);
      int need = encode(&m, ref);
      for (int cap = 0; cap < need; cap++) {
        uint8_t *b = malloc(cap ? (size_t)cap : 1); /* exact: ASan sees overruns */
        assert_non_null(b);
        int rc = np__sig_encode(&m, signer(t), b, (size_t)cap);
        free(b);
        if (rc != NP_ERR_NOSPACE)
          fail_msg("%s: capacity %d of %d gave %d", np__sig_type_name(t), cap, need, rc);
      }
      uint8_t *b = malloc((size_t)need);
      assert_non_null(b);
      assert_int_equal(np__sig_encode(&m, signer(t), b, (size_t)need), need);
      /* Signatures are deterministic (Ed25519), so the bytes match. */
      assert_memory_equal(b, ref, (size_t)need);
      free(b);
    }
  }
}

/* FLAGS (0x0014) is written only when a bit is set, so a message without
 * flags is byte for byte what it was before the TLV existed (older peers
 * see nothing new), and a set FLAT bit survives the round trip. */
static void test_flags_only_when_set(void **state) {
  (void)state;
  np_sig_msg m, d;
  minimal_msg(&m, NP_SIG_OFFER);
  uint8_t plain[BUF_CAP], flagged[BUF_CAP];
  int n0 = encode(&m, plain);
  decode_frame(plain, n0, &d);
  assert_int_equal(d.cand.flags, 0);
  m.cand.flags = NP_SIG_CAND_FLAT;
  int n1 = encode(&m, flagged);
  assert_int_equal(n1, n0 + 8); /* one TLV: header + u32 */
  decode_frame(flagged, n1, &d);
  assert_int_equal(d.cand.flags, NP_SIG_CAND_FLAT);
  assert_int_equal(np__sig_verify(flagged + NP_SIG_LEN_PREFIX, (size_t)n1 - NP_SIG_LEN_PREFIX, &d),
                   0);
  /* Given twice it is ambiguous: refused like any repeated fixed TLV. */
  body x;
  body_init(&x, NP_SIG_PING);
  uint8_t v[4] = {0, 0, 0, 1};
  tlv(&x, NP_SIG_T_FLAGS, v, sizeof v);
  assert_int_equal(dec(&x), 0);
  tlv(&x, NP_SIG_T_FLAGS, v, sizeof v);
  assert_int_equal(dec(&x), NP_ERR_PROTO);
}

static void test_encode_invalid(void **state) {
  (void)state;
  static uint8_t buf[BUF_CAP];
  np_sig_msg m;
  for (uint8_t t = 0; t <= NP_SIG_READY + 1; t += NP_SIG_READY + 1) {
    full_msg(&m, t, false);
    assert_int_equal(np__sig_encode(&m, alice, buf, BUF_CAP), NP_ERR_INVAL);
  }
  full_msg(&m, NP_SIG_PING, false);
  m.cand.n_private = NP_SIG_MAX_PRIVATE + 1;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  m.cand.n_private = -1;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.n_mapped = NP_SIG_MAX_MAPPED + 1;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.n_allow = NP_SIG_MAX_ALLOW + 1;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.private_addrs[2].u.sa.sa_family = AF_UNSPEC; /* a hole in the list */
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.portmap.u.sa.sa_family = AF_UNIX;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.mapping = 4;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.nat_kind = 0; /* "not classified" is said by leaving STRIDE out */
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.cand.n_views = 9;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  full_msg(&m, NP_SIG_PING, false);
  m.error_code = 42;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  /* Required fields missing. */
  minimal_msg(&m, NP_SIG_HELLO);
  m.has_pubkey = false;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  minimal_msg(&m, NP_SIG_CHALLENGE);
  m.has_nonce = false;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  minimal_msg(&m, NP_SIG_ERROR);
  m.error_code = 0;
  assert_int_equal(np__sig_encode(&m, NULL, buf, BUF_CAP), NP_ERR_INVAL);
  for (int skip = 0; skip < 4; skip++) {
    minimal_msg(&m, NP_SIG_ANSWER);
    bool *flags[] = {&m.has_from, &m.has_to, &m.has_session, &m.has_timestamp};
    *flags[skip] = false;
    assert_int_equal(np__sig_encode(&m, alice, buf, BUF_CAP), NP_ERR_INVAL);
  }
  assert_int_equal(np__sig_encode(NULL, alice, buf, BUF_CAP), NP_ERR_INVAL);
  minimal_msg(&m, NP_SIG_PING);
  assert_int_equal(np__sig_encode(&m, NULL, NULL, 64), NP_ERR_INVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_every_type),
      cmocka_unit_test(test_minimal_round_trip),
      cmocka_unit_test(test_offer_signature_every_byte),
      cmocka_unit_test(test_offer_signed_by_other_key),
      cmocka_unit_test(test_register_signature),
      cmocka_unit_test(test_stamp_observed),
      cmocka_unit_test(test_stamp_observed_in_the_middle),
      cmocka_unit_test(test_framing),
      cmocka_unit_test(test_every_truncation),
      cmocka_unit_test(test_header_checks),
      cmocka_unit_test(test_required_fields),
      cmocka_unit_test(test_fixed_sizes),
      cmocka_unit_test(test_addresses),
      cmocka_unit_test(test_repeat_limits),
      cmocka_unit_test(test_signature_placement),
      cmocka_unit_test(test_unknown_tlv_skipped),
      cmocka_unit_test(test_padding),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_error_text),
      cmocka_unit_test(test_encode_overflow_every_capacity),
      cmocka_unit_test(test_encode_invalid),
      cmocka_unit_test(test_flags_only_when_set),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
