/* Java typemaps for commvq.i (package org.commvq). */

%include <typemaps.i>

/* Struct fields in camel case: max_tokens -> getMaxTokens(), setMaxTokens(). */
%rename("%(lowercamelcase)s", %$ismember, %$isvariable) "";

/* The generated classes are the raw C API; users see Codebook, Cache,
 * CommvqException and the constants (Commvq extends the constants interface). */
%pragma(java) moduleclassmodifiers="final class"
/* The struct proxies (NativeCacheParams, ...) are package-private too, so
 * their delete(), finalize() and struct_size accessors are not public API. */
%typemap(javaclassmodifiers) SWIGTYPE "final class"
%pragma(java) jniclassclassmodifiers="final class"
%pragma(java) jniclasscode=%{
  static {
    NativeLoader.load();
  }
%}
%javaconst(1);
/* Values SWIG cannot spell in Java (an expression, unsigned literals) are
 * read from the library's header through JNI instead. */
%javaconst(0) COMMVQ_VERSION_NUMBER;
%javaconst(0) COMMVQ_ATTEND_CAUSAL;
%javaconst(0) COMMVQ_ATTEND_NON_CAUSAL;

/* 64-bit integers as Java long (two's complement for the fingerprint). */
%apply long long { uint64_t };
%apply long long *OUTPUT { uint64_t *length };

/* Statuses: a failed call throws; the method itself returns nothing. */
%typemap(jstype) commvq_status_t "void"
%typemap(javaout) commvq_status_t {
    CommvqException.check($jnicall);
  }
%typemap(jstype) commvq_status_t status "int"

/* Opaque handles as long. */
%define COMMVQ_JAVA_HANDLE(TYPE)
%typemap(jni) TYPE*, const TYPE* "jlong"
%typemap(jtype) TYPE*, const TYPE* "long"
%typemap(jstype) TYPE*, const TYPE* "long"
%typemap(javain) TYPE*, const TYPE* "$javainput"
%typemap(in) TYPE*, const TYPE* %{ $1 = ($1_ltype)(intptr_t)$input; %}
%typemap(jni) TYPE** out "jlongArray"
%typemap(jtype) TYPE** out "long[]"
%typemap(jstype) TYPE** out "long[]"
%typemap(javain) TYPE** out "$javainput"
%typemap(in) TYPE** out (TYPE* handle = NULL) %{
  if (!$input || (*jenv)->GetArrayLength(jenv, $input) < 1) {
    SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "out must be a long[1]");
    return $null;
  }
  $1 = &handle;
%}
%typemap(argout) TYPE** out %{
  {
    jlong value = (jlong)(intptr_t)handle$argnum;
    (*jenv)->SetLongArrayRegion(jenv, $input, 0, 1, &value);
  }
%}
%enddef
COMMVQ_JAVA_HANDLE(commvq_codebook_t)
COMMVQ_JAVA_HANDLE(commvq_cache_t)

/* Buffers (every other pointer to numbers): direct java.nio buffers, passed
 * by address, no copy. The owning classes check sizes, byte order and
 * position before the call; null passes NULL. */
%define COMMVQ_JAVA_BUFFERS
const void*, void*, const float*, float*, const uint16_t*, uint16_t*, const uint32_t*, uint32_t*
%enddef
%typemap(jni) COMMVQ_JAVA_BUFFERS "jobject"
%typemap(jtype) COMMVQ_JAVA_BUFFERS "java.nio.Buffer"
%typemap(jstype) COMMVQ_JAVA_BUFFERS "java.nio.Buffer"
%typemap(javain) COMMVQ_JAVA_BUFFERS "$javainput"
%typemap(in) COMMVQ_JAVA_BUFFERS %{
  $1 = NULL;
  if ($input) {
    $1 = ($1_ltype)(*jenv)->GetDirectBufferAddress(jenv, $input);
    if (!$1) {
      SWIG_JavaThrowException(jenv, SWIG_JavaIllegalArgumentException, "$1_name must be a direct buffer");
      return $null;
    }
  }
%}

/* A CUDA stream from another library, as its address. */
%typemap(jni) void* cuda_stream "jlong"
%typemap(jtype) void* cuda_stream "long"
%typemap(jstype) void* cuda_stream "long"
%typemap(javain) void* cuda_stream "$javainput"
%typemap(in) void* cuda_stream %{ $1 = (void*)(intptr_t)$input; %}
