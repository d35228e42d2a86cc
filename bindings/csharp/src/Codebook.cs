using System;

namespace Commvq
{
    /// <summary>
    /// The quantization tables of one model. Caches keep their own copy of
    /// what they need, so a codebook may be disposed once they are created.
    /// Not for use by two threads at once.
    /// </summary>
    public sealed class Codebook : IDisposable
    {
        internal readonly CodebookHandle Handle;

        Codebook(IntPtr raw) => Handle = new CodebookHandle(raw);

        public static Codebook Load(string path)
        {
            Library.RequireCompatible();
            CommvqNative.codebook_load(path, out IntPtr raw);
            return new Codebook(raw);
        }

        /// <summary>A codebook from the bytes of a codebook file (copied).</summary>
        public static unsafe Codebook FromBytes(byte[] data)
        {
            Library.RequireCompatible();
            if (data == null || data.Length == 0)
                throw new ArgumentException("no codebook data", nameof(data));
            IntPtr raw;
            fixed (byte* p = data)
                CommvqNative.codebook_load_memory((IntPtr)p, (uint)data.Length, out raw);
            return new Codebook(raw);
        }

        /// <summary>
        /// Trains a codebook from pre-RoPE keys and values, each
        /// [nLayers][nTokens][nKvHeads][headDim].
        /// </summary>
        public static unsafe Codebook Train(TrainParams parameters, uint nLayers, uint nKvHeads, uint headDim,
                                            float[] keys, float[] values)
        {
            Library.RequireCompatible();
            long perToken = (long)nLayers * nKvHeads * headDim;
            if (perToken == 0 || keys.Length % perToken != 0 || keys.Length != values.Length)
                throw new ArgumentException("keys and values must hold nTokens x " + perToken + " floats");
            IntPtr raw;
            fixed (float* pk = keys, pv = values)
                CommvqNative.train(parameters, nLayers, nKvHeads, headDim, (ulong)(keys.Length / perToken),
                                   (IntPtr)pk, (IntPtr)pv, out raw);
            return new Codebook(raw);
        }

        public void Save(string path)
        {
            using (var lease = new Lease(Handle, nameof(Codebook)))
                CommvqNative.codebook_save(lease.Pointer, path);
        }

        /// <summary>
        /// Writes the codebook file with a storage dtype: Constants.DTYPE_F32
        /// (as Save), DTYPE_F16 or DTYPE_BF16, which round the key sub-centers
        /// and value matrices to that type (about half the file; the file's
        /// fingerprint is then that of the rounded values).
        /// </summary>
        public void Save(string path, int dtype)
        {
            using (var lease = new Lease(Handle, nameof(Codebook)))
                CommvqNative.codebook_save_as(lease.Pointer, path, dtype);
        }

        public CodebookInfo Info()
        {
            var info = new CodebookInfo();
            using (var lease = new Lease(Handle, nameof(Codebook)))
                CommvqNative.codebook_get_info(lease.Pointer, info);
            return info;
        }

        public void Dispose() => Handle.Dispose();
    }
}
