/* Per-object logging: each handle carries an np_logger copied from its
 * config, so there is no global log state. */
#ifndef NP_LOG_H
#define NP_LOG_H

#include "natpunch.h"

typedef struct np_logger {
  np_log_fn fn;
  void *user;
  enum np_log_level level;
} np_logger;

/* Formats and delivers one message if a sink is set and level is enabled.
 * Messages longer than 512 bytes are truncated. */
void np__log(const np_logger *lg, enum np_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True when a message at this level would be delivered; lets hot paths skip
 * formatting. */
static inline int np_log_enabled(const np_logger *lg, enum np_log_level level) {
  return lg && lg->fn && level <= lg->level;
}

#define NP_LOGE(lg, ...) np__log((lg), NP_LOG_ERROR, __VA_ARGS__)
#define NP_LOGW(lg, ...) np__log((lg), NP_LOG_WARN, __VA_ARGS__)
#define NP_LOGI(lg, ...) np__log((lg), NP_LOG_INFO, __VA_ARGS__)
#define NP_LOGD(lg, ...)                                                                           \
  do {                                                                                             \
    if (np_log_enabled((lg), NP_LOG_DEBUG))                                                        \
      np__log((lg), NP_LOG_DEBUG, __VA_ARGS__);                                                    \
  } while (0)

#endif
