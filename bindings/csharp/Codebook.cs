using System;

namespace Commvq
{
    /// <summary>
    /// The quantization tables of one model. Caches keep their own copy of
    /// what they need, so a codebook may be disposed once they are created.
    /// </summary>
    public sealed class Codebook : IDisposable
    {
        internal readonly Library Library;
        internal readonly CodebookHandle Handle;

        Codebook(Library library, IntPtr raw)
        {
            Library = library;
            Handle = new CodebookHandle(library, raw);
        }

        public static unsafe Codebook Load(Library library, string path)
        {
            IntPtr raw;
            fixed (byte* p = Library.CString(path))
                library.Check(library.Api.commvq_codebook_load(p, &raw));
            return new Codebook(library, raw);
        }

        /// <summary>A codebook from the bytes of a codebook file (copied).</summary>
        public static unsafe Codebook FromBytes(Library library, byte[] data)
        {
            if (data == null || data.Length == 0)
                throw new ArgumentException("no codebook data", nameof(data));
            IntPtr raw;
            fixed (byte* p = data)
                library.Check(library.Api.commvq_codebook_load_memory(p, (UIntPtr)data.Length, &raw));
            return new Codebook(library, raw);
        }

        public unsafe void Save(string path)
        {
            using (var lease = new Lease(Handle, nameof(Codebook)))
            fixed (byte* p = Library.CString(path))
                Library.Check(Library.Api.commvq_codebook_save(lease.Pointer, p));
        }

        /// <summary>
        /// Writes the codebook file with a storage dtype: COMMVQ_DTYPE_F32 (as
        /// Save), _F16 or _BF16, which round the key sub-centers and value
        /// matrices to that type (about half the file; the file's fingerprint
        /// is then that of the rounded values).
        /// </summary>
        public unsafe void SaveAs(string path, int dtype)
        {
            using (var lease = new Lease(Handle, nameof(Codebook)))
            fixed (byte* p = Library.CString(path))
                Library.Check(Library.Api.commvq_codebook_save_as(lease.Pointer, p, dtype));
        }

        public unsafe commvq_codebook_info_t Info()
        {
            var info = new commvq_codebook_info_t();
            Library.Api.commvq_codebook_info_init(&info);
            using (var lease = new Lease(Handle, nameof(Codebook)))
                Library.Check(Library.Api.commvq_codebook_get_info(lease.Pointer, &info));
            return info;
        }

        public void Dispose() => Handle.Dispose();
    }
}
