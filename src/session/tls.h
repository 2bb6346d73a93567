/*
 * TLS 1.3 for the QUIC session (GnuTLS through ngtcp2's crypto helper), with
 * the peers' identity keys as the only credentials.
 *
 * Each side presents a self-signed X.509 certificate made at runtime whose
 * key is its Ed25519 identity key; TLS 1.3's CertificateVerify proves it
 * holds the secret half. Each side requires the other's certificate and its
 * verify callback accepts it only when the certificate's public key is the
 * peer ID it called or accepted. No CA, names or dates are checked: the key
 * is the identity.
 */
#ifndef NP_SESSION_TLS_H
#define NP_SESSION_TLS_H

#include "natpunch.h"
#include "util/log.h"

#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <stdbool.h>
#include <stdint.h>

/* The ALPN both sides offer and require (without its length prefix). */
#define NP__SESSION_ALPN "natpunch/1"

/* What the verify callback concluded about the peer's certificate. */
enum np__tls_verdict {
  NP__TLS_PEER_UNCHECKED = 0, /* no certificate seen yet */
  NP__TLS_PEER_OK,            /* key equals the expected peer ID */
  NP__TLS_PEER_MISMATCH,      /* an Ed25519 key, but not the expected one */
  NP__TLS_PEER_BAD,           /* no certificate, not X.509, not Ed25519, unparsable */
};

typedef struct np__tls np__tls;

typedef struct np__tls_config {
  bool client;
  const np_identity *identity;
  uint8_t peer[NP_PUBKEY_LEN];
  /* ngtcp2's helper finds the connection through the pointer stored in the
   * GnuTLS session; the session module supplies the lookup. */
  ngtcp2_crypto_get_conn get_conn;
  void *get_conn_user;
  const np_logger *log; /* may be NULL; must outlive the np__tls */
} np__tls_config;

/* Builds the GnuTLS session for one QUIC connection: the certificate made
 * from cfg->identity, TLS 1.3 only with the cipher suites ngtcp2 supports,
 * ALPN NP__SESSION_ALPN required, a required peer certificate, the peer-key
 * verify callback, and ngtcp2's QUIC hooks. Returns 0, NP_ERR_INVAL,
 * NP_ERR_NOMEM or NP_ERR_SYS (a GnuTLS call failed; logged). */
int np__tls_new(const np__tls_config *cfg, np__tls **out);

/* The GnuTLS session, to be given to ngtcp2_conn_set_tls_native_handle. The
 * np__tls keeps ownership. */
gnutls_session_t np__tls_session(np__tls *t);

/* The conn_ref stored in the GnuTLS session (its user_data is
 * cfg->get_conn_user); ngtcp2's helper calls get_conn through it. */
ngtcp2_crypto_conn_ref *np__tls_conn_ref(np__tls *t);

/* Replaces the GnuTLS session by a fresh one (same certificate and peer),
 * for a server that dropped a connection attempt before it went anywhere.
 * Returns 0 or NP_ERR_SYS. */
int np__tls_reset(np__tls *t);

/* The verify callback's conclusion so far; NP__TLS_PEER_MISMATCH is the
 * case the session reports as "peer key mismatch". */
enum np__tls_verdict np__tls_verdict(const np__tls *t);

/* Frees the session, the credentials and the certificate. NULL is fine. */
void np__tls_free(np__tls *t);

#endif
