using System;

namespace Commvq
{
    /// <summary>A failed libcommvq call: its status (Constants.ERR_*), the status's name and the library's message.</summary>
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

        /// <summary>
        /// Throws for a nonzero status. Every generated method returning a
        /// status calls it right after the call, on the same thread, before
        /// the thread's last-error message can change.
        /// </summary>
        internal static void Check(int status)
        {
            if (status != Constants.OK)
            {
                string message = CommvqNative.last_error();
                throw new CommvqException(status, CommvqNative.status_string(status), message);
            }
        }
    }
}
