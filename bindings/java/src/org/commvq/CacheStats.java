package org.commvq;

/** A cache's occupancy (commvq_cache_stats_t): Cache.stats(). */
public final class CacheStats {
  private final long nSeqsUsed, tokens, compressedTokens, blocksUsed, blocksTotal, tokensFree;
  private final long bytesCompressed, bytesWindow, bytesCodebook, bytesReserved;
  private final double bytesPerCompressedToken, bytesPerToken16bit;

  CacheStats(NativeCacheStats s) {
    nSeqsUsed = s.getNSeqsUsed();
    tokens = s.getTokens();
    compressedTokens = s.getCompressedTokens();
    blocksUsed = s.getBlocksUsed();
    blocksTotal = s.getBlocksTotal();
    tokensFree = s.getTokensFree();
    bytesCompressed = s.getBytesCompressed();
    bytesWindow = s.getBytesWindow();
    bytesCodebook = s.getBytesCodebook();
    bytesReserved = s.getBytesReserved();
    bytesPerCompressedToken = s.getBytesPerCompressedToken();
    bytesPerToken16bit = s.getBytesPerToken16bit();
  }

  public long nSeqsUsed() { return nSeqsUsed; }
  public long tokens() { return tokens; }
  public long compressedTokens() { return compressedTokens; }
  public long blocksUsed() { return blocksUsed; }
  public long blocksTotal() { return blocksTotal; }
  public long tokensFree() { return tokensFree; }
  public long bytesCompressed() { return bytesCompressed; }
  public long bytesWindow() { return bytesWindow; }
  public long bytesCodebook() { return bytesCodebook; }
  public long bytesReserved() { return bytesReserved; }
  public double bytesPerCompressedToken() { return bytesPerCompressedToken; }
  public double bytesPerToken16bit() { return bytesPerToken16bit; }
}
