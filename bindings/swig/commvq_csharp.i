/* C# typemaps for commvq.i (namespace Commvq). */

%include <typemaps.i>

/* Struct fields as PascalCase properties: max_tokens -> MaxTokens. */
%rename("%(camelcase)s", %$ismember, %$isvariable) "";

/* The raw calls are internal; users see Codebook, Cache, CommvqException
 * and the constants (commvq_constants.i). */
%pragma(csharp) moduleclassmodifiers="internal class"
%pragma(csharp) imclassclassmodifiers="internal class"
%csconst(1);
%csconst(0) COMMVQ_VERSION_NUMBER;

%apply unsigned long long *OUTPUT { uint64_t *length };

/* Statuses: a failed call throws; the method itself returns nothing. */
%typemap(cstype) commvq_status_t "void"
%typemap(csout, excode=SWIGEXCODE) commvq_status_t {
    CommvqException.Check($imcall);$excode
  }
%typemap(cstype) commvq_status_t status "int"

/* Opaque handles as IntPtr, owned by CodebookHandle and CacheHandle. */
%define COMMVQ_CSHARP_HANDLE(TYPE)
%typemap(ctype) TYPE*, const TYPE* "void *"
%typemap(imtype) TYPE*, const TYPE* "global::System.IntPtr"
%typemap(cstype) TYPE*, const TYPE* "global::System.IntPtr"
%typemap(csin) TYPE*, const TYPE* "$csinput"
%typemap(in) TYPE*, const TYPE* %{ $1 = ($1_ltype)$input; %}
%typemap(ctype) TYPE** out "void **"
%typemap(imtype) TYPE** out "out global::System.IntPtr"
%typemap(cstype) TYPE** out "out global::System.IntPtr"
%typemap(csin) TYPE** out "out $csinput"
%typemap(in) TYPE** out %{ $1 = ($1_ltype)$input; %}
%enddef
COMMVQ_CSHARP_HANDLE(commvq_codebook_t)
COMMVQ_CSHARP_HANDLE(commvq_cache_t)

/* Buffers (every other pointer to numbers, and the CUDA stream) as IntPtr:
 * the owning classes pin arrays or take the caller's memory, no copy. */
%define COMMVQ_CSHARP_BUFFERS
const void*, void*, const float*, float*, const uint16_t*, uint16_t*, const uint32_t*, uint32_t*
%enddef
%typemap(ctype) COMMVQ_CSHARP_BUFFERS "void *"
%typemap(imtype) COMMVQ_CSHARP_BUFFERS "global::System.IntPtr"
%typemap(cstype) COMMVQ_CSHARP_BUFFERS "global::System.IntPtr"
%typemap(csin) COMMVQ_CSHARP_BUFFERS "$csinput"
%typemap(in) COMMVQ_CSHARP_BUFFERS %{ $1 = ($1_ltype)$input; %}
