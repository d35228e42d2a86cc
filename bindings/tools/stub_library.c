/* Stand-ins for a wrong libcommvq, to test the dlopen loaders' refusals:
 * built with STUB_VERSION 100 it has the right major but lacks every other
 * symbol (the loader must name the first missing one); with STUB_VERSION
 * 10000 it claims major version 1 (the loader must refuse it). */
#include <stdint.h>

__attribute__((visibility("default"))) uint32_t commvq_version_number(void) { return STUB_VERSION; }
__attribute__((visibility("default"))) const char* commvq_version_string(void) { return "stub"; }
