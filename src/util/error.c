/* Error codes to text; the table lives in natpunch.h (NP_ERRORS) so numbers,
 * names and sentences cannot drift apart. */
#include "natpunch.h"

NP_EXPORT const char *np_strerror(int err) {
  switch (err) {
#define NP_ERROR_TEXT_(name, value, text)                                                          \
  case value:                                                                                      \
    return text;
    NP_ERRORS(NP_ERROR_TEXT_)
#undef NP_ERROR_TEXT_
  default:
    return "unknown error";
  }
}

NP_EXPORT const char *np_err_name(int err) {
  switch (err) {
#define NP_ERROR_NAME_(name, value, text)                                                          \
  case value:                                                                                      \
    return #name;
    NP_ERRORS(NP_ERROR_NAME_)
#undef NP_ERROR_NAME_
  default:
    return "NP_ERR_UNKNOWN";
  }
}
