using System;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace Commvq
{
    /// <summary>A failed libcommvq call: its status, the status's name and the library's message.</summary>
    public sealed class CommvqException : Exception
    {
        public int Status { get; }
        public string StatusName { get; }
        public string LibraryMessage { get; }

        public CommvqException(int status, string statusName, string libraryMessage)
            : base(statusName + ": " + libraryMessage)
        {
            Status = status;
            StatusName = statusName;
            LibraryMessage = libraryMessage;
        }
    }

    /// <summary>The library could not be loaded, lacks a symbol, or has another major version.</summary>
    public sealed class LoadException : Exception
    {
        public LoadException(string message) : base(message) { }
    }

    /// <summary>Every function of commvq.h, resolved when the library is opened.</summary>
    public sealed class Api
    {
#pragma warning disable 0649 // assigned by reflection in Library.Open
        public Functions.commvq_version_number commvq_version_number;
        public Functions.commvq_version_string commvq_version_string;
        public Functions.commvq_status_string commvq_status_string;
        public Functions.commvq_last_error commvq_last_error;
        public Functions.commvq_cuda_available commvq_cuda_available;
        public Functions.commvq_device_count commvq_device_count;
        public Functions.commvq_codebook_info_init commvq_codebook_info_init;
        public Functions.commvq_codebook_load commvq_codebook_load;
        public Functions.commvq_codebook_load_memory commvq_codebook_load_memory;
        public Functions.commvq_codebook_save commvq_codebook_save;
        public Functions.commvq_codebook_save_as commvq_codebook_save_as;
        public Functions.commvq_codebook_free commvq_codebook_free;
        public Functions.commvq_codebook_get_info commvq_codebook_get_info;
        public Functions.commvq_codebook_encode_keys commvq_codebook_encode_keys;
        public Functions.commvq_codebook_reconstruct commvq_codebook_reconstruct;
        public Functions.commvq_cache_params_init_size commvq_cache_params_init_size;
        public Functions.commvq_cache_params_init commvq_cache_params_init;
        public Functions.commvq_cache_create commvq_cache_create;
        public Functions.commvq_cache_destroy commvq_cache_destroy;
        public Functions.commvq_cache_append commvq_cache_append;
        public Functions.commvq_cache_append_batch commvq_cache_append_batch;
        public Functions.commvq_cache_key_norms2 commvq_cache_key_norms2;
        public Functions.commvq_cache_append_norms2 commvq_cache_append_norms2;
        public Functions.commvq_cache_attend commvq_cache_attend;
        public Functions.commvq_cache_attend_batch commvq_cache_attend_batch;
        public Functions.commvq_cache_seq_length commvq_cache_seq_length;
        public Functions.commvq_cache_seq_clear commvq_cache_seq_clear;
        public Functions.commvq_cache_seq_truncate commvq_cache_seq_truncate;
        public Functions.commvq_cache_seq_fork commvq_cache_seq_fork;
        public Functions.commvq_cache_stats_init commvq_cache_stats_init;
        public Functions.commvq_cache_get_stats commvq_cache_get_stats;
        public Functions.commvq_cache_seq_save commvq_cache_seq_save;
        public Functions.commvq_cache_seq_load commvq_cache_seq_load;
        public Functions.commvq_cache_set_stream commvq_cache_set_stream;
        public Functions.commvq_cache_synchronize commvq_cache_synchronize;
        public Functions.commvq_train_params_init commvq_train_params_init;
        public Functions.commvq_train commvq_train;
#pragma warning restore 0649
    }

    /// <summary>
    /// libcommvq, loaded at run time. It stays loaded for the life of the
    /// process: SafeHandles finalized late still call into it.
    /// </summary>
    public sealed class Library
    {
        public Api Api { get; }
        /// <summary>The file or name the library was loaded from.</summary>
        public string Path { get; }

        Library(Api api, string path)
        {
            Api = api;
            Path = path;
        }

        static readonly object openLock = new object();
        static Library shared;

        /// <summary>
        /// The library for calls that take no Library: opened once, by Open(),
        /// on first use.
        /// </summary>
        public static Library Default
        {
            get
            {
                lock (openLock)
                    return shared ?? (shared = Open());
            }
        }

        /// <summary>
        /// The places Open() tries when given no path, in order:
        /// $COMMVQ_LIBRARY; libcommvq.so.MAJOR beside this assembly (a
        /// package that ships the library with it); LIBDIR/libcommvq.so.MAJOR
        /// for this assembly installed as LIBDIR/cli/commvq/Commvq.dll
        /// (cmake --install); the bare name, for the dynamic loader's search
        /// path (LD_LIBRARY_PATH, ldconfig).
        /// </summary>
        public static string[] Candidates()
        {
            string name = "libcommvq.so." + Constants.COMMVQ_VERSION_MAJOR;
            var list = new System.Collections.Generic.List<string>();
            string env = Environment.GetEnvironmentVariable("COMMVQ_LIBRARY");
            if (!string.IsNullOrEmpty(env))
                list.Add(env);
            string location = typeof(Library).Assembly.Location;
            if (!string.IsNullOrEmpty(location))
            {
                string dir = System.IO.Path.GetDirectoryName(location);
                list.Add(System.IO.Path.Combine(dir, name));
                list.Add(System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, "..", "..", name)));
            }
            list.Add(name);
            return list.ToArray();
        }

        /// <summary>
        /// Loads libcommvq from path; null means the first of Candidates()
        /// that exists ($COMMVQ_LIBRARY is used as given). Checks the major
        /// version, then resolves every function, naming the first one missing.
        /// </summary>
        public static Library Open(string path = null)
        {
            if (string.IsNullOrEmpty(path))
            {
                string[] candidates = Candidates();
                path = candidates[candidates.Length - 1];
                for (int i = 0; i < candidates.Length - 1; i++)
                {
                    bool fromEnvironment = i == 0 && candidates[0] == Environment.GetEnvironmentVariable("COMMVQ_LIBRARY");
                    if (fromEnvironment || System.IO.File.Exists(candidates[i]))
                    {
                        path = candidates[i];
                        break;
                    }
                }
            }
            IntPtr handle = Loader.Load(path);

            var api = new Api();
            // The version first: a library of another major may lack other symbols.
            api.commvq_version_number = Resolve<Functions.commvq_version_number>(handle, path, "commvq_version_number");
            uint found = api.commvq_version_number();
            if (found / 10000 != Constants.COMMVQ_VERSION_MAJOR)
                throw new LoadException(path + " has version " + found + "; this binding needs major version " +
                                        Constants.COMMVQ_VERSION_MAJOR);
            foreach (Type function in typeof(Functions).GetNestedTypes())
            {
                FieldInfo field = typeof(Api).GetField(function.Name);
                if (field == null)
                    throw new LoadException("Api has no field for " + function.Name);
                IntPtr address = Loader.Symbol(handle, function.Name);
                if (address == IntPtr.Zero)
                    throw new LoadException(path + " lacks the symbol " + function.Name);
                field.SetValue(api, Marshal.GetDelegateForFunctionPointer(address, function));
            }
            return new Library(api, path);
        }

        static T Resolve<T>(IntPtr handle, string path, string name) where T : class
        {
            IntPtr address = Loader.Symbol(handle, name);
            if (address == IntPtr.Zero)
                throw new LoadException(path + " lacks the symbol " + name);
            return (T)(object)Marshal.GetDelegateForFunctionPointer(address, typeof(T));
        }

        public uint VersionNumber => Api.commvq_version_number();
        public string Version => Marshal.PtrToStringAnsi(Api.commvq_version_string());
        public bool CudaAvailable => Api.commvq_cuda_available() != 0;
        public int DeviceCount => Api.commvq_device_count();

        public string StatusString(int status) => Marshal.PtrToStringAnsi(Api.commvq_status_string(status));

        /// <summary>commvq_cache_params_t with the library's defaults.</summary>
        public unsafe commvq_cache_params_t DefaultCacheParams()
        {
            var p = new commvq_cache_params_t();
            Api.commvq_cache_params_init_size(&p, (UIntPtr)sizeof(commvq_cache_params_t));
            return p;
        }

        /// <summary>
        /// Throws for a nonzero status. Runs right after the call on the same
        /// thread: the message is the thread's last error.
        /// </summary>
        internal void Check(int status)
        {
            if (status != Constants.COMMVQ_OK)
            {
                string message = Utf8(Api.commvq_last_error()); // first: the next call may replace it
                throw new CommvqException(status, StatusString(status), message);
            }
        }

        internal static unsafe string Utf8(IntPtr text)
        {
            byte* p = (byte*)text;
            int length = 0;
            while (p[length] != 0)
                length++;
            return Encoding.UTF8.GetString(p, length);
        }

        internal static byte[] CString(string text) => Encoding.UTF8.GetBytes(text + "\0");
    }

    /// <summary>
    /// Opens a shared library and finds its symbols: through
    /// System.Runtime.InteropServices.NativeLibrary where the runtime has it
    /// (.NET Core 3.0 and later), else through dlopen/dlsym (Mono).
    /// </summary>
    static class Loader
    {
        delegate bool TryLoadFn(string path, out IntPtr handle);
        delegate bool TryGetExportFn(IntPtr handle, string name, out IntPtr address);

        static readonly TryLoadFn tryLoad;
        static readonly TryGetExportFn tryGetExport;

        static Loader()
        {
            Type nativeLibrary = Type.GetType("System.Runtime.InteropServices.NativeLibrary");
            if (nativeLibrary == null)
                return;
            MethodInfo load = nativeLibrary.GetMethod("TryLoad", new[] { typeof(string), typeof(IntPtr).MakeByRefType() });
            MethodInfo export = nativeLibrary.GetMethod("TryGetExport",
                new[] { typeof(IntPtr), typeof(string), typeof(IntPtr).MakeByRefType() });
            if (load != null && export != null)
            {
                tryLoad = (TryLoadFn)Delegate.CreateDelegate(typeof(TryLoadFn), load);
                tryGetExport = (TryGetExportFn)Delegate.CreateDelegate(typeof(TryGetExportFn), export);
            }
        }

        /// <summary>Whether NativeLibrary is used (else dlopen).</summary>
        internal static bool UsesNativeLibrary => tryLoad != null;

        internal static IntPtr Load(string path)
        {
            if (tryLoad != null)
            {
                if (!tryLoad(path, out IntPtr h) || h == IntPtr.Zero)
                    throw new LoadException("cannot load libcommvq: " + path + " could not be loaded");
                return h;
            }
            IntPtr handle = Dl.dlopen(path, Dl.RTLD_NOW);
            if (handle == IntPtr.Zero)
                throw new LoadException("cannot load libcommvq: " + Marshal.PtrToStringAnsi(Dl.dlerror()));
            return handle;
        }

        internal static IntPtr Symbol(IntPtr handle, string name)
        {
            if (tryGetExport != null)
                return tryGetExport(handle, name, out IntPtr address) ? address : IntPtr.Zero;
            return Dl.dlsym(handle, name);
        }
    }
}
