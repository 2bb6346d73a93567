/*
 * The smallest useful libnatpunch program: ask two discovery servers what
 * this host's NAT does.
 *
 *   cc probe.c $(pkg-config --cflags --libs natpunch) -o probe
 *   ./probe 203.0.113.1:3478 203.0.113.3:3478
 */
#include <natpunch.h>
#include <stdio.h>

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s SERVER1_IP:PORT [SERVER2_IP:PORT]\n", argv[0]);
    return 2;
  }
  np_probe_config cfg = {0}; /* zero means defaults: 3 s bound, 250 ms RTO */
  for (int i = 1; i < argc; i++) {
    if (np_addr_parse(argv[i], 3478, &cfg.servers[cfg.n_servers++]) != 0) {
      fprintf(stderr, "not a numeric address: %s\n", argv[i]);
      return 2;
    }
  }
  np_probe_result r;
  int rc = np_probe_run(&cfg, &r); /* blocks for at most cfg.timeout_ms */
  if (rc != 0) {
    fprintf(stderr, "probe failed: %s\n", np_strerror(rc));
    return 1;
  }
  char local[NP_ADDRSTRLEN], mapped[NP_ADDRSTRLEN];
  printf("%s is seen as %s; mapping %s, filtering %s", np_addr_format(&r.local, local, sizeof local),
         np_addr_format(&r.mapped[0], mapped, sizeof mapped), np_nat_behavior_name(r.mapping),
         np_nat_behavior_name(r.filtering));
  if (r.have_delta)
    printf(", port delta %+d", r.delta);
  printf("\n");
  return 0;
}
