/*
 * TLS 1.3 for the QUIC session: the identity key as a runtime self-signed
 * certificate, and a verify callback that binds the handshake to the peer ID.
 *
 * Why an X.509 certificate and not an RFC 7250 raw public key: ngtcp2's
 * GnuTLS helper only wires the QUIC hooks and leaves credentials to us, so
 * both would work in principle, but raw public keys need GNUTLS_ENABLE_RAWPK
 * and certificate-type negotiation extensions on both sides, a less-trodden
 * path in GnuTLS 3.7 with TLS 1.3; an X.509 certificate is the path every
 * QUIC stack tests. The certificate carries nothing but the key: the
 * signature on it is not checked by anyone, dates and names are ignored.
 * What proves possession of the key is TLS 1.3's CertificateVerify, which
 * GnuTLS checks against the certificate's key before the callback runs.
 */
#include "session/tls.h"

#include "identity/identity_internal.h"

#include <gnutls/abstract.h>
#include <gnutls/x509.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct np__tls {
  /* First member: GnuTLS's session pointer points here, and ngtcp2's helper
   * reads it as an ngtcp2_crypto_conn_ref, while our callback reads it as
   * the np__tls. */
  ngtcp2_crypto_conn_ref conn_ref;
  bool client;
  uint8_t peer[NP_PUBKEY_LEN];
  enum np__tls_verdict verdict;
  const np_logger *log;
  gnutls_certificate_credentials_t cred;
  gnutls_session_t session;
};

/* TLS 1.3 only (QUIC requires it), the AEADs ngtcp2's GnuTLS helper
 * implements, Ed25519 signatures (our only key type), and no middlebox
 * compatibility mode (RFC 9001 §8.4 forbids it). */
static const char tls_priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:+AES-128-CCM:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:"
    "+GROUP-SECP384R1:+SIGN-EDDSA-ED25519:%DISABLE_TLS13_COMPAT_MODE";

/* Certificates made here have a fixed validity (2020-01-01 to the RFC 5280
 * "no expiry" date) so that no clock is read: dates are not checked. */
#define CERT_NOT_BEFORE ((time_t)1577836800)

static int fail(np__tls *t, const char *what, int rc) {
  NP_LOGE(t->log, "session tls: %s: %s", what, gnutls_strerror(rc));
  return NP_ERR_SYS;
}

/* Adds our identity as the credentials' only certificate. */
static int add_identity_cert(np__tls *t, const np_identity *id) {
  uint8_t pub[NP_PUBKEY_LEN], seed[32];
  np_identity_public_key(id, pub);
  np__identity_secret(id, seed);
  gnutls_datum_t x = {pub, sizeof pub}, k = {seed, sizeof seed};
  gnutls_x509_privkey_t key = NULL;
  gnutls_x509_crt_t crt = NULL;
  int err = NP_ERR_SYS, rc;
  const char *what = "x509_privkey_init";
  if ((rc = gnutls_x509_privkey_init(&key)) < 0)
    goto out;
  what = "x509_privkey_import_ecc_raw(ed25519)";
  if ((rc = gnutls_x509_privkey_import_ecc_raw(key, GNUTLS_ECC_CURVE_ED25519, &x, NULL, &k)) < 0)
    goto out;
  what = "x509_crt_init";
  if ((rc = gnutls_x509_crt_init(&crt)) < 0)
    goto out;
  /* A serial number from the key keeps certificates reproducible; nobody
   * tracks serials of these throwaway certificates. */
  uint8_t serial[8];
  memcpy(serial, pub, sizeof serial);
  serial[0] &= 0x7f; /* positive INTEGER */
  serial[0] |= 0x01; /* and no leading zero byte */
  what = "x509_crt fields";
  if ((rc = gnutls_x509_crt_set_version(crt, 3)) < 0 ||
      (rc = gnutls_x509_crt_set_serial(crt, serial, sizeof serial)) < 0 ||
      (rc = gnutls_x509_crt_set_activation_time(crt, CERT_NOT_BEFORE)) < 0 ||
      (rc = gnutls_x509_crt_set_expiration_time(crt, (time_t)-1)) < 0 ||
      (rc = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, "natpunch", 8)) <
          0 ||
      (rc = gnutls_x509_crt_set_key(crt, key)) < 0)
    goto out;
  what = "x509_crt_sign2";
  if ((rc = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA512, 0)) < 0)
    goto out;
  what = "certificate_set_x509_key";
  if ((rc = gnutls_certificate_set_x509_key(t->cred, &crt, 1, key)) < 0)
    goto out;
  err = 0;
out:
  if (err)
    fail(t, what, rc);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
  sodium_memzero(seed, sizeof seed);
  return err;
}

/* Extracts the Ed25519 public key of a DER certificate; false when it is
 * not one. */
static bool cert_ed25519_key(const gnutls_datum_t *der, uint8_t out[NP_PUBKEY_LEN]) {
  gnutls_x509_crt_t crt = NULL;
  gnutls_pubkey_t pk = NULL;
  gnutls_datum_t x = {NULL, 0};
  gnutls_ecc_curve_t curve = GNUTLS_ECC_CURVE_INVALID;
  bool ok = false;
  if (gnutls_x509_crt_init(&crt) < 0)
    return false;
  if (gnutls_x509_crt_import(crt, der, GNUTLS_X509_FMT_DER) < 0)
    goto out;
  if (gnutls_pubkey_init(&pk) < 0)
    goto out;
  if (gnutls_pubkey_import_x509(pk, crt, 0) < 0)
    goto out;
  if (gnutls_pubkey_get_pk_algorithm(pk, NULL) != GNUTLS_PK_EDDSA_ED25519)
    goto out;
  if (gnutls_pubkey_export_ecc_raw2(pk, &curve, &x, NULL, 0) < 0)
    goto out;
  if (curve != GNUTLS_ECC_CURVE_ED25519 || x.size != NP_PUBKEY_LEN)
    goto out;
  memcpy(out, x.data, NP_PUBKEY_LEN);
  ok = true;
out:
  gnutls_free(x.data);
  gnutls_pubkey_deinit(pk);
  gnutls_x509_crt_deinit(crt);
  return ok;
}

/* GnuTLS calls this once the peer's Certificate and CertificateVerify are
 * in; non-zero aborts the handshake with a bad_certificate alert, which
 * ngtcp2 turns into a CRYPTO_ERROR CONNECTION_CLOSE. */
static int verify_peer(gnutls_session_t session) {
  np__tls *t = gnutls_session_get_ptr(session);
  unsigned n = 0;
  const gnutls_datum_t *certs = gnutls_certificate_get_peers(session, &n);
  uint8_t key[NP_PUBKEY_LEN];
  if (!certs || n == 0 ||
      gnutls_certificate_type_get2(session, GNUTLS_CTYPE_PEERS) != GNUTLS_CRT_X509 ||
      !cert_ed25519_key(&certs[0], key)) {
    t->verdict = NP__TLS_PEER_BAD;
    NP_LOGW(t->log, "session tls: the %s presented no Ed25519 certificate",
            t->client ? "server" : "client");
    return -1;
  }
  if (sodium_memcmp(key, t->peer, NP_PUBKEY_LEN) != 0) {
    t->verdict = NP__TLS_PEER_MISMATCH;
    char want[NP_PEER_ID_LEN + 1], got[NP_PEER_ID_LEN + 1];
    np_peer_id_format(t->peer, want);
    np_peer_id_format(key, got);
    NP_LOGW(t->log, "session tls: peer key mismatch: expected %s, the %s has %s", want,
            t->client ? "server" : "client", got);
    return -1;
  }
  t->verdict = NP__TLS_PEER_OK;
  return 0;
}

/* Makes the GnuTLS session (over the credentials already built). */
static int session_init(np__tls *t) {
  int rc;
  /* No tickets: there is no resumption (each session authenticates the
   * identity keys afresh) and no 0-RTT. */
  unsigned flags = (t->client ? GNUTLS_CLIENT : GNUTLS_SERVER) | GNUTLS_NO_TICKETS;
  if ((rc = gnutls_init(&t->session, flags)) < 0)
    return fail(t, "gnutls_init", rc);
  rc = t->client ? ngtcp2_crypto_gnutls_configure_client_session(t->session)
                 : ngtcp2_crypto_gnutls_configure_server_session(t->session);
  if (rc != 0) {
    NP_LOGE(t->log, "session tls: ngtcp2_crypto_gnutls_configure_session failed");
    return NP_ERR_SYS;
  }
  if ((rc = gnutls_priority_set_direct(t->session, tls_priority, NULL)) < 0)
    return fail(t, "priority_set_direct", rc);
  if ((rc = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, t->cred)) < 0)
    return fail(t, "credentials_set", rc);
  gnutls_datum_t alpn = {(unsigned char *)NP__SESSION_ALPN, sizeof NP__SESSION_ALPN - 1};
  /* MANDATORY: a server that does not speak natpunch/1 fails the handshake
   * (no_application_protocol) instead of carrying on without ALPN. */
  if ((rc = gnutls_alpn_set_protocols(t->session, &alpn, 1, GNUTLS_ALPN_MANDATORY)) < 0)
    return fail(t, "alpn_set_protocols", rc);
  if (!t->client)
    gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
  gnutls_session_set_verify_function(t->session, verify_peer);
  gnutls_session_set_ptr(t->session, t);
  return 0;
}

int np__tls_new(const np__tls_config *cfg, np__tls **out) {
  if (!cfg || !out || !cfg->identity || !cfg->get_conn)
    return NP_ERR_INVAL;
  *out = NULL;
  np__tls *t = calloc(1, sizeof *t);
  if (!t)
    return NP_ERR_NOMEM;
  t->conn_ref.get_conn = cfg->get_conn;
  t->conn_ref.user_data = cfg->get_conn_user;
  t->client = cfg->client;
  memcpy(t->peer, cfg->peer, NP_PUBKEY_LEN);
  t->log = cfg->log;
  int err, rc;
  if ((rc = gnutls_certificate_allocate_credentials(&t->cred)) < 0) {
    err = rc == GNUTLS_E_MEMORY_ERROR ? NP_ERR_NOMEM : fail(t, "allocate_credentials", rc);
    goto fail;
  }
  if ((err = add_identity_cert(t, cfg->identity)))
    goto fail;
  if ((err = session_init(t)))
    goto fail;
  *out = t;
  return 0;
fail:
  np__tls_free(t);
  return err;
}

gnutls_session_t np__tls_session(np__tls *t) {
  return t->session;
}

ngtcp2_crypto_conn_ref *np__tls_conn_ref(np__tls *t) {
  return &t->conn_ref;
}

int np__tls_reset(np__tls *t) {
  if (t->session)
    gnutls_deinit(t->session);
  t->session = NULL;
  t->verdict = NP__TLS_PEER_UNCHECKED;
  return session_init(t);
}

enum np__tls_verdict np__tls_verdict(const np__tls *t) {
  return t ? t->verdict : NP__TLS_PEER_UNCHECKED;
}

void np__tls_free(np__tls *t) {
  if (!t)
    return;
  if (t->session)
    gnutls_deinit(t->session);
  if (t->cred)
    gnutls_certificate_free_credentials(t->cred);
  free(t);
}
