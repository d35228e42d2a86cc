using System;
using System.Runtime.InteropServices;

namespace Commvq
{
    /// <summary>
    /// A compressed KV cache. Array overloads pin the arrays for the call
    /// (no copy); pointer overloads take memory the caller owns. Lengths are
    /// checked here, before the call. One cache must not be used by two
    /// threads at once.
    /// </summary>
    public sealed unsafe class Cache : IDisposable
    {
        readonly Library library;
        readonly CacheHandle handle;
        readonly int ioDtype;
        readonly int kvRow, qRow, nQHeads;

        public Cache(Codebook codebook, commvq_cache_params_t parameters)
        {
            commvq_codebook_info_t info = codebook.Info();
            library = codebook.Library;
            IntPtr raw;
            using (var lease = new Lease(codebook.Handle, nameof(Codebook)))
                library.Check(library.Api.commvq_cache_create(lease.Pointer, &parameters, &raw));
            handle = new CacheHandle(library, raw);
            ioDtype = parameters.io_dtype;
            kvRow = (int)(info.n_kv_heads * info.head_dim);
            qRow = (int)(info.n_q_heads * info.head_dim);
            nQHeads = (int)info.n_q_heads;
        }

        static uint Rows(int length, int row, string what)
        {
            if (length == 0 || length % row != 0)
                throw new ArgumentException(what + " has " + length + " elements, not a positive multiple of " + row);
            return (uint)(length / row);
        }

        void CheckDtype(bool half)
        {
            if (half != (ioDtype != Constants.COMMVQ_DTYPE_F32))
                throw new ArgumentException("element type does not match the cache's io dtype " + ioDtype);
        }

        /// <summary>Appends tokens to one layer of a sequence: k, v [n][n_kv_heads][head_dim].</summary>
        public void Append(uint layer, uint seq, float[] k, float[] v) =>
            Append(layer, seq, (ReadOnlySpan<float>)k, (ReadOnlySpan<float>)v);

        /// <summary>Append for F16 or BF16 io, as raw bits.</summary>
        public void Append(uint layer, uint seq, ushort[] k, ushort[] v) =>
            Append(layer, seq, (ReadOnlySpan<ushort>)k, (ReadOnlySpan<ushort>)v);

        /// <summary>Append from spans (arrays, stackalloc, native memory): no copy.</summary>
        public void Append(uint layer, uint seq, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
        {
            CheckDtype(false);
            uint n = Rows(k.Length, kvRow, "k");
            if (v.Length != k.Length)
                throw new ArgumentException("k has " + k.Length + " elements, v " + v.Length);
            fixed (float* pk = &MemoryMarshal.GetReference(k), pv = &MemoryMarshal.GetReference(v))
                Append(layer, seq, n, pk, pv);
        }

        /// <summary>Append of F16 or BF16 bits from spans.</summary>
        public void Append(uint layer, uint seq, ReadOnlySpan<ushort> k, ReadOnlySpan<ushort> v)
        {
            CheckDtype(true);
            uint n = Rows(k.Length, kvRow, "k");
            if (v.Length != k.Length)
                throw new ArgumentException("k has " + k.Length + " elements, v " + v.Length);
            fixed (ushort* pk = &MemoryMarshal.GetReference(k), pv = &MemoryMarshal.GetReference(v))
                Append(layer, seq, n, pk, pv);
        }

        /// <summary>Append from memory the caller owns, in the cache's io dtype.</summary>
        public void Append(uint layer, uint seq, uint nTokens, void* k, void* v)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_append(lease.Pointer, layer, seq, nTokens, k, v));
        }

        uint BatchTokens(int length, int nSeqs)
        {
            uint rows = Rows(length, kvRow, "k");
            if (nSeqs == 0)
                throw new ArgumentException("no sequences");
            if (rows % nSeqs != 0)
                throw new ArgumentException("k holds " + rows + " tokens, not a multiple of " + nSeqs + " sequences");
            return rows / (uint)nSeqs;
        }

        /// <summary>
        /// Appends to one layer of several sequences in one call: k, v
        /// [seqIds.Length][n_tokens][n_kv_heads][head_dim] (n_tokens 1: one decode
        /// step), the ids distinct. As Append for each sequence in turn, but all
        /// or nothing.
        /// </summary>
        public void AppendBatch(uint layer, uint[] seqIds, float[] k, float[] v) =>
            AppendBatch(layer, (ReadOnlySpan<uint>)seqIds, (ReadOnlySpan<float>)k, (ReadOnlySpan<float>)v);

        /// <summary>AppendBatch for F16 or BF16 io, as raw bits.</summary>
        public void AppendBatch(uint layer, uint[] seqIds, ushort[] k, ushort[] v) =>
            AppendBatch(layer, (ReadOnlySpan<uint>)seqIds, (ReadOnlySpan<ushort>)k, (ReadOnlySpan<ushort>)v);

        /// <summary>AppendBatch from spans: no copy.</summary>
        public void AppendBatch(uint layer, ReadOnlySpan<uint> seqIds, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
        {
            CheckDtype(false);
            uint n = BatchTokens(k.Length, seqIds.Length);
            if (v.Length != k.Length)
                throw new ArgumentException("k has " + k.Length + " elements, v " + v.Length);
            fixed (uint* ps = &MemoryMarshal.GetReference(seqIds))
            fixed (float* pk = &MemoryMarshal.GetReference(k), pv = &MemoryMarshal.GetReference(v))
                AppendBatch(layer, (uint)seqIds.Length, ps, n, pk, pv);
        }

        /// <summary>AppendBatch of F16 or BF16 bits from spans.</summary>
        public void AppendBatch(uint layer, ReadOnlySpan<uint> seqIds, ReadOnlySpan<ushort> k, ReadOnlySpan<ushort> v)
        {
            CheckDtype(true);
            uint n = BatchTokens(k.Length, seqIds.Length);
            if (v.Length != k.Length)
                throw new ArgumentException("k has " + k.Length + " elements, v " + v.Length);
            fixed (uint* ps = &MemoryMarshal.GetReference(seqIds))
            fixed (ushort* pk = &MemoryMarshal.GetReference(k), pv = &MemoryMarshal.GetReference(v))
                AppendBatch(layer, (uint)seqIds.Length, ps, n, pk, pv);
        }

        /// <summary>AppendBatch from memory the caller owns, in the cache's io dtype.</summary>
        public void AppendBatch(uint layer, uint nSeqs, uint* seqIds, uint nTokens, void* k, void* v)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_append_batch(lease.Pointer, layer, nSeqs, seqIds, nTokens, k, v));
        }

        void CheckOutputs(uint n, int outLength, int lseLength, bool hasLse)
        {
            if (outLength != n * qRow)
                throw new ArgumentException("out has " + outLength + " elements, needs " + n * qRow);
            if (hasLse && lseLength != n * nQHeads)
                throw new ArgumentException("lse has " + lseLength + " elements, needs " + n * nQHeads);
        }

        void CheckOutputs(uint n, int outLength, float[] lse) =>
            CheckOutputs(n, outLength, lse == null ? 0 : lse.Length, lse != null);

        /// <summary>
        /// Attention of post-RoPE queries q [n][n_q_heads][head_dim] into out
        /// (q's layout); lse [n][n_q_heads] may be null. flags: Constants.COMMVQ_ATTEND_*.
        /// </summary>
        public void Attend(uint layer, uint seq, float[] q, float[] @out, float[] lse, uint flags)
        {
            CheckDtype(false);
            uint n = Rows(q.Length, qRow, "q");
            CheckOutputs(n, @out.Length, lse);
            fixed (float* pq = q, po = @out, pl = lse)
                Attend(layer, seq, n, pq, po, pl, flags);
        }

        /// <summary>Attend for F16 or BF16 io, as raw bits; lse stays float.</summary>
        public void Attend(uint layer, uint seq, ushort[] q, ushort[] @out, float[] lse, uint flags)
        {
            CheckDtype(true);
            uint n = Rows(q.Length, qRow, "q");
            CheckOutputs(n, @out.Length, lse);
            fixed (ushort* pq = q, po = @out)
            fixed (float* pl = lse)
                Attend(layer, seq, n, pq, po, pl, flags);
        }

        /// <summary>
        /// Attend on spans, no copy; an empty lse (default) asks for no lse,
        /// any other must hold [n][n_q_heads].
        /// </summary>
        public void Attend(uint layer, uint seq, ReadOnlySpan<float> q, Span<float> @out, Span<float> lse, uint flags)
        {
            CheckDtype(false);
            uint n = Rows(q.Length, qRow, "q");
            CheckOutputs(n, @out.Length, lse.Length, !lse.IsEmpty);
            fixed (float* pq = &MemoryMarshal.GetReference(q), po = &MemoryMarshal.GetReference(@out))
            fixed (float* pl = &MemoryMarshal.GetReference(lse))
                Attend(layer, seq, n, pq, po, lse.IsEmpty ? null : pl, flags);
        }

        /// <summary>Attend of F16 or BF16 bits on spans; lse stays float (empty: none).</summary>
        public void Attend(uint layer, uint seq, ReadOnlySpan<ushort> q, Span<ushort> @out, Span<float> lse, uint flags)
        {
            CheckDtype(true);
            uint n = Rows(q.Length, qRow, "q");
            CheckOutputs(n, @out.Length, lse.Length, !lse.IsEmpty);
            fixed (ushort* pq = &MemoryMarshal.GetReference(q), po = &MemoryMarshal.GetReference(@out))
            fixed (float* pl = &MemoryMarshal.GetReference(lse))
                Attend(layer, seq, n, pq, po, lse.IsEmpty ? null : pl, flags);
        }

        /// <summary>Attend on memory the caller owns; lse may be null.</summary>
        public void Attend(uint layer, uint seq, uint nQueries, void* q, void* @out, float* lse, uint flags)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_attend(lease.Pointer, layer, seq, nQueries, q, @out, lse, flags));
        }

        /// <summary>One decode query per sequence: q [seqIds.Length][n_q_heads][head_dim].</summary>
        public void AttendBatch(uint layer, uint[] seqIds, float[] q, float[] @out, float[] lse, uint flags)
        {
            CheckDtype(false);
            uint n = Rows(q.Length, qRow, "q");
            if (n != seqIds.Length)
                throw new ArgumentException(seqIds.Length + " sequences, " + n + " queries");
            CheckOutputs(n, @out.Length, lse);
            using (var lease = new Lease(handle, nameof(Cache)))
            fixed (uint* ps = seqIds)
            fixed (float* pq = q, po = @out, pl = lse)
                library.Check(library.Api.commvq_cache_attend_batch(lease.Pointer, layer, n, ps, pq, po, pl, flags));
        }

        public ulong SeqLength(uint seq)
        {
            ulong length;
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_seq_length(lease.Pointer, seq, &length));
            return length;
        }

        public void SeqClear(uint seq)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_seq_clear(lease.Pointer, seq));
        }

        public void SeqTruncate(uint seq, ulong newLength)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_seq_truncate(lease.Pointer, seq, newLength));
        }

        public void SeqFork(uint src, uint dst)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_seq_fork(lease.Pointer, src, dst));
        }

        public void SeqSave(uint seq, string path)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
            fixed (byte* p = Library.CString(path))
                library.Check(library.Api.commvq_cache_seq_save(lease.Pointer, seq, p));
        }

        public void SeqLoad(uint seq, string path)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
            fixed (byte* p = Library.CString(path))
                library.Check(library.Api.commvq_cache_seq_load(lease.Pointer, seq, p));
        }

        public commvq_cache_stats_t Stats()
        {
            var stats = new commvq_cache_stats_t();
            library.Api.commvq_cache_stats_init(&stats);
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_get_stats(lease.Pointer, &stats));
            return stats;
        }

        /// <summary>Queues the cache's work on a CUDA stream (a cudaStream_t).</summary>
        public void SetStream(IntPtr cudaStream)
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_set_stream(lease.Pointer, (void*)cudaStream));
        }

        public void Synchronize()
        {
            using (var lease = new Lease(handle, nameof(Cache)))
                library.Check(library.Api.commvq_cache_synchronize(lease.Pointer));
        }

        public void Dispose() => handle.Dispose();
    }
}
