// The C API of include/commvq/commvq.h for a library loaded at run time:
// constants, structs with the header's layout, one delegate type per
// function, and dlopen/dlsym from libdl. Copied from the header by hand, so
// bindings/tools/check_declarations.py compares this file with the header
// in CI; keep the header's names, order and types.
using System;
using System.Runtime.InteropServices;

namespace Commvq
{
    public static class Constants
    {
        public const uint COMMVQ_VERSION_MAJOR = 0;

        public const int COMMVQ_OK = 0;
        public const int COMMVQ_ERR_INVALID_ARGUMENT = 1;
        public const int COMMVQ_ERR_SHAPE_MISMATCH = 2;
        public const int COMMVQ_ERR_OUT_OF_RANGE = 3;
        public const int COMMVQ_ERR_INVALID_STATE = 4;
        public const int COMMVQ_ERR_CAPACITY = 10;
        public const int COMMVQ_ERR_OUT_OF_MEMORY = 11;
        public const int COMMVQ_ERR_IO = 20;
        public const int COMMVQ_ERR_FORMAT = 21;
        public const int COMMVQ_ERR_CORRUPT = 22;
        public const int COMMVQ_ERR_CODEBOOK_MISMATCH = 23;
        public const int COMMVQ_ERR_NOT_SUPPORTED = 30;
        public const int COMMVQ_ERR_CUDA = 31;
        public const int COMMVQ_ERR_CANCELLED = 32;
        public const int COMMVQ_ERR_INTERNAL = 99;

        public const int COMMVQ_DEVICE_CPU = -1;
        public const int COMMVQ_DTYPE_F32 = 0;
        public const int COMMVQ_DTYPE_F16 = 1;
        public const int COMMVQ_DTYPE_BF16 = 2;
        public const int COMMVQ_KEYS_PRE_ROPE = 0;
        public const int COMMVQ_KEYS_POST_ROPE = 1;
        public const int COMMVQ_PAIRS_ROTATE_HALF = 0;
        public const int COMMVQ_PAIRS_INTERLEAVED = 1;
        public const int COMMVQ_SCALE_TOKEN = 0;
        public const int COMMVQ_SCALE_HEAD = 1;
        public const int COMMVQ_ROPE_SCALING_NONE = 0;
        public const int COMMVQ_ROPE_SCALING_LINEAR = 1;
        public const int COMMVQ_ROPE_SCALING_LLAMA3 = 2;
        public const uint COMMVQ_ATTEND_CAUSAL = 0;
        public const uint COMMVQ_ATTEND_NON_CAUSAL = 1;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct commvq_rope_info_t
    {
        public double theta;
        public int scaling;
        public double factor;
        public double low_freq_factor;
        public double high_freq_factor;
        public double original_max_position;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct commvq_codebook_info_t
    {
        public uint struct_size;
        public uint n_layers;
        public uint n_kv_heads;
        public uint n_q_heads;
        public uint head_dim;
        public uint key_stages;
        public uint sub_centers;
        public uint value_bits;
        public uint value_hidden;
        public int pair_layout;
        public int scale_mode;
        public uint format_version;
        public commvq_rope_info_t rope;
        public ulong fingerprint;
        public uint compressed_token_bytes;
        public uint reserved_;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct commvq_cache_params_t
    {
        public uint struct_size;
        public int device;
        public uint max_seqs;
        public ulong max_tokens;
        public uint block_tokens;
        public uint window;
        public uint sink_tokens;
        public int io_dtype;
        public int key_convention;
        public float attn_scale;
        public uint n_threads;
        public uint kv_head_begin;
        public uint kv_head_count;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct commvq_cache_stats_t
    {
        public uint struct_size;
        public uint n_seqs_used;
        public ulong tokens;
        public ulong compressed_tokens;
        public ulong blocks_used;
        public ulong blocks_total;
        public ulong tokens_free;
        public ulong bytes_compressed;
        public ulong bytes_window;
        public ulong bytes_codebook;
        public ulong bytes_reserved;
        public double bytes_per_compressed_token;
        public double bytes_per_token_16bit;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct commvq_train_params_t
    {
        public uint struct_size;
        public uint value_bits;
        public uint key_stages;
        public uint sub_centers;
        public int pair_layout;
        public int scale_mode;
        public uint n_q_heads;
        public commvq_rope_info_t rope;
        public ulong max_samples;
        public uint key_max_steps;
        public uint value_steps;
        public uint value_batch;
        public float value_lr;
        public ulong seed;
        public uint n_threads;
        public int device;
        public IntPtr progress;  // commvq_progress_fn
        public IntPtr progress_user;
        public uint value_hidden;
        public IntPtr model_name;     // const char*: UTF-8, NUL-terminated, alive during the call
        public IntPtr value_weights;  // const float*: [n_layers][n_tokens], alive during the call
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int commvq_progress_fn(IntPtr user, IntPtr stage, double fraction);

    // Every public function of commvq.h; Api resolves one of each by name.
    public static unsafe class Functions
    {
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate uint commvq_version_number();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate IntPtr commvq_version_string();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate IntPtr commvq_status_string(int status);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate IntPtr commvq_last_error();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cuda_available();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_device_count();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_codebook_info_init(commvq_codebook_info_t* info);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_load(byte* path, IntPtr* @out);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_load_memory(void* data, UIntPtr size, IntPtr* @out);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_save(IntPtr cb, byte* path);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_save_as(IntPtr cb, byte* path, int dtype);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_codebook_free(IntPtr cb);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_get_info(IntPtr cb, commvq_codebook_info_t* info);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_encode_keys(IntPtr cb, uint layer, uint n_tokens, float* k,
                                                        ushort* codes, float* scales);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_codebook_reconstruct(IntPtr cb, uint layer, uint n_tokens, float* k, float* v,
                                                        float* k_out, float* v_out);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_cache_params_init_size(commvq_cache_params_t* @params, UIntPtr size);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_cache_params_init(commvq_cache_params_t* @params);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_create(IntPtr cb, commvq_cache_params_t* @params, IntPtr* @out);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_cache_destroy(IntPtr cache);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_append(IntPtr cache, uint layer, uint seq, uint n_tokens, void* k, void* v);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_append_batch(IntPtr cache, uint layer, uint n_seqs, uint* seq_ids,
                                                      uint n_tokens, void* k, void* v);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_key_norms2(IntPtr cache, uint layer, uint n_seqs, uint* seq_ids,
                                                    uint n_tokens, void* k, double* norms2);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_append_norms2(IntPtr cache, uint layer, uint n_seqs, uint* seq_ids,
                                                       uint n_tokens, void* k, void* v, double* key_norms2);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_attend(IntPtr cache, uint layer, uint seq, uint n_queries, void* q,
                                                void* @out, float* lse, uint flags);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_attend_batch(IntPtr cache, uint layer, uint n_seqs, uint* seq_ids,
                                                      void* q, void* @out, float* lse, uint flags);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_length(IntPtr cache, uint seq, ulong* length);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_clear(IntPtr cache, uint seq);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_truncate(IntPtr cache, uint seq, ulong new_length);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_fork(IntPtr cache, uint src, uint dst);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_cache_stats_init(commvq_cache_stats_t* stats);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_get_stats(IntPtr cache, commvq_cache_stats_t* stats);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_save(IntPtr cache, uint seq, byte* path);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_seq_load(IntPtr cache, uint seq, byte* path);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_set_stream(IntPtr cache, void* cuda_stream);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_cache_synchronize(IntPtr cache);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void commvq_train_params_init(commvq_train_params_t* @params);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int commvq_train(commvq_train_params_t* @params, uint n_layers, uint n_kv_heads,
                                         uint head_dim, ulong n_tokens, float* keys, float* values, IntPtr* @out);
    }

    internal static class Dl
    {
        internal const int RTLD_NOW = 2;

        [DllImport("libdl.so.2")]
        internal static extern IntPtr dlopen(string fileName, int flags);

        [DllImport("libdl.so.2")]
        internal static extern IntPtr dlsym(IntPtr handle, string symbol);

        [DllImport("libdl.so.2")]
        internal static extern IntPtr dlerror();
    }
}
