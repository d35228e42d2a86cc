package org.commvq;

/** A failed libcommvq call: its status (Commvq.ERR_*), the status's name and the library's message. */
public final class CommvqException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final int status;
  private final String statusName;
  private final String libraryMessage;

  public CommvqException(int status, String statusName, String libraryMessage) {
    super(statusName + ": " + libraryMessage);
    this.status = status;
    this.statusName = statusName;
    this.libraryMessage = libraryMessage;
  }

  public int status() {
    return status;
  }

  public String statusName() {
    return statusName;
  }

  /** commvq_last_error() of the failed call. */
  public String libraryMessage() {
    return libraryMessage;
  }

  /**
   * Throws for a nonzero status; every generated method returning a status
   * calls it right after the call, on the same thread, before the thread's
   * last-error message can change.
   */
  static void check(int status) {
    if (status != CommvqNative.OK) {
      String message = CommvqNative.last_error();
      throw new CommvqException(status, CommvqNative.status_string(status), message);
    }
  }
}
