package org.commvq;

/** What a codebook describes (commvq_codebook_info_t), read once: Codebook.info(). */
public final class CodebookInfo {
  private final long nLayers, nKvHeads, nQHeads, headDim, keyStages, subCenters, valueBits, valueHidden;
  private final int pairLayout, scaleMode;
  private final long formatVersion, fingerprint, compressedTokenBytes;
  private final RopeInfo rope;

  CodebookInfo(NativeCodebookInfo i) {
    nLayers = i.getNLayers();
    nKvHeads = i.getNKvHeads();
    nQHeads = i.getNQHeads();
    headDim = i.getHeadDim();
    keyStages = i.getKeyStages();
    subCenters = i.getSubCenters();
    valueBits = i.getValueBits();
    valueHidden = i.getValueHidden();
    pairLayout = i.getPairLayout();
    scaleMode = i.getScaleMode();
    formatVersion = i.getFormatVersion();
    fingerprint = i.getFingerprint();
    compressedTokenBytes = i.getCompressedTokenBytes();
    rope = RopeInfo.of(i.getRope());
  }

  public long nLayers() { return nLayers; }
  public long nKvHeads() { return nKvHeads; }
  public long nQHeads() { return nQHeads; }
  public long headDim() { return headDim; }
  /** R: residual stages of the key codebook. */
  public long keyStages() { return keyStages; }
  /** C: sub-centers per stage. */
  public long subCenters() { return subCenters; }
  /** 1 or 2 bits per value element. */
  public long valueBits() { return valueBits; }
  /** I: inner width of the value encoder. */
  public long valueHidden() { return valueHidden; }
  /** Commvq.PAIRS_*. */
  public int pairLayout() { return pairLayout; }
  /** Commvq.SCALE_*. */
  public int scaleMode() { return scaleMode; }
  public long formatVersion() { return formatVersion; }
  /** Hash of the shape and every parameter (the 64 bits as a Java long). */
  public long fingerprint() { return fingerprint; }
  /** Bytes one compressed token takes in one layer. */
  public long compressedTokenBytes() { return compressedTokenBytes; }
  public RopeInfo rope() { return rope; }
}
