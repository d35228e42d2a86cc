using System;
using System.Runtime.InteropServices;

namespace Commvq
{
    /// <summary>Owns a commvq_codebook_t; released exactly once, by Dispose or the finalizer.</summary>
    public sealed class CodebookHandle : SafeHandle
    {
        readonly Library library;

        internal CodebookHandle(Library library, IntPtr raw) : base(IntPtr.Zero, true)
        {
            this.library = library;
            SetHandle(raw);
        }

        public override bool IsInvalid => handle == IntPtr.Zero;

        protected override bool ReleaseHandle()
        {
            library.Api.commvq_codebook_free(handle);
            return true;
        }
    }

    /// <summary>Owns a commvq_cache_t; released exactly once, by Dispose or the finalizer.</summary>
    public sealed class CacheHandle : SafeHandle
    {
        readonly Library library;

        internal CacheHandle(Library library, IntPtr raw) : base(IntPtr.Zero, true)
        {
            this.library = library;
            SetHandle(raw);
        }

        public override bool IsInvalid => handle == IntPtr.Zero;

        protected override bool ReleaseHandle()
        {
            library.Api.commvq_cache_destroy(handle);
            return true;
        }
    }

    /// <summary>
    /// Keeps a SafeHandle from being released while a native call uses its
    /// pointer (what P/Invoke does for SafeHandle arguments).
    /// </summary>
    internal struct Lease : IDisposable
    {
        readonly SafeHandle owner;
        readonly bool added;
        public readonly IntPtr Pointer;

        public Lease(SafeHandle owner, string what)
        {
            if (owner.IsClosed)
                throw new ObjectDisposedException(what);
            this.owner = owner;
            bool ok = false;
            owner.DangerousAddRef(ref ok);
            added = ok;
            Pointer = owner.DangerousGetHandle();
        }

        public void Dispose()
        {
            if (added)
                owner.DangerousRelease();
        }
    }
}
