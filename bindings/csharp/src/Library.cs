using System;

namespace Commvq
{
    /// <summary>
    /// The loaded library: version and capabilities. The wrapper
    /// (libcommvq_csharp.so) is found by Mono's DllImport search (the
    /// assembly's directory, LD_LIBRARY_PATH, a dllmap), and libcommvq.so by
    /// the dynamic loader (the wrapper's RUNPATH, LD_LIBRARY_PATH, ldconfig).
    /// </summary>
    public static class Library
    {
        public static uint VersionNumber => CommvqNative.version_number();
        public static string Version => CommvqNative.version_string();
        public static bool CudaAvailable => CommvqNative.cuda_available() != 0;
        public static int DeviceCount => CommvqNative.device_count();

        /// <summary>The name of a status, e.g. "COMMVQ_ERR_CAPACITY".</summary>
        public static string StatusString(int status) => CommvqNative.status_string(status);

        static readonly Lazy<bool> compatible = new Lazy<bool>(() =>
        {
            uint found = CommvqNative.version_number();
            if (found / 10000 != Constants.VERSION_MAJOR)
                throw new DllNotFoundException("libcommvq has version " + found +
                                               "; these bindings need major version " + Constants.VERSION_MAJOR);
            return true;
        });

        /// <summary>Checks once that the loaded library has the major version these bindings were built for.</summary>
        internal static void RequireCompatible() => _ = compatible.Value;
    }
}
