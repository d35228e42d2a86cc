/* The SWIG interface of the Java binding over include/commvq/commvq.h.
 *
 * The header is %included as it is: no declaration is repeated here. What
 * this file adds is how C types cross into Java (typemaps), in one place per
 * concern:
 *  - commvq_status_t results become void methods that throw CommvqException
 *    (status + commvq_last_error()) through the hand-written check helper;
 *  - opaque handles cross as Java longs that the owning classes (Codebook,
 *    Cache) hold; `T** out` parameters become a one-element array;
 *  - buffers cross without copies, as direct java.nio buffers;
 *  - parameter structs get a constructor that runs their *_init() function.
 * Java specifics live in commvq_java.i. (C# uses no SWIG: bindings/csharp
 * declares the C API itself, checked by bindings/tools/check_declarations.py.) */

/* The raw calls land in a non-public class CommvqNative; the public API is
 * the hand-written classes of bindings/java (Codebook, Cache, CacheParams,
 * Commvq's constants, ...). */
%module(package="org.commvq") CommvqNative

%{
#include <stdlib.h>
#include "commvq/commvq.h"
%}

%include <stdint.i>

/* Names without the C prefix: commvq_cache_append -> cache_append,
 * COMMVQ_ERR_IO -> ERR_IO; structs get class names (fields are renamed per
 * language). */
%rename("%(regex:/^(commvq|COMMVQ)_(.*)/\\2/)s") "";
/* The structs are package-private; the public CacheParams, CodebookInfo,
 * ... (bindings/java) are plain Java classes copied to and from them. */
%rename(NativeRopeInfo) commvq_rope_info;
%rename(NativeCodebookInfo) commvq_codebook_info;
%rename(NativeCacheParams) commvq_cache_params;
%rename(NativeCacheStats) commvq_cache_stats;
%rename(NativeTrainParams) commvq_train_params;

/* A progress callback cannot be a plain value in Java; training from
 * these bindings runs without one. The same for the two pointers the struct
 * would hold across the call (a managed string or array could move or be
 * collected meanwhile): these bindings train with no model name and no value
 * weights. value_hidden is an ordinary field. */
%ignore commvq_train_params::progress;
%ignore commvq_train_params::progress_user;
%ignore commvq_train_params::model_name;
%ignore commvq_train_params::value_weights;

/* Parameter structs start at the library's defaults. */
%define COMMVQ_INIT_CONSTRUCTOR(TAG, TYPE, INIT)
%extend TAG {
    TAG() {
        TYPE* self = (TYPE*)calloc(1, sizeof(TYPE));
        if (self) INIT(self);
        return self;
    }
}
%enddef
COMMVQ_INIT_CONSTRUCTOR(commvq_codebook_info, commvq_codebook_info_t, commvq_codebook_info_init)
COMMVQ_INIT_CONSTRUCTOR(commvq_cache_params, commvq_cache_params_t, commvq_cache_params_init)
COMMVQ_INIT_CONSTRUCTOR(commvq_cache_stats, commvq_cache_stats_t, commvq_cache_stats_init)
COMMVQ_INIT_CONSTRUCTOR(commvq_train_params, commvq_train_params_t, commvq_train_params_init)

%include "commvq_java.i"

/* For SWIG's own parser only: COMMVQ_API expands to nothing. */
#define COMMVQ_STATIC_DEFINE
%include "commvq/commvq.h"
