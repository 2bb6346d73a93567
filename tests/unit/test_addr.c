/* Address parsing and formatting: the CLI's first line of defence against bad
 * input, so the rejections matter as much as the acceptances. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "natpunch.h"
#include "net/addr.h"

#include <arpa/inet.h>
#include <string.h>

static void parse_ipv4(void **state) {
  (void)state;
  np_addr a;
  char buf[NP_ADDRSTRLEN];
  assert_int_equal(np_addr_parse("203.0.113.7:3478", 0, &a), 0);
  assert_int_equal(a.u.sa.sa_family, AF_INET);
  assert_int_equal(np_addr_port(&a), 3478);
  assert_string_equal(np_addr_format(&a, buf, sizeof buf), "203.0.113.7:3478");
  assert_int_equal(np_addr_len(&a), sizeof(struct sockaddr_in));
  /* bare IP takes the default port */
  assert_int_equal(np_addr_parse("198.51.100.1", 3478, &a), 0);
  assert_int_equal(np_addr_port(&a), 3478);
  assert_int_equal(np_addr_parse("198.51.100.1", 0, &a), NP_ERR_INVAL);
}

static void parse_ipv6(void **state) {
  (void)state;
  np_addr a;
  char buf[NP_ADDRSTRLEN];
  assert_int_equal(np_addr_parse("[2001:db8::1]:5349", 0, &a), 0);
  assert_int_equal(a.u.sa.sa_family, AF_INET6);
  assert_int_equal(np_addr_port(&a), 5349);
  assert_string_equal(np_addr_format(&a, buf, sizeof buf), "[2001:db8::1]:5349");
  assert_int_equal(np_addr_parse("2001:db8::2", 9, &a), 0);
  assert_int_equal(np_addr_port(&a), 9);
  assert_int_equal(np_addr_parse("[::1]", 7, &a), 0);
  assert_int_equal(np_addr_port(&a), 7);
  assert_int_equal(np_addr_len(&a), sizeof(struct sockaddr_in6));
}

static void rejects_bad_input(void **state) {
  (void)state;
  static const char *bad[] = {"",
                              "localhost:3478",
                              "1.2.3.4:",
                              "1.2.3.4:0",
                              "1.2.3.4:65536",
                              "1.2.3.4:-1",
                              "1.2.3.4:+80",
                              "1.2.3.4: 80",
                              "1.2.3.4:80x",
                              "1.2.3.4:080000",
                              "256.1.1.1:1",
                              "1.2.3:80",
                              "[1.2.3.4]:80",
                              "[::1:80",
                              "[::1]x",
                              "[::1]:",
                              ":80",
                              "a:b:c",
                              "1.2.3.4:80:90"};
  np_addr a;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (np_addr_parse(bad[i], 0, &a) != NP_ERR_INVAL)
      fail_msg("accepted '%s'", bad[i]);
  }
  assert_int_equal(np_addr_parse(NULL, 0, &a), NP_ERR_INVAL);
  char longer[200];
  memset(longer, '1', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  assert_int_equal(np_addr_parse(longer, 1, &a), NP_ERR_INVAL);
}

static void compare(void **state) {
  (void)state;
  np_addr a, b, c, d;
  assert_int_equal(np_addr_parse("203.0.113.1:1", 0, &a), 0);
  assert_int_equal(np_addr_parse("203.0.113.1:2", 0, &b), 0);
  assert_int_equal(np_addr_parse("203.0.113.2:1", 0, &c), 0);
  assert_int_equal(np_addr_parse("[::ffff:203.0.113.1]:1", 0, &d), 0);
  assert_true(np_addr_equal(&a, &a));
  assert_false(np_addr_equal(&a, &b));
  assert_true(np_addr_same_ip(&a, &b));
  assert_false(np_addr_same_ip(&a, &c));
  assert_false(np_addr_equal(&a, &d)); /* different families compare unequal... */
  np_addr e;                           /* ...until the mapped form is unwrapped */
  assert_int_equal(np__addr_from_sockaddr(&d.u.sa, sizeof d.u.in6, &e), 0);
  assert_true(np_addr_equal(&a, &e));
}

static void format_edges(void **state) {
  (void)state;
  np_addr unset;
  memset(&unset, 0, sizeof unset);
  char buf[NP_ADDRSTRLEN];
  assert_string_equal(np_addr_format(&unset, buf, sizeof buf), "-");
  assert_string_equal(np_addr_format(NULL, buf, sizeof buf), "-");
  assert_int_equal(np_addr_port(&unset), 0);
  assert_int_equal(np_addr_len(&unset), 0);
  np_addr a;
  assert_int_equal(np_addr_parse("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", 0, &a), 0);
  assert_string_equal(np_addr_format(&a, buf, sizeof buf),
                      "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
  char tiny[6];
  np_addr_format(&a, tiny, sizeof tiny);
  assert_int_equal(strlen(tiny), 5); /* truncated, still terminated */
  assert_true(np__addr_is_any(&(np_addr){.u.in4 = {.sin_family = AF_INET}}));
}

static void errors_have_text(void **state) {
  (void)state;
  assert_string_equal(np_strerror(NP_ERR_TIMEOUT), "timed out");
  assert_string_equal(np_err_name(NP_ERR_UNREACHABLE), "NP_ERR_UNREACHABLE");
  assert_string_equal(np_strerror(12345), "unknown error");
  assert_string_equal(np_nat_behavior_name(NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT),
                      "address-and-port-dependent");
  assert_string_equal(np_nat_behavior_name((enum np_nat_behavior)99), "unknown");
}

/* LAN space (where a peer behind a NAT lives) against its neighbours on
 * either side of each range's edge. */
static void private_space(void **state) {
  (void)state;
  const char *yes[] = {"10.0.0.1:1",   "10.255.255.255:1", "172.16.0.1:1",  "172.31.255.255:1",
                       "192.168.0.1:1", "100.64.0.1:1",     "100.127.255.1:1", "[fc00::1]:1",
                       "[fdff::1]:1"};
  const char *no[] = {"9.255.255.255:1", "11.0.0.1:1",   "172.15.255.255:1", "172.32.0.1:1",
                      "192.167.255.1:1", "192.169.0.1:1", "100.63.255.255:1", "100.128.0.1:1",
                      "169.254.1.1:1",   "203.0.113.1:1", "[fe80::1]:1",      "[2001:db8::1]:1"};
  np_addr a;
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    assert_int_equal(np_addr_parse(yes[i], 0, &a), 0);
    if (!np__addr_is_private(&a))
      fail_msg("%s should be private", yes[i]);
  }
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    assert_int_equal(np_addr_parse(no[i], 0, &a), 0);
    if (np__addr_is_private(&a))
      fail_msg("%s should not be private", no[i]);
  }
  memset(&a, 0, sizeof a);
  assert_false(np__addr_is_private(&a));
  assert_false(np__addr_is_private(NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(parse_ipv4),        cmocka_unit_test(parse_ipv6),
      cmocka_unit_test(rejects_bad_input), cmocka_unit_test(compare),
      cmocka_unit_test(format_edges),      cmocka_unit_test(errors_have_text),
      cmocka_unit_test(private_space),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
